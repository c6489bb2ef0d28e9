"""Masker: cheap switching between plans on one model, and an exact way back."""

from __future__ import annotations

import pytest
import torch

from vitprune.adapters import vit_shape
from vitprune.errors import ModelError, PlanError
from vitprune.models import build_model
from vitprune.plan import PrunePlan, TokenStage
from vitprune.surgery import Masker, TokenSelecting, prune


@pytest.fixture
def model(sharpened):
    torch.manual_seed(0)
    return sharpened(build_model("fmnist_vit_d12")).eval()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(2, 1, 28, 28)


@torch.no_grad()
def test_many_plans_in_a_row_each_match_prune(model, x, make_plan):
    shape = vit_shape(model)
    dense = model(x)
    plans = [make_plan(shape, seed=s, stages=st)
             for s, st in [(0, (3, 6, 9)), (1, ()), (2, (3, 6, 9)), (3, (2, 4))]]
    pruned = [prune(model, plan) for plan in plans]  # before the Masker: prune refuses hooks
    with Masker(model) as masker:
        for plan, small in zip(plans, pruned):
            masker.set(plan)
            assert (model(x) - small(x)).abs().max() < 1e-4
        masker.clear()
        assert torch.equal(model(x), dense)
    assert torch.equal(model(x), dense)


def test_changing_only_keep_rates_reuses_the_token_blocks(model):
    dense = PrunePlan.dense(vit_shape(model))
    masker = Masker(model)
    masker.set(PrunePlan(dense.blocks, (TokenStage(3, 0.5), TokenStage(6, 0.5))))
    first = model.blocks[3]
    assert isinstance(first, TokenSelecting)
    masker.set(PrunePlan(dense.blocks, (TokenStage(3, 0.8), TokenStage(9, 0.5))))
    assert model.blocks[3] is first and first.token_stage.keep_rate == 0.8
    assert not isinstance(model.blocks[6], TokenSelecting)  # stage removed: original block back
    assert isinstance(model.blocks[9], TokenSelecting)
    masker.remove()
    assert not any(isinstance(b, TokenSelecting) for b in model.blocks)


def test_token_scores_use_only_kept_heads(model):
    shape = vit_shape(model)
    dense = PrunePlan.dense(shape)
    blocks = list(dense.blocks)
    blocks[3] = type(blocks[3])((0, 2), blocks[3].neurons)
    masker = Masker(model)
    masker.set(PrunePlan(tuple(blocks), (TokenStage(3, 0.5),)))
    assert model.blocks[3].head_weights.tolist() == [1.0, 0.0, 1.0, 0.0]
    masker.set(PrunePlan(dense.blocks, (TokenStage(3, 0.5),)))
    assert model.blocks[3].head_weights is None  # all heads kept: plain mean
    masker.remove()


def test_removed_model_has_no_hooks_and_masker_refuses_more_work(model):
    masker = Masker(model)
    masker.set(PrunePlan.dense(vit_shape(model)))
    masker.remove()
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    with pytest.raises(ModelError, match="create a new Masker"):
        masker.set(PrunePlan.dense(vit_shape(model)))


def test_bad_plan_is_refused_and_leaves_masks_alone(model, x):
    masker = Masker(model)
    with torch.no_grad():
        dense = model(x)
        with pytest.raises(PlanError, match="out of range"):
            masker.set({"blocks": [{"heads": [7], "neurons": [0]}] * 12})
        assert torch.equal(model(x), dense)
    masker.remove()


def test_masker_refuses_a_model_that_already_selects_tokens(model):
    dense = PrunePlan.dense(vit_shape(model))
    pruned = prune(model, PrunePlan(dense.blocks, (TokenStage(3, 0.5),)))
    with pytest.raises(ModelError, match="without token stages"):
        Masker(pruned)
