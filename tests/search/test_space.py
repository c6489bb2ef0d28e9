"""SearchSpace: vectorised cost = plan cost, cost falls as ratios rise, settings are checked."""

from __future__ import annotations

import numpy as np
import pytest

from vitprune.cost import macs
from vitprune.plan import planned_shape
from vitprune.search import Ratios, SearchError, SearchSpace, plan_macs, ratios_to_plan


def _tricky_points(space: SearchSpace, n: int, seed: int) -> np.ndarray:
    """Random points, plus points exactly on and next to rounding thresholds and zero tokens."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(space.lower, space.upper, size=(n, space.dim))
    grid = np.round(X[: n // 4] * 8) / 8  # multiples of 1/8: halves of 4 heads, 256 neurons
    nudged = grid + rng.choice([-1e-12, 0.0, 1e-12], size=grid.shape)
    X[: n // 4] = np.clip(nudged, space.lower, space.upper)
    X[n // 4: n // 2, -1] = 0.0  # no token stage at all
    return X


@pytest.mark.parametrize("kwargs", [
    {},
    {"neuron_multiple": 8, "fuse": False},
    {"token_blocks": (0, 2, 3, 5), "token_bounds": (0.1, 0.9), "head_bounds": (0.0, 0.8)},
    {"drop": True, "neuron_multiple": 8, "head_bounds": (0.0, 0.9), "neuron_bounds": (0.0, 0.9)},
])
def test_batch_macs_equals_plan_macs(d12_shape, kwargs):
    space = SearchSpace(d12_shape, **kwargs)
    X = _tricky_points(space, 200, seed=len(kwargs))
    fast = space.batch_macs(X)
    exact = [plan_macs(space.shape, space.plan(x)) for x in X]
    assert fast.tolist() == exact


def test_batch_macs_counts_a_stem_and_an_attention_pool(d12_shape):
    """A T2T-ViT's tokens-to-token stem and a SigLIP-style attention pool are part of the cost
    the budget sees: the fast count must include them exactly as the plan count does."""
    from dataclasses import replace

    from vitprune.cost import PoolShape, StemShape

    shape = replace(d12_shape, stem=StemShape(macs=1_234_567, params=1000),
                    pool=PoolShape(latent_len=1, mlp_hidden=256, params=5000))
    space = SearchSpace(shape)
    X = _tricky_points(space, 100, seed=7)
    assert space.batch_macs(X).tolist() == [plan_macs(shape, space.plan(x)) for x in X]
    assert space.dense_macs == macs(shape).total
    assert macs(shape).patch_embed == 1_234_567


def test_plan_matches_ratios_to_plan(d12_shape):
    space = SearchSpace(d12_shape, token_blocks=(2, 7))
    x = np.linspace(0.0, 0.5, space.dim)
    assert space.plan(x) == ratios_to_plan(d12_shape, Ratios.from_vector(x), token_blocks=(2, 7))
    assert space.macs(x) == macs(planned_shape(d12_shape, space.plan(x))).total


def test_raising_any_ratio_never_raises_cost(d12_shape):
    space = SearchSpace(d12_shape)
    rng = np.random.default_rng(1)
    X = rng.uniform(space.lower, space.upper, size=(50, space.dim))
    base = space.batch_macs(X)
    for j in range(space.dim):
        Y = X.copy()
        Y[:, j] = np.minimum(space.upper[j], Y[:, j] + rng.uniform(0, 0.2, size=len(Y)))
        assert (space.batch_macs(Y) <= base).all(), f"coordinate {j}"


def test_corners_and_free_mask(small_space):
    s = small_space
    assert s.dim == 9 and s.free.all()
    assert s.batch_macs(s.lower[None])[0] == s.dense_macs
    assert SearchSpace(s.shape, token_bounds=(0.0, 0.0)).free.tolist() == [True] * 8 + [False]
    assert not SearchSpace(s.shape, token_blocks=()).free[-1]


def test_to_unit_maps_bounds_to_the_unit_cube(small_space):
    U = small_space.to_unit(np.stack([small_space.lower, small_space.upper]))
    assert U[0].tolist() == [0.0] * 9 and U[1].tolist() == [1.0] * 9


@pytest.mark.parametrize("kwargs, match", [
    ({"head_bounds": (0.0, 1.0)}, "0 <= low <= high < 1"),
    ({"neuron_bounds": (0.3, 0.2)}, "0 <= low <= high < 1"),
    ({"token_bounds": (-0.1, 0.5)}, "0 <= low <= high < 1"),
    ({"token_blocks": (1, 1)}, "distinct block indices"),
    ({"token_blocks": (4,)}, "distinct block indices"),
    ({"neuron_multiple": 0}, "neuron_multiple"),
])
def test_space_rejects_bad_settings(small_space, kwargs, match):
    with pytest.raises(SearchError, match=match):
        SearchSpace(small_space.shape, **kwargs)
