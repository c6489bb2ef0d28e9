"""The search loop: feasible proposals, GP-EI beats random search, resume is exact, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vitprune.errors import BudgetError, ConfigError, OutputError
from vitprune.search import Budget, GPSurrogate, SearchConfig, SearchError, SearchSpace, search
from vitprune.search.trials import TIMING_FIELDS


class SpySurrogate(GPSurrogate):
    """A GP that records every candidate batch the acquisition scores (unit-cube inputs)."""

    scored: list = []

    def predict(self, X):
        SpySurrogate.scored.append(np.array(X))
        return super().predict(X)


def _in_band(space: SearchSpace, ratios, budget: float, tol: float = 0.02) -> bool:
    frac = space.macs(ratios) / space.dense_macs
    return (1 - tol) * budget <= frac <= budget


def _records(path) -> list[dict]:
    """The trials file's records without the fields that time the machine."""
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in TIMING_FIELDS})
    return out


def test_every_candidate_is_in_the_band(d12_shape, quadratic, fast):
    space = SearchSpace(d12_shape)
    SpySurrogate.scored = []
    res = search(quadratic(space, 0.55), space, 0.55, trials=8, init=5, seed=0,
                 progress=False, surrogate=lambda s: SpySurrogate(seed=s, restarts=0), **fast)
    assert [t.source for t in res.trials] == ["init"] * 5 + ["ei"] * 3
    for t in res.trials:
        assert _in_band(space, t.ratios, 0.55), t
        assert t.macs == space.macs(t.ratios)
    # not only the chosen ones: every candidate the acquisition scored was feasible
    assert len(SpySurrogate.scored) == 3
    lo, hi = space.lower[space.free], space.upper[space.free]
    for U in SpySurrogate.scored:
        assert len(U) >= fast["n_candidates"]
        X = np.tile(space.lower, (len(U), 1))
        X[:, space.free] = lo + U * (hi - lo)
        frac = space.batch_macs(X) / space.dense_macs
        assert frac.min() >= 0.98 * 0.55 and frac.max() <= 0.55


def test_random_search_is_feasible_and_shares_gp_init_points(small_space, quadratic, fast):
    f = quadratic(small_space)
    rand = search(f, small_space, 0.6, method="random", trials=6, seed=4, progress=False)
    gp = search(f, small_space, 0.6, trials=6, init=4, seed=4, progress=False, **fast)
    assert all(_in_band(small_space, t.ratios, 0.6) for t in rand.trials + gp.trials)
    assert {t.source for t in rand.trials} == {"random"}
    assert [t.ratios for t in rand.trials[:4]] == [t.ratios for t in gp.trials[:4]]
    assert len({t.ratios for t in rand.trials}) == 6


def _best_values(space, quadratic, method, seeds, **kw) -> np.ndarray:
    f = quadratic(space)
    return np.array([search(f, space, 0.6, method=method, seed=s, progress=False, **kw).best.value
                     for s in seeds])


def test_gp_ei_beats_random_search(small_space, quadratic, fast):
    seeds = range(3)
    gp = _best_values(small_space, quadratic, "gp-ei", seeds, trials=20, init=6, **fast)
    rand = _best_values(small_space, quadratic, "random", seeds, trials=20)
    print(f"best after 20 evaluations (optimum 0): gp-ei {gp.round(3)} random {rand.round(3)}")
    # regret (distance to the known optimum 0) at most half of random search's, on average
    assert -gp.mean() < 0.5 * -rand.mean()


@pytest.mark.slow
def test_gp_ei_beats_random_search_on_the_d12_space(d12_shape, quadratic):
    space = SearchSpace(d12_shape)
    seeds = range(5)
    kw = dict(trials=60, init=20, n_candidates=1000, n_local=200)
    gp = _best_values(space, quadratic, "gp-ei", seeds, **kw)
    rand = _best_values(space, quadratic, "random", seeds, trials=60)
    print(f"best after 60 evaluations (optimum 0): gp-ei {gp.round(3)} random {rand.round(3)}")
    # measured 0.47 of random's regret, winning all 5 seeds; this leaves room for GP-fit noise
    assert -gp.mean() < 0.7 * -rand.mean()
    assert (gp > rand).sum() >= 4


