"""The Torch-Pruning peer of the results benchmark: its choices become an exact vitprune plan."""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_pruning")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peer_torch_pruning import plan_of, tp_plan, tp_prune  # noqa: E402

from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.cost import macs  # noqa: E402
from vitprune.pipeline import calibration_batches  # noqa: E402
from vitprune.plan import planned_shape  # noqa: E402
from vitprune.surgery import prune  # noqa: E402


def test_the_plan_rebuilds_torch_prunings_model_exactly(tiny_vit, synth_splits):
    batches = calibration_batches(synth_splits, 64, batch_size=32)
    theirs = tp_prune(tiny_vit, 0.5, 0.5, batches)
    plan = plan_of(tiny_vit, theirs)
    assert [(len(b.heads), len(b.neurons)) for b in plan.blocks] == [(2, 32)] * 4
    assert not plan.tokens
    ours = prune(tiny_vit, plan).eval()
    x = batches[0][0]
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    # Taylor importance picks by the data, not simply the first units
    assert any(b.neurons != tuple(range(32)) for b in plan.blocks)


def test_the_peer_meets_the_budget_band(tiny_vit, synth_splits):
    batches = calibration_batches(synth_splits, 64, batch_size=32)
    plan, how = tp_plan(tiny_vit, 0.6, batches)
    shape = vit_shape(tiny_vit)
    kept = macs(planned_shape(shape, plan)).total / macs(shape).total
    assert 0.58 <= kept <= 0.6 and kept == pytest.approx(how["macs_kept"])
    assert any(len(b.heads) < 4 for b in plan.blocks) and any(len(b.neurons) < 64 for b in plan.blocks)


@pytest.mark.parametrize("mode", ["global", "isomorphic"])
def test_global_and_isomorphic_plans_rebuild_their_models_exactly(tiny_vit, synth_splits, mode):
    batches = calibration_batches(synth_splits, 64, batch_size=32)
    theirs = tp_prune(tiny_vit, 0.5, 0.0, batches, mode=mode)
    plan = plan_of(tiny_vit, theirs)
    ours = prune(tiny_vit, plan).eval()
    x = batches[0][0]
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    widths = [len(b.neurons) for b in plan.blocks]
    assert sum(widths) == pytest.approx(0.5 * 64 * 4, abs=4)  # half of all units, over the model
    assert len(set(widths)) > 1  # a global ranking: blocks lose different shares


def test_the_best_configuration_is_chosen_on_the_calibration_score(tiny_vit, synth_splits):
    from peer_torch_pruning import best_configuration

    batches = calibration_batches(synth_splits, 64, batch_size=32)
    shape = vit_shape(tiny_vit)

    def score(plan):  # a stand-in for calibration top-1: favours keeping block 0's neurons
        return len(plan.blocks[0].neurons)

    plan, best, tried = best_configuration(tiny_vit, 0.6, batches, score, head_ratios=(0.0, 0.5),
                                           modes=("local", "global"))
    feasible = [t for t in tried if "infeasible" not in t]
    assert len(tried) == 4 and feasible
    assert best["calib_top1"] == max(t["calib_top1"] for t in feasible)
    kept = macs(planned_shape(shape, plan)).total / macs(shape).total
    assert 0.58 <= kept <= 0.6 and len(plan.blocks[0].neurons) == best["calib_top1"]


def test_group_taylor_keeps_the_units_torch_pruning_keeps(tiny_vit, synth_splits):
    """vitprune's ``group-taylor`` criterion is Torch-Pruning's GroupTaylorImportance: pruned
    locally at the same ratios, both keep the same heads and neurons in every block."""
    from vitprune.scoring import get_criterion, rankings

    batches = calibration_batches(synth_splits, 64, batch_size=32)
    theirs = plan_of(tiny_vit, tp_prune(tiny_vit, 0.75, 0.5, batches))
    scores = get_criterion("group-taylor", max_images=64)(tiny_vit, batches)
    for (heads, neurons), b in zip(rankings(scores), theirs.blocks):
        assert tuple(sorted(heads[:2])) == b.heads and tuple(sorted(neurons[:16])) == b.neurons
