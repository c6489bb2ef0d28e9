"""Paired statistics of the accuracy tables (benchmarks/stats.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from stats import correct, mcnemar, paired_bootstrap, wording  # noqa: E402


def test_mcnemar_matches_the_binomial_by_hand():
    a = np.array([1, 1, 1, 1, 0, 1, 0, 1], dtype=bool)
    b = np.array([1, 0, 0, 0, 0, 1, 1, 1], dtype=bool)
    got = mcnemar(a, b)
    assert (got["a_only"], got["b_only"]) == (3, 1)
    assert got["p"] == pytest.approx(2 * (1 + 4) / 16)  # 2 P(X <= 1), X ~ Bin(4, 1/2)
    assert mcnemar(a, a)["p"] == 1.0


def test_the_bootstrap_interval_covers_the_difference_and_narrows_with_seeds():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 4000)
    truth = rng.random((3, 4000))
    a = correct(np.where(truth < 0.90, labels, (labels + 1) % 10), labels)  # ~90% right
    b = correct(np.where(truth < 0.88, labels, (labels + 1) % 10), labels)  # ~88%, same images
    one = paired_bootstrap(a[0], b[0])
    three = paired_bootstrap(a, b)
    want = 100 * (a.mean() - b.mean())
    assert three["diff"] == pytest.approx(want)
    assert three["low"] < three["diff"] < three["high"] and three["low"] > 0  # b is nested in a
    assert three["seeds"] == 3 and three["images"] == 4000
    assert one["low"] < 100 * (a[0].mean() - b[0].mean()) < one["high"]


def test_the_pairing_is_kept_a_difference_of_the_same_images_is_certain():
    """Two runs that differ on exactly 40 of 4000 images, one way: an unpaired interval would
    be about +-1.3 points wide; the paired one stays tight around +1 and above zero."""
    base = np.zeros(4000, dtype=bool)
    base[:3000] = True
    better = base.copy()
    better[3000:3040] = True
    got = paired_bootstrap(better, base, resamples=2000)
    assert got["diff"] == pytest.approx(1.0)
    assert 0.6 < got["low"] < got["high"] < 1.4


def test_the_wording_says_what_the_interval_supports():
    assert wording({"diff": 0.1, "low": -0.2, "high": 0.3, "level": 0.95}, "dense").startswith(
        "within 0.30 points of dense")
    assert wording({"diff": 0.5, "low": 0.2, "high": 0.8, "level": 0.95}, "dense").startswith(
        "+0.50 points above dense")
    assert "below" in wording({"diff": -0.5, "low": -0.8, "high": -0.1, "level": 0.95}, "x")
