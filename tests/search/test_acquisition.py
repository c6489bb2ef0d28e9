"""log EI agrees with EI where EI is representable and stays finite and ordered where it is not."""

from __future__ import annotations

import math

import numpy as np

from vitprune.search import expected_improvement, log_expected_improvement
from vitprune.search.acquisition import log_h


def test_log_ei_matches_ei_where_ei_is_representable():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(0, 1, 500), rng.uniform(0.05, 2, 500)
    ei = expected_improvement(mu, sigma, best=0.5)
    assert (ei > 0).all()
    np.testing.assert_allclose(log_expected_improvement(mu, sigma, 0.5), np.log(ei), rtol=1e-9,
                               atol=1e-12)


def test_ei_formula_at_known_points():
    # z = 0: EI = sigma * phi(0); far above the incumbent EI -> mu - best
    assert math.isclose(expected_improvement(np.array([1.0]), np.array([2.0]), 1.0)[0],
                        2.0 / math.sqrt(2 * math.pi))
    assert math.isclose(expected_improvement(np.array([11.0]), np.array([1.0]), 1.0)[0], 10.0)


def test_log_h_just_below_the_branch_switch_matches_the_direct_formula():
    from scipy.special import ndtr

    z = np.array([-1.5, -3.0, -5.0])
    direct = np.log(np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi) + z * ndtr(z))
    np.testing.assert_allclose(log_h(z), direct, rtol=1e-10)


def test_log_h_in_the_far_tail_matches_the_asymptotic_series():
    # h(z) = phi(z) / z^2 * (1 - 3/z^2 + 15/z^4 - 105/z^6 + ...) for z -> -inf; compare what is
    # left after the dominant -z^2/2, which would hide any error in relative terms
    z = np.array([-30.0, -200.0, -1e3])
    rest = (-0.5 * math.log(2 * math.pi) - 2 * np.log(-z)
            + np.log1p(-3 / z**2 + 15 / z**4 - 105 / z**6 + 945 / z**8))
    np.testing.assert_allclose(log_h(z) + 0.5 * z**2, rest, rtol=0, atol=1e-8)
    # beyond 1/sqrt(eps) the asymptotic form takes over: still finite, still ordered
    far = log_h(np.array([-1e9, -1e8, -1e6]))
    assert np.isfinite(far).all() and far[0] < far[1] < far[2]


def test_log_ei_ranks_candidates_whose_ei_underflows():
    mu = np.array([-60.0, -50.0, -40.0, -40.0])
    sigma = np.array([1.0, 1.0, 1.0, 2.0])
    assert (expected_improvement(mu, sigma, 0.0)[:3] == 0).all()  # plain EI cannot tell them apart
    log_ei = log_expected_improvement(mu, sigma, 0.0)
    assert np.isfinite(log_ei).all()
    assert log_ei[0] < log_ei[1] < log_ei[2] < log_ei[3]  # higher mean, then more uncertainty


def test_log_h_is_continuous_across_the_branch_switch():
    z = np.array([-1 - 1e-9, -1 + 1e-9])
    assert abs(np.diff(log_h(z))[0]) < 1e-7
