"""What a finished search leaves on disk (best plan, summary, plot) and the typed summary that
the compress run, its report and the benchmarks read back."""

from __future__ import annotations

import json

import pytest

from tests.helpers import synthetic_table
from vitprune.plan import PrunePlan
from vitprune.search import Budget, SearchSpace, read_trials, search
from vitprune.search.report import SearchSummary, read_outputs, summary
from vitprune.search.trials import Trial


def test_outputs_best_plan_round_trips(tmp_path, small_space, quadratic, fast):
    res = search(quadratic(small_space), small_space, 0.6, trials=7, init=5, seed=0,
                 out_dir=tmp_path, progress=False, **fast)
    plan = PrunePlan.from_json((tmp_path / "best_plan.json").read_text())
    assert plan == res.best_plan == small_space.plan(res.best.ratios)
    assert res.best.value == max(t.value for t in res.trials)
    assert len(read_trials(tmp_path / "trials.jsonl")) == 7
    on_disk = json.loads((tmp_path / "search.json").read_text())
    assert on_disk["best"]["value"] == res.best.value
    assert on_disk["best_so_far"] == res.best_so_far()
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    again_plan, again = read_outputs(tmp_path)
    assert again_plan == plan and again == summary(res)  # every field read back, typed
    assert isinstance(again.best, Trial) and again.best == res.best
    assert on_disk["band_macs"] == [res.band.low, res.band.high]
    assert again.band_fraction == pytest.approx((res.band.low / res.band.dense,
                                                 res.band.high / res.band.dense))


def test_a_latency_search_summary_keeps_its_table_and_the_dense_macs(small_space, quadratic,
                                                                     fast):
    shape = small_space.shape
    space = SearchSpace(shape, latency=synthetic_table(shape), head_bounds=(0, 0.5),
                        neuron_bounds=(0, 0.5), token_bounds=(0, 0.5))
    res = search(quadratic(space), space, Budget(0.7), trials=4, init=4, seed=1,
                 progress=False, **fast)
    s = summary(res)
    d = s.to_dict()
    assert s.metric == "latency" and d["band_ms"] == [res.band.low, res.band.high]
    assert d["dense_ms"] == res.band.dense and d["dense_macs"] == space.dense_macs
    assert d["latency_table"] == space.latency.describe() and "band_macs" not in d
    assert SearchSummary.from_dict(json.loads(json.dumps(d))) == s
