"""The feasible sampler lands every candidate in the budget band; bad budgets fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from vitprune.errors import BudgetError
from vitprune.search import Budget, FeasibleSampler, SearchError, SearchSpace, resolve_band


def _sampler(space: SearchSpace, budget: Budget | float) -> FeasibleSampler:
    budget = budget if isinstance(budget, Budget) else Budget(budget)
    return FeasibleSampler(space, resolve_band(space, budget))


def _exact_fractions(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    return np.array([space.macs(x) for x in X]) / space.dense_macs


@pytest.mark.parametrize("budget", [0.45, 0.6, 0.9])
def test_samples_are_in_the_band_and_spread_over_it(d12_shape, budget):
    space = SearchSpace(d12_shape)
    X = _sampler(space, budget).sample(np.random.default_rng(0), 300)
    assert X.shape == (300, space.dim)
    assert ((X >= space.lower) & (X <= space.upper)).all()
    frac = _exact_fractions(space, X)
    assert frac.min() >= 0.98 * budget and frac.max() <= budget
    # aiming at levels spread over the band, not only at its top
    assert (frac < 0.99 * budget).mean() > 0.25 and (frac > 0.99 * budget).mean() > 0.25


def test_samples_are_reproducible_and_diverse(small_space):
    s = _sampler(small_space, 0.6)
    a, b = s.sample(np.random.default_rng(3), 50), s.sample(np.random.default_rng(3), 50)
    assert np.array_equal(a, b)
    assert np.unique(np.round(a, 6), axis=0).shape[0] == 50
    assert a.std(axis=0).min() > 0.02  # every coordinate varies


def test_perturbed_points_are_in_the_band_and_near_their_centres(d12_shape):
    space = SearchSpace(d12_shape)
    s = _sampler(space, 0.6)
    centres = s.sample(np.random.default_rng(0), 3)
    X = s.perturb(np.random.default_rng(1), centres, 90, scale=0.05)
    assert len(X) >= 80  # almost all project into the band
    frac = _exact_fractions(space, X)
    assert frac.min() >= 0.98 * 0.6 and frac.max() <= 0.6
    nearest = np.abs(X[:, None, :] - centres[None]).max(axis=2).min(axis=1)
    assert np.median(nearest) < 0.2


def test_custom_band_width(small_space):
    X = _sampler(small_space, Budget(0.7, tolerance=0.1)).sample(np.random.default_rng(0), 100)
    frac = _exact_fractions(small_space, X)
    assert frac.min() >= 0.63 and frac.max() <= 0.7 and frac.min() < 0.66


def test_gmacs_budget(small_space):
    target = 0.55 * small_space.dense_macs / 1e9
    X = _sampler(small_space, Budget(target, unit="gmacs")).sample(np.random.default_rng(0), 20)
    macs = np.array([small_space.macs(x) for x in X])
    assert (macs <= target * 1e9).all() and (macs >= 0.98 * target * 1e9).all()


def test_uniform_is_the_least_uniform_ratio_in_the_band(d12_shape):
    space = SearchSpace(d12_shape)
    x = _sampler(space, 0.6).uniform()
    assert np.ptp(x) == 0.0  # one ratio everywhere
    assert 0.588 <= space.macs(x) / space.dense_macs <= 0.6
    assert space.macs(x - 1e-6) > 0.6 * space.dense_macs  # a little less pruning breaks the budget


def test_uniform_raises_the_neuron_ratio_when_heads_step_over_the_band(d12_shape):
    # at 40% one ratio everywhere jumps from 41.8% to 35.1% (each block loses a head at once)
    space = SearchSpace(d12_shape)
    x = _sampler(space, 0.4).uniform()
    L = space.depth
    heads, neurons, tokens = x[:L], x[L:2 * L], x[2 * L]
    assert np.ptp(heads) == 0.0 and np.ptp(neurons) == 0.0  # still uniform across blocks
    assert heads[0] == pytest.approx(tokens) and neurons[0] > heads[0]
    assert 0.392 <= space.macs(x) / space.dense_macs <= 0.4


def test_uniform_reports_a_jump_over_the_band(small_space):
    # heads only: every block loses a head at the same ratio, a ~10% step in cost
    heads_only = SearchSpace(small_space.shape, neuron_bounds=(0, 0), token_bounds=(0, 0))
    with pytest.raises(BudgetError, match=r"uniform policy's cost jumps from .* to"):
        _sampler(heads_only, 0.95).uniform()  # steps: 100%, 89.8%


def test_band_no_architecture_can_hit_is_an_error(small_space):
    with pytest.raises(BudgetError, match="Move the budget outside that gap"):
        _sampler(small_space, Budget(0.6, tolerance=0.0)).sample(np.random.default_rng(0), 5)


@pytest.mark.parametrize("budget, match", [
    (Budget(0.05), "below the smallest architecture"),
    (Budget(1.2), "above the dense model"),
    (Budget(1e3, unit="gmacs"), "above the dense model"),
])
def test_unreachable_budgets_say_the_reachable_range(d12_shape, budget, match):
    space = SearchSpace(d12_shape)
    cheapest = space.macs(space.upper) / space.dense_macs
    with pytest.raises(BudgetError, match=match) as info:
        resolve_band(space, budget)
    assert f"reaches {cheapest:.1%} to 100.0% of the dense MACs" in str(info.value)


def test_band_above_a_raised_lower_bound_is_an_error(small_space):
    pruned_at_least = SearchSpace(small_space.shape, head_bounds=(0.3, 0.5),
                                  neuron_bounds=(0.3, 0.5))
    with pytest.raises(BudgetError, match="above the least pruned architecture"):
        resolve_band(pruned_at_least, Budget(0.95))


def test_full_budget_keeps_the_dense_model_feasible(small_space):
    band = resolve_band(small_space, Budget(1.0))
    assert band.contains(small_space.dense_macs)


@pytest.mark.parametrize("kwargs", [
    {"value": 0}, {"value": -0.5}, {"value": float("nan")}, {"value": 0.6, "unit": "flops"},
    {"value": 0.6, "tolerance": 1.0}, {"value": 0.6, "tolerance": -0.01},
])
def test_budget_validates_itself(kwargs):
    with pytest.raises(SearchError):
        Budget(**kwargs)
