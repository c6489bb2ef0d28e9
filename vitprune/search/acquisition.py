"""Acquisition functions: how much a candidate is worth evaluating, given the surrogate's belief.

An acquisition maps the posterior mean and standard deviation of candidates, and the best value
seen so far, to scores (higher = evaluate first). Expected improvement is computed in log space:
far from the incumbent plain EI underflows to exactly zero for most candidates, which leaves
argmax to pick the first of many ties; log EI still ranks them (Ament et al., "Unexpected
Improvements to Expected Improvement for Bayesian Optimization", NeurIPS 2023).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from ..errors import DependencyError

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_LOG_SQRT_PI_OVER_2 = 0.5 * math.log(math.pi / 2)
_TAIL = -1.0 / math.sqrt(np.finfo(np.float64).eps)  # below: asymptotic form of log h
_MIN_SIGMA = 1e-12


def _special():
    """scipy.special, imported on first use (``vitprune.search`` imports fast without it; its
    presence is checked before a search starts: :func:`~vitprune.search.surrogate.check_dependencies`)."""
    try:
        import scipy.special
    except ImportError as exc:
        from .surrogate import _MISSING

        raise DependencyError(_MISSING.format("scipy")) from exc
    return scipy.special


class Acquisition(Protocol):
    """Scores candidates from the posterior mean ``mu`` and std ``sigma``, both (M,)."""

    def __call__(self, mu: np.ndarray, sigma: np.ndarray, best: float) -> np.ndarray: ...


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """``log(1 - exp(x))`` for x < 0, accurate on both sides of -log 2 (Maechler 2012)."""
    return np.where(x > -math.log(2), np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def log_h(z: np.ndarray) -> np.ndarray:
    """``log(phi(z) + z * Phi(z))``, finite for every finite z.

    EI = sigma * h(z), z = (mu - best) / sigma. For z > -1 the direct formula is accurate; below,
    ``phi(z) + z Phi(z)`` cancels catastrophically, so it is rewritten with the scaled
    complementary error function: ``h(z) = phi(z) * (1 - |z| erfcx(-z/sqrt 2) sqrt(pi/2))``.
    """
    sp = _special()
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    hi = z > -1
    zh = z[hi]
    out[hi] = np.log(np.exp(-0.5 * zh * zh) / math.sqrt(2 * math.pi) + zh * sp.ndtr(zh))
    mid = ~hi & (z > _TAIL)
    zm = z[mid]
    with np.errstate(divide="ignore"):
        inner = np.log(sp.erfcx(-zm / math.sqrt(2)) * np.abs(zm)) + _LOG_SQRT_PI_OVER_2
    out[mid] = -0.5 * zm * zm - _LOG_SQRT_2PI + _log1mexp(inner)
    tail = ~hi & ~mid
    zt = z[tail]
    out[tail] = -0.5 * zt * zt - _LOG_SQRT_2PI - 2 * np.log(np.abs(zt))
    return out


def log_expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float) -> np.ndarray:
    """log EI of candidates for *maximisation*, EI = (mu - best) Phi(z) + sigma phi(z).

    Args:
        mu: posterior means, shape (M,).
        sigma: posterior standard deviations, shape (M,); clipped at 1e-12 so a candidate the
            surrogate is sure of scores by its mean alone rather than by 0/0.
        best: best value observed so far (the incumbent f*).
    Returns:
        log EI, shape (M,).
    """
    sigma = np.maximum(np.asarray(sigma, dtype=np.float64), _MIN_SIGMA)
    z = (np.asarray(mu, dtype=np.float64) - best) / sigma
    return log_h(z) + np.log(sigma)


def expected_improvement(mu: np.ndarray, sigma: np.ndarray, best: float) -> np.ndarray:
    """Plain EI (underflows to 0 far below the incumbent; for reference and tests)."""
    sigma = np.maximum(np.asarray(sigma, dtype=np.float64), _MIN_SIGMA)
    z = (np.asarray(mu, dtype=np.float64) - best) / sigma
    return (mu - best) * _special().ndtr(z) + sigma * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


__all__ = ["Acquisition", "expected_improvement", "log_expected_improvement", "log_h"]
