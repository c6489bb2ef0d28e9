"""Shared fixtures: tiny timm ViTs with random weights, small synthetic data, and pruned models of
the layouts deployment must handle."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(1)  # the machines are small and shared: keep tests gentle and repeatable
# transformers copies a directory's own modeling code (trust_remote_code) here: not the home cache
if "HF_MODULES_CACHE" not in os.environ:
    os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="vitprune-tests-hf-modules-")
    atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)


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


@pytest.fixture(scope="module", params=["avg_pool", "deit_distilled", "eva02", "register_tokens"])
def pruned(request):
    """Each of the layouts deployment must handle, pruned in heads, neurons and tokens."""
    from tests.helpers import FAMILIES, pruned_family

    assert request.param in FAMILIES
    return pruned_family(request.param)


@pytest.fixture
def saved(tmp_path, tiny_vit):
    """The tiny ViT pruned (heads, neurons, two token stages) and saved as a model directory."""
    from tests.helpers import random_plan
    from vitprune.adapters import vit_shape
    from vitprune.io import save
    from vitprune.models import ArchSpec
    from vitprune.surgery import prune

    plan = random_plan(vit_shape(tiny_vit), 3, stages=(1, 3))
    return save(tmp_path / "model", prune(tiny_vit, plan), ArchSpec("fmnist_vit_tiny"), plan=plan)


@pytest.fixture(scope="module")
def tiny():
    """The tiny registered ViT, as latency tables are built on it (eval mode)."""
    from vitprune.models import build_model

    return build_model("fmnist_vit_tiny").eval()


@pytest.fixture(scope="module")
def table(tiny):
    """A real latency table of ``tiny``, built fast (its times mean nothing here)."""
    from vitprune.profile import build_table

    return build_table(tiny, batch=2, threads=1, repeats=1, warmup=1, passes=1,
                       neuron_points=4, calibration_plans=4, progress=False)
