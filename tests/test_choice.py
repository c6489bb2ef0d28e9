"""The search's final choice by a short distillation (``--choice distilled``)."""

import json

import numpy as np
import pytest

from vitprune import choice
from vitprune.config import SearchSettings
from vitprune.errors import ConfigError
from vitprune.pipeline import policy_search
from vitprune.plan import PrunePlan


def _plan_key(plan: PrunePlan) -> str:
    return json.dumps(plan.to_dict(), sort_keys=True)


def test_the_distilled_choice_keeps_the_candidate_that_distils_best_and_resumes(
        tiny_vit, synth_splits, tmp_path, monkeypatch):
    out = tmp_path / "s"
    res = policy_search(tiny_vit, synth_splits, 0.6, out, trials=8, init=6, calib_images=32,
                        choice="distilled", choice_steps=2, progress=False)
    record = json.loads((out / choice.CHOICE_FILE).read_text())
    assert record["steps"] == 2 and record["images"] == [32, 64]  # images the search never saw
    rows = record["candidates"]
    # the five best trials and every anchor, one per distinct plan
    want = choice.candidates(res)
    assert [r["trial"] for r in rows] == [t.trial for t in want]
    def keys(trials):
        return [_plan_key(res.space.plan(np.array(t.ratios))) for t in trials]

    top = sorted(res.trials, key=lambda t: -t.value)[:choice.CHOICE_TOP]
    anchors = [t for t in res.trials if t.source == "anchor"]
    assert anchors and set(keys(top + anchors)) == set(keys(want))
    assert len(set(keys(want))) == len(want) < len(top) + len(anchors) + 1
    # the chosen one is the best after distillation, and it is the directory's plan
    pick = max(rows, key=lambda r: r["distilled_top1"])
    assert record["chosen"] == pick["trial"] == res.best.trial
    assert _plan_key(PrunePlan.load(out / "best_plan.json")) == _plan_key(res.best_plan)
    assert _plan_key(res.best_plan) == _plan_key(res.space.plan(np.array(res.best.ratios)))
    assert json.loads((out / "search.json").read_text())["best"]["trial"] == res.best.trial

    # a resumed search reads the candidates back instead of distilling them again
    def refuse(*a, **k):
        raise AssertionError("distilled again")

    monkeypatch.setattr(choice, "fit", refuse)
    again = policy_search(tiny_vit, synth_splits, 0.6, out, trials=8, init=6, calib_images=32,
                          choice="distilled", choice_steps=2, progress=False, resume=True)
    assert again.best.trial == res.best.trial


def test_the_distilled_choice_needs_unseen_calibration_images_and_checks_first(
        tiny_vit, synth_splits, tmp_path, monkeypatch):
    import vitprune.pipeline as pipeline

    def refuse(*a, **k):
        raise AssertionError("work began before the check")

    monkeypatch.setattr(pipeline, "scored", refuse)
    with pytest.raises(ConfigError, match="--choice distilled") as exc:
        policy_search(tiny_vit, synth_splits, 0.6, tmp_path / "s", calib_images=64,
                      choice="distilled", progress=False)
    assert "--calib-images" in str(exc.value)
    with pytest.raises(ConfigError, match="choice"):
        SearchSettings(choice="last")
    with pytest.raises(ConfigError, match="choice_steps"):
        SearchSettings(choice_steps=0)


def test_under_a_time_budget_only_candidates_whose_measured_time_holds_are_distilled(
        tiny_vit, synth_splits, tmp_path):
    res = policy_search(tiny_vit, synth_splits, 0.6, tmp_path / "s", trials=8, init=6,
                        calib_images=32, progress=False)
    settings = SearchSettings(calib_images=32, choice="distilled", choice_steps=1)
    want = choice.candidates(res)
    slow = {t.trial for t in want[1:3]}  # two of them measure 20% over the asked time
    times = {_plan_key(res.space.plan(np.array(t.ratios))): 0.72 if t.trial in slow else 0.61
             for t in want}
    out = choice.choose_distilled(tiny_vit, synth_splits, res, settings, tmp_path / "s",
                                  measure=lambda plan: times[_plan_key(plan)], target=0.6,
                                  miss=0.05)
    rows = {r["trial"]: r for r in json.loads((tmp_path / "s" / choice.CHOICE_FILE)
                                                .read_text())["candidates"]}
    assert set(rows) == {t.trial for t in want}
    assert all("distilled_top1" not in rows[t] and rows[t]["measured_fraction"] == 0.72
               for t in slow)
    assert all("distilled_top1" in r for t, r in rows.items() if t not in slow)
    assert out.best.trial not in slow
    assert [r["held"] for r in rows.values()] == [t not in slow for t in rows]
    # the search's own plan stays a candidate even where its measured time misses
    times = dict.fromkeys(times, 0.9)
    out = choice.choose_distilled(tiny_vit, synth_splits, res, settings, tmp_path / "t",
                                  measure=lambda plan: times[_plan_key(plan)], target=0.6)
    assert out.best.trial == res.best.trial