@pytest.mark.parametrize("method", ["gp-ei", "random"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, small_space, quadratic, crashing,
                                                 fast, method):
    Crashing, Crash = crashing
    kw = dict(method=method, trials=11, init=4, seed=3, progress=False, **fast)
    whole = tmp_path / "whole" / "trials.jsonl"
    search(quadratic(small_space), small_space, 0.6, trials_path=whole, **kw)

    part = tmp_path / "part" / "trials.jsonl"
    killer = Crashing(quadratic(small_space), after=7)
    with pytest.raises(Crash):
        search(killer, small_space, 0.6, trials_path=part, **kw)
    lines = part.read_text().splitlines()
    assert len(lines) == 7  # only the evaluation in flight is lost
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert not (part.parent / "best_plan.json").exists()

    again = quadratic(small_space)
    res = search(again, small_space, 0.6, trials_path=part, resume=True, **kw)
    assert again.calls == 4  # trials 7..10 only
    assert _records(part) == _records(whole)
    assert [t.trial for t in res.trials] == list(range(11))


def test_kill_during_a_write_leaves_whole_lines(tmp_path, small_space, quadratic, monkeypatch):
    import vitprune.fsutil as fsutil

    kw = dict(method="random", trials=5, seed=2, progress=False)
    whole, part = tmp_path / "whole.jsonl", tmp_path / "part.jsonl"
    search(quadratic(small_space), small_space, 0.6, trials_path=whole, **kw)
    real_replace, writes = fsutil.os.replace, []

    def replace_then_die(src, dst):
        writes.append(dst)
        if len(writes) == 3:  # the third append is killed between writing and renaming
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        search(quadratic(small_space), small_space, 0.6, trials_path=part, **kw)
    monkeypatch.undo()
    assert [json.loads(line)["trial"] for line in part.read_text().splitlines()] == [0, 1]
    assert not list(tmp_path.glob(".*.tmp"))
    search(quadratic(small_space), small_space, 0.6, trials_path=part, resume=True, **kw)
    assert _records(part) == _records(whole)


def test_resume_extends_a_finished_search(tmp_path, small_space, quadratic, fast):
    kw = dict(init=4, seed=1, progress=False, **fast)
    short, long = tmp_path / "a" / "trials.jsonl", tmp_path / "b" / "trials.jsonl"
    search(quadratic(small_space), small_space, 0.6, trials=6, trials_path=short, **kw)
    search(quadratic(small_space), small_space, 0.6, trials=8, trials_path=short, resume=True,
           **kw)
    search(quadratic(small_space), small_space, 0.6, trials=8, trials_path=long, **kw)
    assert _records(short) == _records(long)


def test_trials_file_of_another_search_is_refused(tmp_path, small_space, quadratic, fast):
    path = tmp_path / "trials.jsonl"
    kw = dict(method="random", trials=3, progress=False)
    search(quadratic(small_space), small_space, 0.6, trials_path=path, seed=0, **kw)
    with pytest.raises(OutputError, match="already exists"):
        search(quadratic(small_space), small_space, 0.6, trials_path=path, seed=0, **kw)
    with pytest.raises(OutputError, match="another search configuration"):
        search(quadratic(small_space), small_space, 0.6, trials_path=path, seed=1, resume=True,
               **kw)
    with pytest.raises(OutputError, match="another search configuration"):
        search(quadratic(small_space), small_space, 0.55, trials_path=path, seed=0, resume=True,
               **kw)


def test_uniform_evaluates_one_uniform_policy(small_space, quadratic):
    f = quadratic(small_space)
    res = search(f, small_space, 0.6, method="uniform", trials=5, progress=False)
    assert f.calls == 1 and len(res.trials) == 1 and res.trials[0].source == "uniform"
    r = res.best_ratios
    assert len(set(r.heads) | set(r.neurons) | {r.tokens}) == 1
    assert _in_band(small_space, res.best.ratios, 0.6)


def test_impossible_budget_fails_before_any_evaluation(small_space, quadratic):
    f = quadratic(small_space)
    with pytest.raises(BudgetError, match="below the smallest architecture"):
        search(f, small_space, 0.01, method="random", trials=3, progress=False)
    with pytest.raises(BudgetError, match="above the dense model"):
        search(f, small_space, Budget(1.5), method="random", trials=3, progress=False)
    assert f.calls == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "high"])
