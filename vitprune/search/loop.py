"""The search loop: propose a feasible policy, evaluate it, record it, repeat.

Trial ``i`` takes its randomness from ``(seed, i)`` alone and its data from the trials before it,
which the trials file holds exactly (JSON floats round-trip), so a search resumed from its trials
file proposes what the uninterrupted search would have: a killed run loses at most the
evaluation in flight.

Multi-process evaluation (torchrun) lives behind the objective, so this loop knows nothing of
it: rank 0 alone runs the search and writes the trials; its objective sends each plan to the
other ranks, every rank scores its part of the calibration images, and the counts are summed
(``vitprune.pipeline.MaskedAccuracy``). The value is then exactly the single-process one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InternalError, OutputError
from ..plan import PrunePlan
from ..progress import min_interval
from .acquisition import log_expected_improvement
from .config import Budget, SearchConfig, SearchError
from .report import write_outputs
from .result import SearchResult
from .sampler import FeasibleSampler, resolve_band
from .space import Ratios, SearchSpace, plan_macs
from .surrogate import GPSurrogate, Surrogate
from .trials import TRIALS, Trial, append_trial, fingerprint, read_trials


class Objective(Protocol):
    """What a search maximises: e.g. calibration top-1 of the dense weights pruned by ``plan``.

    Called with the integer plan (components chosen by the space's rankings) and the continuous
    ratios it was made from; returns a finite float, higher is better.
    """

    def __call__(self, plan: PrunePlan, ratios: Ratios) -> float: ...


SurrogateFactory = Callable[[int], Surrogate]  # seed -> an unfitted surrogate


def trial_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of trial ``index``: a function of (seed, index) only."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def search(objective: Objective, space: SearchSpace, budget: Budget | float, *,
           trials_path: str | Path | None = None, resume: bool = False,
           out_dir: str | Path | None = None, progress: bool = True,
           surrogate: SurrogateFactory | None = None, config: SearchConfig | None = None,
           **settings) -> SearchResult:
    """Search prune ratios that maximise ``objective`` within ``budget``.

    Args:
        objective: scores a plan (see :class:`Objective`).
        space: the ratios searched and their bounds.
        budget: a :class:`Budget`, or a fraction of the dense MACs (0.6 keeps 60%).
        settings: :class:`SearchConfig`'s fields (``method``, ``trials``, ``init``, ``seed``,
            ``n_candidates`` ...), its defaults for those not given; or ``config``, not both.
        trials_path: JSON-lines file that receives each evaluation as it completes (default
            ``out_dir /`` :data:`~vitprune.search.trials.TRIALS`; ``None`` with no ``out_dir``:
            nothing is written).
        resume: continue the search stored in ``trials_path``; without it an existing non-empty
            trials file is an error rather than silently overwritten.
        out_dir: where the best plan, a summary and a plot go at the end (default: the trials
            file's directory).
        progress: show a progress bar with the best value so far.
        surrogate: ``seed -> Surrogate`` for the GP step (default :class:`GPSurrogate`).
        config: a ready :class:`SearchConfig`, instead of ``**settings``.
    Returns:
        The :class:`SearchResult`.
    Raises:
        BudgetError: no architecture of the space meets the budget.
        SearchError: invalid settings.
        OutputError: the trials file exists (without ``resume``) or belongs to another search.
    """
    if config is None:
        config = SearchConfig.of(**settings)
    elif settings:
        raise SearchError(f"{', '.join(sorted(settings))} given beside config=: put every "
                          "setting in the SearchConfig, or pass none")
    if not isinstance(budget, Budget):
        budget = Budget(budget)
    if trials_path is None and out_dir is not None:
        trials_path = Path(out_dir) / TRIALS
    if out_dir is None and trials_path is not None:
        out_dir = Path(trials_path).parent
    result = run_search(objective, space, budget, config, trials_path=trials_path,
                        resume=resume, progress=progress, surrogate=surrogate)
    if out_dir is not None:
        write_outputs(result, out_dir)
    return result


def run_search(objective: Objective, space: SearchSpace, budget: Budget, config: SearchConfig,
               *, trials_path: str | Path | None = None, resume: bool = False,
               progress: bool = True, surrogate: SurrogateFactory | None = None) -> SearchResult:
    """The loop behind :func:`search`, taking a ready :class:`SearchConfig`; writes no report."""
    band = resolve_band(space, budget)
    sampler = FeasibleSampler(space, band)
    run = fingerprint({"space": space.describe(), "band": [band.low, band.high],
                       "config": config.proposal_settings()})
    # every finished evaluation is kept: a resume asking for fewer trials than the file holds
    # evaluates none and never loses the best found so far
    trials = _load(trials_path, resume, run)
    make = surrogate or (lambda s: GPSurrogate(seed=s, restarts=config.gp_restarts))
    from tqdm.auto import tqdm

    with tqdm(total=max(config.evaluations, len(trials)), initial=len(trials),
              desc=f"search {config.method}",
              mininterval=min_interval(),
              disable=not progress, unit="eval") as bar:
        if trials:
            bar.set_postfix(best=f"{max(t.value for t in trials):.4g}")
        for i in range(len(trials), config.evaluations):
            trial = _run_trial(i, objective, space, sampler, config, trials, make, run)
            if trials_path is not None:
                append_trial(trials_path, trial)
            trials.append(trial)
            bar.set_postfix(best=f"{max(t.value for t in trials):.4g}", refresh=False)
            bar.update(1)
    best = max(trials, key=lambda t: t.value)  # max keeps the first of equal values
    return SearchResult(tuple(trials), best, space.plan(best.ratios), config, space, band)


def _load(trials_path: str | Path | None, resume: bool, run: str) -> list[Trial]:
    """Trials to continue from: those in the file when resuming, none otherwise."""
    if trials_path is None:
        if resume:
            raise SearchError("resume=True needs the trials_path to resume from")
        return []
    path = Path(trials_path)
    if not resume:
        if path.exists() and path.stat().st_size > 0:
            raise OutputError(f"trials file {path} already exists: pass resume=True to continue "
                              "that search, or choose a new path")
        return []
    return read_trials(path, run=run)


def _run_trial(i: int, objective: Objective, space: SearchSpace, sampler: FeasibleSampler,
               config: SearchConfig, trials: list[Trial], make: SurrogateFactory,
               run: str) -> Trial:
    """Propose trial ``i``, check its cost, evaluate it."""
    t0 = time.perf_counter()
    x, source = _propose(i, space, sampler, config, trials, make)
    plan, ratios = space.plan(x), space.ratios(x)
    cost = space.cost(x)  # the authoritative count, not the sampler's vectorised one
    if not sampler.band.contains(cost):
        raise InternalError(f"proposal {i} costs {cost} ({space.metric}), outside the band "
                           f"[{sampler.band.low}, {sampler.band.high}]")
    n_macs = plan_macs(space.shape, plan)
    t1 = time.perf_counter()
    value = objective(plan, ratios)
    t2 = time.perf_counter()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise SearchError(f"the objective must return a number, got {value!r}") from None
    if not math.isfinite(value):
        raise SearchError(f"the objective returned {value} for trial {i}; it must return a finite "
                          "score (higher is better)")
    return Trial(trial=i, method=config.method, source=source, seed=config.seed,
                 ratios=tuple(float(r) for r in x), macs=n_macs,
                 macs_fraction=n_macs / space.dense_macs, value=value, wall_s=t2 - t1,
                 propose_s=t1 - t0, run=run,
                 latency_ms=None if space.latency is None else cost)


def _propose(i: int, space: SearchSpace, sampler: FeasibleSampler, config: SearchConfig,
             trials: list[Trial], make: SurrogateFactory) -> tuple[np.ndarray, str]:
    """The point trial ``i`` evaluates, and how it was chosen."""
    if config.method == "uniform":
        return sampler.uniform(), "uniform"
    rng = trial_rng(config.seed, i)
    if config.method == "random":
        return sampler.sample(rng, 1)[0], "random"
    if i < config.init:
        anchors = sampler.anchors() if config.anchors else []
        if i < len(anchors):
            return anchors[i], "anchor"
        return sampler.sample(rng, 1)[0], "init"  # the same points random search starts with
    return _propose_ei(rng, space, sampler, config, trials, make), "ei"


def _propose_ei(rng: np.random.Generator, space: SearchSpace, sampler: FeasibleSampler,
                config: SearchConfig, trials: list[Trial], make: SurrogateFactory) -> np.ndarray:
    """The candidate with the highest log EI under a surrogate fitted to ``trials``."""
    X = np.array([t.ratios for t in trials])
    y = np.array([t.value for t in trials])
    model = make(int(rng.integers(2**31 - 1)))
    model.fit(space.to_unit(X), y)
    fresh = sampler.sample(rng, config.n_candidates)
    top = X[np.argsort(-y, kind="stable")[:config.n_best_local]]
    local = sampler.perturb(rng, top, config.n_local, config.local_scale)
    cands = np.concatenate([fresh, local])
    mu, sigma = model.predict(space.to_unit(cands))
    score = log_expected_improvement(mu, sigma, float(y.max()))
    return cands[int(np.argmax(score))]
