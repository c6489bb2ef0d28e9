"""Helpers for the search tests: ViT shapes, a budget band and cheap synthetic objectives."""

from __future__ import annotations

import numpy as np
import pytest

from vitprune.cost import BlockShape, VitShape
from vitprune.search import Budget, FeasibleSampler, SearchSpace, resolve_band

# candidate sets and GP restarts small enough for a test to take seconds on a shared CPU
# anchors off: these tests check the random initial population (the anchored one has its own)
FAST = dict(n_candidates=200, n_local=50, gp_restarts=0, anchors=False)


def small_shape(depth: int = 4) -> VitShape:
    """A DeiT-like shape built by hand: 49 patches + a class token, width 64, 4 heads, MLP 256."""
    return VitShape(embed_dim=64, num_patches=49, num_prefix=1, patch_macs=16, num_classes=10,
                    num_heads_out=1, blocks=tuple(BlockShape(4, 16, 256) for _ in range(depth)))


@pytest.fixture(scope="session")
def d12_shape() -> VitShape:
    """The shape of the real Fashion-MNIST benchmark model (12 blocks: 25 search dimensions)."""
    from vitprune.adapters import vit_shape
    from vitprune.models import build_model

    return vit_shape(build_model("fmnist_vit_d12"))


class QuadraticObjective:
    """``-sum_i w_i (x_i - x*_i)^2`` of the ratios: the best value is 0, reached at ``optimum``.

    ``optimum`` is a feasible point for the budget that prunes late blocks' heads and early
    blocks' neurons much more than the rest, so finding it means learning which blocks to cut;
    the weights make some coordinates matter far more than others.

    Attributes:
        calls: how many times it was evaluated.
    """

    def __init__(self, space: SearchSpace, budget: float = 0.6) -> None:
        L = space.depth
        sampler = FeasibleSampler(space, resolve_band(space, Budget(budget)))
        frac = np.concatenate([np.linspace(0.05, 0.95, L), np.linspace(0.95, 0.05, L), [0.5]])
        p = space.lower + frac * (space.upper - space.lower)
        x, ok = sampler.project(p[None], np.array([sampler.band.high]))
        assert ok[0], "the synthetic optimum must be feasible"
        self.optimum = x[0]
        self.weights = np.concatenate([np.geomspace(8, 1, L), np.geomspace(1, 8, L), [4.0]])
        self.calls = 0

    def __call__(self, plan, ratios) -> float:
        self.calls += 1
        x = np.asarray(ratios.to_vector())
        return float(-(self.weights * (x - self.optimum) ** 2).sum())


class Crash(Exception):
    """Raised by :class:`Crashing` to stand in for a killed process."""


class Crashing:
    """Wraps an objective and raises :class:`Crash` on call number ``after + 1``."""

    def __init__(self, objective, after: int) -> None:
        self.objective, self.after, self.calls = objective, after, 0

    def __call__(self, plan, ratios) -> float:
        self.calls += 1
        if self.calls > self.after:
            raise Crash(f"killed at call {self.calls}")
        return self.objective(plan, ratios)


@pytest.fixture
def fast() -> dict:
    """Search tuning for tests: small candidate sets, no GP restarts."""
    return dict(FAST)


@pytest.fixture
def small_space() -> SearchSpace:
    """A 4-block search space (9 dimensions), the method's bounds (ratios up to 0.5; the
    objectives' optima are placed inside them) and default token blocks."""
    half = (0.0, 0.5)
    return SearchSpace(small_shape(), head_bounds=half, neuron_bounds=half, token_bounds=half)


@pytest.fixture
def quadratic():
    """The :class:`QuadraticObjective` class: ``quadratic(space, budget)``."""
    return QuadraticObjective


@pytest.fixture
def crashing():
    """(:class:`Crashing`, :class:`Crash`): wrap an objective to fail after k calls."""
    return Crashing, Crash
