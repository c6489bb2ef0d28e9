"""Feasible candidates: points of the search space whose integer architecture meets the budget.

Blind rejection sampling wastes almost every draw: the feasible band is a thin shell (2% of the
target) of a 2L+1 dimensional box. Instead each candidate comes from a *ray*: pick a point ``p``
of the box and walk along ``x(t) = clip(lower + t * (p - lower), lower, upper)``, t >= 0. Raising
ratios never raises the cost, so the cost is non-increasing in ``t``: it starts at the least
pruned corner and ends at the most pruned one, and bisection on ``t`` finds the first point whose
cost drops to a chosen level in the band. Costs are integer step functions of the ratios (whole
heads, neurons and tokens); a ray whose step jumps over the whole band is retried at the band's
top, then dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BudgetError
from .config import Budget
from .space import SearchSpace

_BISECTION_STEPS = 36  # t resolution T / 2**36: far below any rounding threshold of a ratio
_MAX_STRETCH = 1e6  # longest ray: coordinates closer than 1e-6 of their range to ``lower`` stay


@dataclass(frozen=True)
class Band:
    """The feasible cost interval ``[low, high]`` and the dense model's cost, in the budget's
    metric (MACs per image, or predicted ms per batch)."""

    low: float
    high: float
    dense: float

    def contains(self, cost: np.ndarray | float) -> np.ndarray | bool:
        """Whether ``cost`` (scalar or array) is feasible."""
        return (cost >= self.low) & (cost <= self.high)


def _what(space: SearchSpace) -> str:
    return "MACs" if space.metric == "macs" else "time"


def _amount(space: SearchSpace, cost: float) -> str:
    return f"{cost / 1e9:.4g} GMACs" if space.metric == "macs" else f"{cost:.4g} ms"


def resolve_band(space: SearchSpace, budget: Budget) -> Band:
    """The band of ``budget`` for ``space``, checked against what the space can reach.

    Raises:
        BudgetError: the target is above the dense model, or the band lies outside the costs
            between the most pruned and the least pruned corner of the space.
    """
    budget.check_metric(space.metric)
    dense = space.dense_cost
    target = budget.target(dense)
    band = Band(low=(1.0 - budget.tolerance) * target, high=target, dense=dense)
    cheapest = float(space.batch_cost(space.upper[None])[0])
    dearest = float(space.batch_cost(space.lower[None])[0])
    reach = (f"this search space reaches {cheapest / dense:.1%} to {dearest / dense:.1%} of the "
             f"dense {_what(space)} ({_amount(space, cheapest)} to {_amount(space, dearest)}; "
             f"dense {_amount(space, dense)})")
    if target > dense:
        raise BudgetError(f"the budget ({budget.describe(space.metric)}) is above the dense model: {reach}. "
                          "Use a budget below the dense model's cost (a fraction below 1).")
    if band.high < cheapest:
        raise BudgetError(
            f"the budget ({budget.describe(space.metric)}) is below the smallest architecture: {reach}. "
            "Raise the budget or --max-ratio (the largest prune ratio), or search more "
            "dimensions (--dims heads neurons tokens)."
        )
    if band.low > dearest:
        raise BudgetError(
            f"the budget band ({budget.describe(space.metric)}, down to {band.low / dense:.1%}) is above the "
            f"least pruned architecture: {reach}. Lower the budget or the ratio lower bounds."
        )
    return band


class FeasibleSampler:
    """Draws points of ``space`` whose integer architecture's MACs lie in ``band``."""

    def __init__(self, space: SearchSpace, band: Band) -> None:
        self.space = space
        self.band = band
        self._lower = space.lower
        self._upper = np.where(space.free, space.upper, space.lower)
        self._anchors: list[np.ndarray] | None = None

    def sample(self, rng: np.random.Generator, n: int, max_rounds: int = 20) -> np.ndarray:
        """``n`` feasible points, shape (n, 2L + 1), each on a ray towards a uniform box point.

        The level each ray aims at is uniform in the band, so candidates spread over it rather
        than all hugging the target.

        Raises:
            BudgetError: fewer than ``n`` feasible points after ``max_rounds`` batches: integer
                steps of the cost jump over the band almost everywhere (widen the tolerance).
        """
        found: list[np.ndarray] = []
        have, batch = 0, max(n, 16)
        for _ in range(max_rounds):
            P = rng.uniform(self._lower, self._upper, size=(batch, self.space.dim))
            levels = rng.uniform(self.band.low, self.band.high, size=batch)
            X, ok = self.project(P, levels)
            found.append(X[ok])
            have += int(ok.sum())
            if have >= n:
                return np.concatenate(found)[:n]
        raise BudgetError(
            f"only {have} of {max_rounds * batch} rays reached the budget band "
            f"[{self.band.low / self.band.dense:.2%}, {self.band.high / self.band.dense:.2%}] of "
            "the dense cost: the integer architecture's cost jumps over it. Move the budget "
            f"outside that gap (the band reaches {1 - self.band.low / self.band.high:.0%} below "
            "it), or search more dimensions "
            "(--dims heads neurons tokens)."
        )

    def perturb(self, rng: np.random.Generator, centres: np.ndarray, n: int,
                scale: float) -> np.ndarray:
        """Up to ``n`` feasible points near ``centres`` (K, 2L + 1): Gaussian steps, projected.

        Args:
            scale: step standard deviation as a fraction of each coordinate's range.
        Returns:
            The perturbed points that could be projected into the band, shape (<= n, 2L + 1).
        """
        if n == 0 or len(centres) == 0:
            return np.empty((0, self.space.dim))
        idx = np.arange(n) % len(centres)
        step = rng.normal(0.0, scale, size=(n, self.space.dim)) * (self._upper - self._lower)
        P = np.clip(centres[idx] + step, self._lower, self._upper)
        # aim at the perturbed point's own cost (clipped into the band): it moves as little as
        # the band allows
        levels = np.clip(self.space.batch_cost(P), self.band.low, self.band.high)
        X, ok = self.project(P, levels.astype(np.float64))
        return X[ok]

    def uniform(self) -> np.ndarray:
        """The least pruning on the ray from ``lower`` to ``upper`` that meets the target.

        With equal bounds for heads, neurons and tokens this is one ratio everywhere (the uniform
        baseline); otherwise the same fraction of each coordinate's range. Where that ray's cost
        jumps over the band (an integer step, e.g. every block losing a head at once), the point
        just before the jump is taken and the neuron ratio alone, still the same in every block,
        is raised into the band.

        Raises:
            BudgetError: even that jumps over the band; the message gives the costs on both sides.
        """
        x, X, base = self._on_ray(self._upper)
        if x is not None:
            return x
        before = self.space.batch_cost(base)[0]
        after = self.space.batch_cost(X)[0]
        dense = self.band.dense
        raise BudgetError(
            f"no uniform ratio meets the band [{self.band.low / dense:.2%}, "
            f"{self.band.high / dense:.2%}] of the dense cost: the uniform policy's cost jumps "
            f"from {before / dense:.2%} to {after / dense:.2%} at ratio {X[0].max():.4f}. Move "
            f"the budget outside that gap (the band reaches {1 - self.band.low / self.band.high:.0%} "
            "below it), or search with "
            "--method gp-ei, whose ratios vary per block."
        )

    # the mixes of (heads, neurons, tokens) the anchors prune along: the share of each
    # dimension's range a ray moves per unit of the others'; MLP neurons first, the dimension
    # with the finest steps, then heads at half the pace (a head is a large step), then tokens
    ANCHOR_MIXES = ((0.0, 1.0, 0.0), (0.5, 1.0, 0.0), (1.0, 1.0, 0.0), (0.0, 1.0, 1.0),
                    (0.5, 1.0, 1.0), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))

    def anchors(self) -> list[np.ndarray]:
        """Structured feasible points: for each mix of :data:`ANCHOR_MIXES` the space can
        move, the least pruning on the ray that prunes every block alike in that mix and meets
        the budget's top (where heads jump over the band, the point before the jump with the
        neurons raised into it, as :meth:`uniform` does). Mixes the space cannot move,
        duplicates, and rays that still miss the band are left out (the list may be empty)."""
        if self._anchors is not None:  # proposed once per initial trial: computed once
            return list(self._anchors)
        L = self.space.depth
        span = self._upper - self._lower
        out: list[np.ndarray] = []
        for mix in self.ANCHOR_MIXES:
            w = np.array([mix[0]] * L + [mix[1]] * L + [mix[2]])
            P = self._lower + w * span
            if not (w * span > 0).any():
                continue
            x = self._on_ray(P)[0]
            if x is not None and not any(np.allclose(x, a) for a in out):
                out.append(x)
        self._anchors = out
        return list(out)

    def _on_ray(self, end: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """The least pruning on the ray from ``lower`` to ``end`` that meets the band's top;
        where the ray's cost jumps over the band, the point just before the jump with the
        neuron ratio alone raised into it. Returns (the point or ``None``, the ray's first
        point below the top, the point just before the jump)."""
        P = end[None]
        X, ok = self.project(P, np.array([self.band.high]))
        if ok[0]:
            return X[0], X, X
        t_hi = self._bisect(P, np.array([self.band.high]))[0]
        base = self._along(P, np.array([t_hi * (1 - 1e-9)]))  # just before the jump
        return self._neurons_to_band(base[0]), X, base

    def _neurons_to_band(self, base: np.ndarray) -> np.ndarray | None:
        """From ``base`` (costing above the band), raise every block's neuron ratio by the same
        amount until the cost lands in the band; ``None`` if that jumps over it too.

        Heads come in a few per block, so one ratio for everything can step over a narrow band
        (every block losing a head at once); MLP neurons are fine-grained enough to land in it.
        """
        L = self.space.depth
        top = base.copy()
        top[L:2 * L] = self._upper[L:2 * L]
        lo, hi = 0.0, 1.0
        if self.space.batch_cost((base + hi * (top - base))[None])[0] > self.band.high:
            return None
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo + hi)
            if self.space.batch_cost((base + mid * (top - base))[None])[0] <= self.band.high:
                hi = mid
            else:
                lo = mid
        x = base + hi * (top - base)
        return x if self.band.contains(self.space.batch_cost(x[None])[0]) else None

    def project(self, P: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Walk each ray towards ``P`` to the first point costing at most its level.

        A ray that lands below the band (a step jumped over it) is retried aiming at the band's
        top, which lands on the highest cost the ray offers below the target.

        Args:
            P: ray directions, points of the box, shape (M, 2L + 1).
            levels: MACs to aim at, in the band, shape (M,).
        Returns:
            (points (M, 2L + 1), mask (M,) of those inside the band).
        """
        t = self._bisect(P, levels)
        X = self._along(P, t)
        cost = self.space.batch_cost(X)
        ok = self.band.contains(cost)
        retry = ~ok & (levels < self.band.high)
        if retry.any():
            t2 = self._bisect(P[retry], np.full(int(retry.sum()), self.band.high))
            X[retry] = self._along(P[retry], t2)
            ok[retry] = self.band.contains(self.space.batch_cost(X[retry]))
        return X, ok

    def _along(self, P: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Points ``clip(lower + t * (P - lower))`` of the rays, shape (M, 2L + 1)."""
        lo = self._lower
        return np.clip(lo + t[:, None] * (P - lo), lo, self._upper)

    def _bisect(self, P: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """Smallest ``t`` (to bisection precision) at which each ray costs at most its level.

        A ray that never gets that cheap returns its end (every coordinate saturated), where the
        caller's band check rejects it.
        """
        span = np.where(self.space.free, self._upper - self._lower, 0.0)
        step = P - self._lower
        moving = step > span / _MAX_STRETCH
        # at t_end every moving coordinate has reached its upper bound
        t_end = np.where(moving, span / np.where(moving, step, 1.0), 0.0).max(axis=1)
        lo_t, hi_t = np.zeros(len(P)), t_end
        for _ in range(_BISECTION_STEPS):
            mid = 0.5 * (lo_t + hi_t)
            ok = self.space.batch_cost(self._along(P, mid)) <= levels
            hi_t = np.where(ok, mid, hi_t)
            lo_t = np.where(ok, lo_t, mid)
        # the least pruned corner itself may already be cheap enough
        at_start = self.space.batch_cost(self._along(P, np.zeros(len(P)))) <= levels
        return np.where(at_start, 0.0, hi_t)
