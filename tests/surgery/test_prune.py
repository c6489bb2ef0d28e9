"""Physical pruning computes what masked execution computes, on every supported ViT family.

Depth pruning: a block's attention or MLP dropped whole (an empty list of kept heads or
neurons) computes what masking all its heads or neurons computes, in a smaller model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from timm.layers import SwiGLU
from timm.models.vision_transformer import ParallelScalingBlock, ResPostBlock

import vitprune
from tests.helpers import random_plan, sharpen
from vitprune import cost
from vitprune.adapters import vit_shape
from vitprune.adapters.base import DroppedHalf
from vitprune.cost import macs
from vitprune.errors import ModelError, PlanError
from vitprune.io import load, save
from vitprune.models import ArchSpec, build_model
from vitprune.plan import BlockPlan, PrunePlan, TokenStage, planned_shape
from vitprune.search import SearchSpace
from vitprune.surgery import Masker, TokenSelecting, count_params, prune

# (id, timm name, constructor overrides). The three DeiTs run at their native 224; the other
# families at a smaller image size, which exercises the same code.
MODELS = [
    ("deit_tiny_224", "deit_tiny_patch16_224", {}),
    ("deit_small_224", "deit_small_patch16_224", {}),
    ("deit_base_224", "deit_base_patch16_224", {}),
    ("deit_tiny_distilled", "deit_tiny_distilled_patch16_224", {"img_size": 112}),
    ("cls_plus_4_registers", "deit_tiny_patch16_224", {"img_size": 64, "reg_tokens": 4}),
    ("vit_base_reg4_gap", "vit_base_patch16_reg4_gap_256", {"img_size": 64}),
    ("gap_no_class_token", "deit_tiny_patch16_224",
     {"img_size": 64, "class_token": False, "global_pool": "avg"}),
]


def _model(name: str, kwargs: dict, sharpen) -> torch.nn.Module:
    torch.manual_seed(0)
    return sharpen(build_model(name, **kwargs)).eval()


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, 3, *model.patch_embed.img_size)


@pytest.mark.parametrize("name,kwargs", [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_pruned_equals_masked_and_original_is_untouched(name, kwargs, make_plan, sharpened):
    model = _model(name, kwargs, sharpened)
    assert model.blocks[0].attn.fused_attn  # the hook-based token scores must work with SDPA
    x = _input(model, batch=1 if "base" in name else 2)
    shape = vit_shape(model)
    plan = make_plan(shape, seed=0, stages=(3, 6, 9))
    modules_before = list(model.modules())
    with torch.no_grad():
        dense = model(x)
        pruned = prune(model, plan)
        y_pruned = pruned(x)
        assert torch.equal(model(x), dense), "prune() changed the original model"

        masker = Masker(model)
        masker.set(plan)
        y_masked = model(x)
        masker.remove()
        assert torch.equal(model(x), dense), "Masker.remove() did not restore the dense model"
    assert all(a is b for a, b in zip(model.modules(), modules_before))
    assert len(list(model.modules())) == len(modules_before)

    assert (y_masked - y_pruned).abs().max().item() < 1e-4
    # the plan changes the output, so the agreement above is not that of two dense models
    assert (y_pruned - dense).abs().max().item() > 1e-3
    _assert_smaller(pruned, model, plan)


def _assert_smaller(pruned, model, plan: PrunePlan) -> None:
    C = model.embed_dim
    for i, (blk, bp) in enumerate(zip(pruned.blocks, plan.blocks)):
        d = blk.attn.head_dim
        assert blk.attn.num_heads == len(bp.heads) < model.blocks[i].attn.num_heads
        assert blk.attn.attn_dim == len(bp.heads) * d
        assert blk.attn.qkv.weight.shape == (3 * len(bp.heads) * d, C)
        assert blk.attn.qkv.bias.shape == (3 * len(bp.heads) * d,)
        assert blk.attn.qkv.out_features == 3 * len(bp.heads) * d
        assert blk.attn.proj.in_features == len(bp.heads) * d
        assert blk.mlp.fc1.weight.shape == (len(bp.neurons), C)
        assert blk.mlp.fc1.bias.shape == (len(bp.neurons),)
        assert blk.mlp.fc2.weight.shape == (C, len(bp.neurons))
    stages = {t.block for t in plan.tokens}
    assert {i for i, b in enumerate(pruned.blocks) if isinstance(b, TokenSelecting)} == stages
    assert set(pruned.state_dict()) == set(model.state_dict())  # same keys, smaller tensors
    assert pruned.training == model.training


def test_pruned_weights_are_the_kept_slices(make_plan):
    torch.manual_seed(0)
    model = build_model("fmnist_vit_tiny").eval()
    plan = make_plan(vit_shape(model), seed=3)
    pruned = prune(model, plan)
    a, p = model.blocks[1].attn, pruned.blocks[1].attn
    h = plan.blocks[1].heads[0]
    d, A = a.head_dim, a.attn_dim
    for part in range(3):  # q, k, v rows of the first kept head
        assert torch.equal(p.qkv.weight[part * p.attn_dim: part * p.attn_dim + d],
                           a.qkv.weight[part * A + h * d: part * A + (h + 1) * d])
    assert torch.equal(p.proj.weight[:, :d], a.proj.weight[:, h * d:(h + 1) * d])
    n = plan.blocks[1].neurons
    assert torch.equal(pruned.blocks[1].mlp.fc1.weight, model.blocks[1].mlp.fc1.weight[list(n)])
    assert torch.equal(pruned.blocks[1].mlp.fc2.weight, model.blocks[1].mlp.fc2.weight[:, list(n)])
    assert pruned.blocks[1].mlp.fc1.weight.data_ptr() != model.blocks[1].mlp.fc1.weight.data_ptr()


def test_pruned_shape_and_token_counts_match_the_cost_model(make_plan, sharpened):
    model = _model("deit_tiny_patch16_224", {"img_size": 112}, sharpened)
    plan = make_plan(vit_shape(model), seed=1, stages=(2, 5, 8), keep_rate=0.55)
    pruned = prune(model, plan)
    planned = planned_shape(vit_shape(model), plan)
    assert vit_shape(pruned) == planned
    assert cost.macs(vit_shape(pruned)) == cost.macs(planned)
    with torch.no_grad():
        tokens_out = pruned.forward_features(_input(model)).shape[1]
    assert tokens_out == cost.token_counts(planned)[-1][1] < model.patch_embed.num_patches


def test_save_load_reproduces_pruned_logits(tmp_path, make_plan, sharpened):
    kwargs = {"img_size": 64, "reg_tokens": 4}
    model = _model("deit_tiny_patch16_224", kwargs, sharpened)
    plan = make_plan(vit_shape(model), seed=2, stages=(3, 7))
    pruned = prune(model, plan)
    save(tmp_path / "m", pruned, ArchSpec("deit_tiny_patch16_224", kwargs), plan=plan.to_dict())
    again = load(tmp_path / "m")
    x = _input(model)
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))
    assert vit_shape(again) == vit_shape(pruned)


def test_prune_refuses_a_model_with_a_masker_installed(tiny_vit):
    masker = Masker(tiny_vit)
    with pytest.raises(ModelError, match="hooks"):
        prune(tiny_vit, PrunePlan.dense(vit_shape(tiny_vit)))
    masker.remove()
    prune(tiny_vit, PrunePlan.dense(vit_shape(tiny_vit)))  # fine once removed


def test_prune_rejects_plans_that_do_not_fit(tiny_vit):
    plan = PrunePlan.dense(vit_shape(build_model("fmnist_vit_d12")))
    with pytest.raises(PlanError, match="made for another model: its embed_dim is 64"):
        prune(tiny_vit, plan)
    with pytest.raises(PlanError, match="12 blocks but the model has 4"):  # a plan of version 1
        prune(tiny_vit, dataclasses.replace(plan, base=None))
    with pytest.raises(PlanError, match="missing key"):
        prune(tiny_vit, {"tokens": []})


def test_token_stages_cannot_be_added_to_a_model_that_selects_tokens(tiny_vit):
    dense = PrunePlan.dense(vit_shape(tiny_vit))
    staged = PrunePlan(dense.blocks, (TokenStage(1, 0.5),))
    pruned = prune(tiny_vit, staged)
    with pytest.raises(PlanError, match="already selects tokens"):
        prune(pruned, staged)
    again = prune(pruned, PrunePlan(tuple(dense.blocks)))  # heads/neurons only: allowed
    assert isinstance(again.blocks[1], TokenSelecting)


@pytest.mark.parametrize("overrides", [
    {"scale_attn_norm": True},
    {"scale_mlp_norm": True},
    {"mlp_layer": SwiGLU},
    {"block_fn": ResPostBlock},
    {"block_fn": ParallelScalingBlock},
], ids=["attn_norm", "mlp_norm", "swiglu", "res_post", "parallel"])
def test_unsupported_variants_are_refused(overrides):
    model = build_model("fmnist_vit_tiny", **overrides)
    with pytest.raises(ModelError, match="cannot prune"):
        prune(model, {"blocks": []})
    with pytest.raises(ModelError, match="cannot prune"):
        Masker(model)


def _with_drops(plan: PrunePlan, attention: set[int], mlp: set[int]) -> PrunePlan:
    blocks = [BlockPlan(() if i in attention else b.heads, () if i in mlp else b.neurons)
              for i, b in enumerate(plan.blocks)]
    return PrunePlan(tuple(blocks), plan.tokens, base=plan.base)


@pytest.mark.parametrize("name", ["fmnist_vit_d12", "t2t_vit_tiny"])
def test_dropped_halves_compute_what_masking_computes(name, tmp_path):
    torch.manual_seed(0)
    model = sharpen(build_model(name).eval())
    shape = vit_shape(model)
    L = len(shape.blocks)
    plan = _with_drops(random_plan(shape, 2, stages=(1,)), attention={0, L - 1},
                       mlp={L // 2, L - 1})
    x = torch.randn(3, 1, 28, 28)
    with Masker(model) as masker, torch.no_grad():
        masker.set(plan)
        masked = model(x)
    small = prune(model, plan)
    with torch.no_grad():
        pruned = small(x)
    assert (masked - pruned).abs().max().item() < 1e-4
    last = small.blocks[L - 1]
    assert isinstance(last.attn, DroppedHalf) and isinstance(last.mlp, DroppedHalf)
    got = vit_shape(small)
    assert got.blocks[0].heads == 0 and got.blocks[L // 2].mlp_hidden == 0
    assert count_params(model, plan) == sum(p.numel() for p in small.parameters())
    assert macs(got).total == macs(planned_shape(shape, plan)).total
    vitprune.save(tmp_path / "m", small, ArchSpec(name), plan=plan)
    with torch.no_grad():
        assert torch.equal(vitprune.load(tmp_path / "m")(x), pruned)


def test_a_token_stage_in_a_block_without_attention_is_refused():
    shape = vit_shape(build_model("fmnist_vit_tiny"))
    plan = _with_drops(random_plan(shape, 0, stages=(1,)), attention={1}, mlp=set())
    with pytest.raises(PlanError, match="cannot select tokens"):
        plan.validate(shape)


def test_a_family_without_depth_pruning_refuses_it():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=64, num_labels=10)
    hf = transformers.ViTForImageClassification(cfg).eval()
    plan = _with_drops(PrunePlan.dense(vit_shape(hf)), attention={0}, mlp=set())
    with pytest.raises(ModelError, match="cannot drop a block's attention"):
        prune(hf, plan)


def test_a_depth_search_space_drops_halves_but_not_token_blocks_attention():
    shape = vit_shape(build_model("fmnist_vit_d12"))
    space = SearchSpace(shape, head_bounds=(0, 0.9), neuron_bounds=(0, 0.9),
                        token_bounds=(0, 0.9), drop=True)
    X = np.random.default_rng(1).uniform(space.lower, space.upper, size=(300, space.dim))
    plans = [space.plan(x) for x in X]
    dropped_attn = {i for p in plans for i, b in enumerate(p.blocks) if not b.heads}
    dropped_mlp = {i for p in plans for i, b in enumerate(p.blocks) if not b.neurons}
    assert dropped_attn and dropped_mlp
    assert not dropped_attn & set(space.token_blocks)
    for p in plans[:50]:
        p.validate(shape)
    assert space.batch_macs(X).tolist() == [macs(planned_shape(shape, p)).total for p in plans]
    narrow = SearchSpace(shape, head_bounds=(0, 0.9), neuron_bounds=(0, 0.9))
    assert space.batch_macs(space.upper[None])[0] < narrow.batch_macs(narrow.upper[None])[0]
