"""Depth pruning: a block's attention or MLP dropped whole (an empty list of kept heads or
neurons) computes what masking all its heads or neurons computes, in a smaller model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitprune
from tests.helpers import random_plan, sharpen
from vitprune.adapters import vit_shape
from vitprune.adapters.base import DroppedHalf
from vitprune.cost import macs
from vitprune.errors import ModelError, PlanError
from vitprune.models import ArchSpec, build_model
from vitprune.plan import BlockPlan, PrunePlan, planned_shape
from vitprune.search import SearchSpace
from vitprune.surgery import Masker, count_params, prune


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
