"""Frozen, self-validating settings of a policy search: the compute budget and the loop's knobs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from ..errors import SearchError, require, settings_of  # noqa: F401  (SearchError re-exported)

METHODS = ("gp-ei", "random", "uniform")
DIMS = ("heads", "neurons", "tokens")  # the dimensions a plan can prune
# what a search maximises: masked calibration top-1, or minus the KL divergence from the dense model
OBJECTIVES = ("top1", "kl", "features")
Method = Literal["gp-ei", "random", "uniform"]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise SearchError(message)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Budget:
    """How much compute the pruned model may use.

    A candidate is feasible when the cost of its integer architecture lies in the band
    ``[(1 - tolerance) * target, target]``: at most the target, and not wastefully far below it.
    The cost is MACs per image, or, when the search has a latency table, the predicted time of a
    forward pass (ms per batch).

    Attributes:
        value: the target: a fraction of the dense model's cost (``0.6`` keeps 60%) when
            ``unit="fraction"``, GMACs per image (1e9 multiply-accumulates) when
            ``unit="gmacs"``, or milliseconds per batch when ``unit="ms"``.
        unit: ``"fraction"``, ``"gmacs"`` or ``"ms"``.
        tolerance: width of the band below the target, as a fraction of the target (the
            method's authors use 0.02).
    """

    value: float
    unit: Literal["fraction", "gmacs", "ms"] = "fraction"
    tolerance: float = 0.02

    def __post_init__(self) -> None:
        _check(isinstance(self.value, (int, float)) and not isinstance(self.value, bool)
               and math.isfinite(self.value) and self.value > 0,
               f"budget must be a positive number, got {self.value!r}; e.g. 0.6 keeps 60% of the "
               "dense MACs")
        _check(self.unit in ("fraction", "gmacs", "ms"),
               f"budget unit must be 'fraction', 'gmacs' or 'ms', got {self.unit!r}")
        _check(isinstance(self.tolerance, (int, float)) and 0.0 <= self.tolerance < 1.0,
               f"budget tolerance must be in [0, 1), got {self.tolerance!r}; 0.02 accepts "
               "candidates down to 2% below the target")
        object.__setattr__(self, "value", float(self.value))
        object.__setattr__(self, "tolerance", float(self.tolerance))

    def target(self, dense: float) -> float:
        """The target in the cost's own unit (MACs, or ms), given the dense model's cost."""
        return {"fraction": self.value * dense, "gmacs": self.value * 1e9}.get(self.unit,
                                                                              self.value)

    def target_macs(self, dense_macs: int) -> float:
        """The target in MACs per image, given the dense model's MACs."""
        return self.target(dense_macs)

    def check_metric(self, metric: str) -> None:
        """Refuse a budget in the other metric's unit (GMACs for a latency search, ms for MACs).

        Raises:
            SearchError: the unit does not fit ``metric`` (``macs`` or ``latency``).
        """
        if (self.unit, metric) == ("gmacs", "latency"):
            raise SearchError("a budget in GMACs bounds MACs, but this search bounds predicted "
                              "time: give a fraction (0.5) or milliseconds (12ms)")
        if (self.unit, metric) == ("ms", "macs"):
            raise SearchError("a budget in ms bounds time: pass --budget-metric latency and "
                              "--latency-table T, or give a fraction or GMACs")

    def describe(self, metric: str = "macs") -> str:
        """The target as a person reads it, e.g. ``"60% of the dense MACs"``."""
        if self.unit == "fraction":
            what = "MACs" if metric == "macs" else "time (measured whole with the table)"
            return f"{self.value:.1%} of the dense {what}"
        return f"{self.value:.4g} GMACs" if self.unit == "gmacs" else f"{self.value:.4g} ms"


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides which candidates a search proposes.

    Attributes:
        method: ``"gp-ei"`` (Gaussian process + expected improvement after ``init`` random
            feasible trials), ``"random"`` (random feasible trials only) or ``"uniform"`` (the one
            uniform ratio that meets the budget: a single evaluation whatever ``trials`` says).
        trials: evaluations in all, the initial population included.
        init: random feasible trials before the first GP proposal (``gp-ei`` only; the other
            methods ignore it).
        seed: trial ``i`` draws its randomness from ``(seed, i)`` alone, so a resumed search
            proposes what an uninterrupted one would.
        n_candidates: fresh random feasible candidates scored by the acquisition per GP step.
        n_local: extra candidates per GP step made by perturbing the best trials so far.
        n_best_local: how many of the best trials are perturbed.
        local_scale: standard deviation of a perturbation, as a fraction of each ratio's range.
        gp_restarts: extra random restarts of the GP's hyper-parameter optimiser.
        objective: a label for what the objective measures (``"top1"``, ``"kl"``): values of
            different objectives are not comparable, so a trials file only resumes under the same.
        anchors: ``gp-ei`` only: the initial population starts with the structured plans a
            practitioner would try first (one ratio in every block, along a few mixes of the
            dimensions, see :meth:`FeasibleSampler.anchors`), then random trials, so the GP
            starts from the best uniform plan rather than only from random ones.
    """

    method: Method = "gp-ei"
    trials: int = 50
    init: int = 20
    seed: int = 0
    n_candidates: int = 2000
    n_local: int = 500
    n_best_local: int = 5
    local_scale: float = 0.1
    gp_restarts: int = 2
    objective: str = "top1"
    anchors: bool = True

    def __post_init__(self) -> None:
        require(self.method in METHODS, "method", f"must be one of {', '.join(METHODS)}, got "
                f"{self.method!r}")
        require(_is_int(self.trials) and self.trials >= 1, "trials",
                f"must be an integer >= 1, got {self.trials!r}")
        for name in ("init", "seed", "n_candidates", "n_local", "n_best_local", "gp_restarts"):
            v = getattr(self, name)
            require(_is_int(v) and v >= 0, name, f"must be an integer >= 0, got {v!r}")
        require(self.n_candidates >= 1, "n_candidates", "must be at least 1")
        if self.method == "gp-ei":
            require(self.init <= self.trials, "init",
                    f"({self.init}) exceeds trials ({self.trials}): the initial population is "
                    "part of the trials; lower init or raise trials")
            # a GP fitted to fewer than two points has nothing to say about length scales
            require(self.init >= 2, "init", f"must be at least 2 for gp-ei (random trials "
                    f"before the first GP proposal), got {self.init}")
        require(self.n_local == 0 or self.n_best_local >= 1, "n_best_local",
                "must be at least 1 when n_local > 0 (it perturbs the best trials)")
        require(isinstance(self.local_scale, (int, float)) and 0 < self.local_scale <= 1,
                "local_scale", f"must be in (0, 1], got {self.local_scale!r}")

    @classmethod
    def of(cls, **settings) -> SearchConfig:
        """A configuration from keyword settings; an unknown name is refused."""
        return settings_of(cls, settings)

    def proposal_settings(self) -> dict:
        """The settings that decide which points are proposed (``trials`` only says how many):
        a trials file may be resumed, or extended, by any search with the same ones.

        The keys are those of the trials files written so far (``n_init``, ``metric``), so that
        those files keep resuming.
        """
        # the default objective is left out, so trials files written before it existed resume
        extra = {} if self.objective == "top1" else {"metric": self.objective}
        if self.method != "gp-ei":
            return {"method": self.method, "seed": self.seed, **extra}
        # anchors only when on: trials files written before the setting existed resume
        d = {k: v for k, v in asdict(self).items()
             if k not in ("trials", "objective", "init", "anchors")}
        return {**d, "n_init": self.init} | extra | ({"anchors": True} if self.anchors else {})

    @property
    def evaluations(self) -> int:
        """Evaluations the search makes: ``trials``, or one for ``uniform``."""
        return 1 if self.method == "uniform" else self.trials
