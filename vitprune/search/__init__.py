"""Deciding how much to cut in each block: the search space (ratios <-> plans), a feasible
sampler for a compute budget, a Gaussian-process surrogate with expected improvement, and the
resumable search loop. Knows no nn.Module: only plans, shapes and costs; the objective that
scores a plan is a callable passed in."""

from .acquisition import expected_improvement, log_expected_improvement
from .config import Budget, SearchConfig, SearchError
from .loop import Objective, run_search, search, trial_rng
from .result import SearchResult
from .sampler import Band, FeasibleSampler, resolve_band
from .space import (
                    Ratios,
                    SearchSpace,
                    default_token_blocks,
                    keep_count,
                    plan_macs,
                    ratios_to_plan,
                    solve_uniform,
)
from .surrogate import GPSurrogate, Surrogate
from .trials import Trial, read_trials

__all__ = [
    "Band", "Budget", "FeasibleSampler", "GPSurrogate", "Objective", "Ratios", "SearchConfig",
    "SearchError", "SearchResult", "SearchSpace", "Surrogate", "Trial", "default_token_blocks",
    "expected_improvement", "keep_count", "log_expected_improvement", "plan_macs",
    "ratios_to_plan", "read_trials", "resolve_band", "run_search", "search", "solve_uniform",
    "trial_rng",
]
