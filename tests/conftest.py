"""Shared fixtures: tiny timm ViTs with random weights and small synthetic data."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)  # the machines are small and shared: keep tests gentle and repeatable


@pytest.fixture
def tiny_vit():
    """A 4-block, width-32 ViT for 28x28 grey images (random weights, eval mode)."""
    from vitprune.models import build_model

    torch.manual_seed(0)
    return build_model("fmnist_vit_tiny").eval()


@pytest.fixture
def synth_splits():
    """Small learnable synthetic train / calib / test splits (28x28, 1 channel, 10 classes)."""
    from vitprune.data import load_splits

    return load_splits("synthetic", calib_size=64)
