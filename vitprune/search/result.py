"""The outcome of a search, as the loop returns it and the report writes it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..plan import PrunePlan
from .config import SearchConfig
from .sampler import Band
from .space import Ratios, SearchSpace
from .trials import Trial


@dataclass(frozen=True)
class SearchResult:
    """The outcome of a search.

    Attributes:
        trials: every evaluation, in order.
        best: the trial with the highest value (the first of equals).
        best_plan: its integer prune plan.
        config: the search settings.
        space: the search space.
        band: the feasible MACs band.
    """

    trials: tuple[Trial, ...]
    best: Trial
    best_plan: PrunePlan
    config: SearchConfig
    space: SearchSpace
    band: Band

    @property
    def best_ratios(self) -> Ratios:
        """The best trial's prune ratios."""
        return Ratios.from_vector(self.best.ratios)

    def best_so_far(self) -> list[float]:
        """Best value after each evaluation."""
        return list(np.maximum.accumulate([t.value for t in self.trials]))
