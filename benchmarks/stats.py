"""Paired statistics for the accuracy tables: how sure a difference between two methods is,
from their per-image test predictions (the same test images, the same seeds).

* :func:`paired_bootstrap`: the difference of top-1 (points) between two methods, averaged over
  seeds, with a percentile interval from resampling the test images (each resample keeps the
  pairing: an image is drawn for both methods and every seed at once);
* :func:`mcnemar`: the exact McNemar test of one pair of runs (images one method gets right and
  the other wrong);
* :func:`wording`: what a sentence may say of an interval ("within 0.3 points of ...").

Pure numpy; the docs quote these next to every difference a sentence relies on.
"""

from __future__ import annotations

import math

import numpy as np


def correct(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-image correctness (bool), of predictions (N,) or (S, N) against labels (N,)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape[-1] != labels.shape[-1]:
        raise ValueError(f"{predictions.shape[-1]} predictions for {labels.shape[-1]} labels")
    return predictions == labels


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, resamples: int = 4000, level: float = 0.95,
                     seed: int = 0, chunk: int = 200) -> dict[str, float]:
    """Top-1 of ``a`` minus top-1 of ``b`` in points, with a paired bootstrap interval.

    Args:
        a, b: per-image correctness, (N,) or (S, N) for S seeds (seed ``s`` of ``a`` paired
            with seed ``s`` of ``b``), the same N test images in the same order.
        resamples: bootstrap resamples of the images.
        level: the interval's coverage.

    Returns:
        ``diff`` (points, the mean over seeds), ``low`` and ``high`` (the interval), ``level``,
        ``seeds``, ``images``.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=bool)), np.atleast_2d(np.asarray(b, dtype=bool))
    if a.shape != b.shape:
        raise ValueError(f"paired runs must have one shape, got {a.shape} and {b.shape}")
    d = (a.astype(np.float64) - b).mean(axis=0)  # (N,) per-image difference, seeds averaged
    n = d.shape[0]
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        stats.append(d[idx].mean(axis=1))
    boot = 100.0 * np.concatenate(stats)
    tail = 100.0 * (1.0 - level) / 2.0
    return {"diff": 100.0 * float(d.mean()), "low": float(np.percentile(boot, tail)),
            "high": float(np.percentile(boot, 100.0 - tail)), "level": level,
            "seeds": int(a.shape[0]), "images": int(n)}


def mcnemar(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Exact (binomial) McNemar test of two runs on the same images.

    Returns:
        ``a_only`` (images only ``a`` gets right), ``b_only``, and the two-sided ``p`` value
        of "both are equally accurate".
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("McNemar compares two runs: two (N,) arrays of one length")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    n, k = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n if n else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": min(1.0, 2.0 * tail)}


def wording(interval: dict[str, float], what: str) -> str:
    """What the interval supports, in words: above or below ``what`` when it excludes zero,
    else "within X points of" it (X: the larger end)."""
    low, high = interval["low"], interval["high"]
    pct = f"{round(100 * interval['level'])}%"
    if low > 0:
        return f"{interval['diff']:+.2f} points above {what} ({pct} interval {low:+.2f} to {high:+.2f})"
    if high < 0:
        return f"{interval['diff']:+.2f} points below {what} ({pct} interval {low:+.2f} to {high:+.2f})"
    reach = max(abs(low), abs(high))
    return (f"within {reach:.2f} points of {what} ({interval['diff']:+.2f}; {pct} interval "
            f"{low:+.2f} to {high:+.2f})")
