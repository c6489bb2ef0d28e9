"""The analytic MACs against published numbers and torch's FLOP counter; parameters counted from
the tensors."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitprune import cost
from vitprune.adapters import vit_shape
from vitprune.models import build_model
from vitprune.plan import BlockPlan, PrunePlan, TokenStage, planned_shape
from vitprune.surgery import count_params, prune


def _meta(name: str, **kw) -> torch.nn.Module:
    """The model's structure without allocating or initialising weights."""
    with torch.device("meta"):
        return build_model(name, **kw)


@pytest.mark.parametrize("name,gmacs", [
    ("deit_tiny_patch16_224", 1.3),
    ("deit_small_patch16_224", 4.6),
    ("deit_base_patch16_224", 17.6),
])
def test_dense_deit_macs_match_the_papers(name, gmacs):
    assert round(cost.macs(vit_shape(_meta(name))).total / 1e9, 1) == gmacs


def test_authors_convention_leaves_out_embedding_and_classifier():
    c = cost.macs(vit_shape(_meta("deit_small_patch16_224")))
    assert round(c.blocks / 1e9, 2) == 4.54  # the number the authors' counter prints
    assert c.total == c.blocks + c.patch_embed + c.head


# real models whose parameters an analytic count got wrong (layer scale, registers, pools, T2T)
PARAM_MODELS = ["deit3_small_patch16_224", "vit_small_patch14_dinov2",
                "vit_base_patch16_siglip_224", "t2t_vit_14"]


@pytest.mark.parametrize("name", PARAM_MODELS)
def test_cost_json_counts_parameters_from_the_tensors_dense_and_pruned(name, tmp_path, capsys):
    from vitprune.cli import main

    torch.manual_seed(0)
    model = build_model(name)
    plan = _plan(vit_shape(model), stages=(1, 2))
    plan.save(tmp_path / "plan.json")
    dense_n = sum(p.numel() for p in model.parameters())
    pruned_n = sum(p.numel() for p in prune(model, plan).parameters())  # the real, sliced model
    assert pruned_n < dense_n
    for extra, want in (([], dense_n), (["--plan", str(tmp_path / "plan.json")], pruned_n)):
        assert main(["cost", "--model", name, *extra, "--json"]) == 0
        assert round(json.loads(capsys.readouterr().out)["params_m"] * 1e6) == want


def test_counting_a_plan_leaves_the_model_and_its_weights_alone():
    torch.manual_seed(0)
    model = build_model("deit_tiny_patch16_224", img_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _plan(vit_shape(model), stages=(3,))
    assert count_params(model, plan) == sum(p.numel() for p in prune(model, plan).parameters())
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _plan(shape: cost.VitShape, stages: tuple[int, ...] = ()) -> PrunePlan:
    """Keep heads 0..h-2 and every other neuron of each block; stages keep 60% of the tokens."""
    blocks = tuple(
        BlockPlan(tuple(range(max(1, b.heads - 1 - i % 2))), tuple(range(0, b.mlp_hidden, 2)))
        for i, b in enumerate(shape.blocks)
    )
    return PrunePlan(blocks, tuple(TokenStage(s, 0.6) for s in stages))


def _measured_macs(model: torch.nn.Module, img: int) -> int:
    """MACs of one image counted by torch (2 FLOPs per MAC), unfused attention so it sees it."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # FlopCounterMode does not see CPU SDPA (blocks, attention pool)
    counter = FlopCounterMode(display=False)
    model.requires_grad_(False)  # its module tracker trips on a parameter fed to a module as input
    with counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, img, img))
    return counter.get_total_flops() // 2


def test_analytic_macs_match_measured_for_dense_deit_small():
    torch.manual_seed(0)
    model = build_model("deit_small_patch16_224")
    analytic = cost.macs(vit_shape(model)).total
    assert abs(_measured_macs(model, 224) - analytic) / analytic < 0.01


def test_analytic_macs_match_measured_for_a_pruned_plan_with_token_stages():
    torch.manual_seed(0)
    model = build_model("deit_small_patch16_224")
    plan = _plan(vit_shape(model), stages=(3, 6, 9))
    analytic = cost.macs(planned_shape(vit_shape(model), plan)).total
    measured = _measured_macs(prune(model, plan), 224)
    assert abs(measured - analytic) / analytic < 0.01
    # the cut is large enough that a cost model ignoring tokens (or heads) would be off by >1%
    assert analytic < 0.6 * cost.macs(vit_shape(model)).total


def test_an_attention_pool_head_is_counted_dense_and_pruned():
    """global_pool='map' (SigLIP-style): the pool is not pruned, but it is counted, and its
    cost follows the tokens the token stages leave."""
    torch.manual_seed(0)
    model = build_model("vit_base_patch16_siglip_224", depth=4, num_classes=10)
    shape = vit_shape(model)
    assert shape.pool is not None and shape.pool.latent_len == 1
    dense = cost.macs(shape)
    assert dense.pool > 0.03 * dense.total  # large enough that leaving it out would show
    assert abs(_measured_macs(model, 224) - dense.total) / dense.total < 0.01
    plan = _plan(shape, stages=(1, 2))
    small = cost.macs(planned_shape(shape, plan))
    assert small.pool < dense.pool  # fewer tokens reach the pool
    measured = _measured_macs(prune(model, plan), 224)
    assert abs(measured - small.total) / small.total < 0.01
    assert count_params(model, plan) == sum(p.numel() for p in prune(model, plan).parameters())


def test_shapes_without_a_pool_describe_themselves_as_before():
    """Search trial files are fingerprinted by the shape's repr: models without an attention
    pool must keep theirs (so interrupted searches resume), models with one must differ."""
    plain = vit_shape(_meta("deit_tiny_patch16_224"))
    assert "pool" not in repr(plain) and plain.pool is None
    from vitprune.search.space import SearchSpace

    pooled = vit_shape(_meta("vit_base_patch16_siglip_224", depth=2))
    assert "pool=PoolShape" in SearchSpace(pooled).describe()["shape"]
    assert "pool" not in SearchSpace(plain).describe()["shape"]


def test_a_gated_mlp_counts_three_matrices_in_the_scalar_and_the_search_cost():
    import dataclasses

    import numpy as np

    from vitprune.search.space import SearchSpace

    plain = cost.VitShape(64, 49, 1, 16, 10, 1, (cost.BlockShape(4, 16, 256),) * 3)
    gated = dataclasses.replace(plain, blocks=tuple(
        dataclasses.replace(b, mlp_matrices=3) for b in plain.blocks))
    assert cost.macs(gated).mlp * 2 == cost.macs(plain).mlp * 3
    assert cost.macs(gated).attention == cost.macs(plain).attention
    space = SearchSpace(gated)
    X = np.random.default_rng(0).uniform(0.0, 0.5, (6, space.dim))
    assert space.batch_macs(X).tolist() == [space.macs(x) for x in X]
    assert space.describe() != SearchSpace(plain).describe()  # a trials file tells them apart
    plan = _plan(gated)
    assert planned_shape(gated, plan).blocks[0].mlp_matrices == 3