def test_objective_must_return_a_finite_number(small_space, bad):
    with pytest.raises(SearchError, match="objective"):
        search(lambda plan, ratios: bad, small_space, 0.6, method="random", trials=2,
               progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "bayes"}, "method must be one of"),
    ({"trials": 0}, "trials must be an integer >= 1, got 0"),
    ({"trials": -3}, "trials must be an integer >= 1, got -3"),  # the same limit as for 0
    ({"trials": 5, "init": 6}, "exceeds trials"),
    ({"init": 1}, "init must be at least 2"),
    ({"seed": -1}, "seed"),
    ({"trials": 2.5}, "trials"),
    ({"local_scale": 0.0}, "local_scale"),
])
def test_config_validates_itself(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SearchConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        SearchConfig().trials = 3


def test_anchors_start_the_population_with_uniform_plans_in_the_band(small_space, quadratic,
                                                                     fast, tmp_path):
    """With anchors the first trials are one ratio per dimension in every block (along the
    sampler's mixes), each in the band; the rest of the population is the random one; a trials
    file searched without anchors is not resumed with them."""
    from vitprune.search import FeasibleSampler, resolve_band

    wide = (0.0, 0.9)  # vitprune's default bounds: room for every mix
    small_space = SearchSpace(small_space.shape, head_bounds=wide, neuron_bounds=wide,
                              token_bounds=wide)
    f = quadratic(small_space)
    assert SearchConfig().anchors  # the default
    anchored = search(f, small_space, 0.6, trials=9, init=8, seed=3,
                      progress=False, **(fast | {"anchors": True}))
    sampler = FeasibleSampler(small_space, resolve_band(small_space, Budget(0.6)))
    want = sampler.anchors()
    n, L = len(want), small_space.depth
    assert 4 <= n <= len(FeasibleSampler.ANCHOR_MIXES)
    assert [t.source for t in anchored.trials] == ["anchor"] * n + ["init"] * (8 - n) + ["ei"]
    for t, x in zip(anchored.trials, want):
        assert t.ratios == tuple(x) and _in_band(small_space, t.ratios, 0.6)
        assert len(set(t.ratios[:L])) == 1 and len(set(t.ratios[L:2 * L])) == 1
    # the mixes differ: some anchors keep every token, others prune tokens too
    assert {t.ratios[-1] == 0.0 for t in anchored.trials[:n]} == {True, False}
    assert len({t.ratios for t in anchored.trials[:n]}) == n
    plain = search(f, small_space, 0.6, trials=9, init=8, seed=3, progress=False, **fast)
    assert [t.ratios for t in plain.trials[n:8]] == [t.ratios for t in anchored.trials[n:8]]
    path = tmp_path / "trials.jsonl"
    search(f, small_space, 0.6, trials=4, init=3, seed=0, trials_path=path, progress=False, **fast)
    with pytest.raises(OutputError, match="another search configuration"):
        search(f, small_space, 0.6, trials=5, init=3, seed=0, trials_path=path, resume=True,
               progress=False, **(fast | {"anchors": True}))
    # off, the settings are those of trials files written before anchors existed
    assert "anchors" not in SearchConfig(anchors=False).proposal_settings()
