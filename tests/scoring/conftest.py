"""Helpers for the scoring tests: a small calibration loader and model-state checks."""

from __future__ import annotations

import pytest
import torch

from vitprune.data import make_loader


@pytest.fixture
def calib_loader(synth_splits):
    """48 synthetic calibration images in batches of 16 (the last call sees the same images)."""
    ds = synth_splits.calib.subset(torch.arange(48))
    return make_loader(ds, 16)


def hook_count(model: torch.nn.Module) -> int:
    """Forward / pre-forward / backward hooks installed anywhere in ``model``."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model: torch.nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    sd = model.state_dict()
    return sd.keys() == snap.keys() and all(torch.equal(sd[k], snap[k]) for k in snap)


class ModelState:
    """Checks that a model came back from scoring exactly as it went in."""

    hook_count = staticmethod(hook_count)
    snapshot = staticmethod(snapshot)
    same_state = staticmethod(same_state)


@pytest.fixture
def state():
    return ModelState
