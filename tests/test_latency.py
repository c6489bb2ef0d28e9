"""Latency tables: predictions monotone in what a plan keeps, JSON round trip, tables of another
model or run refused, and searches under a latency budget staying in the band of predicted time.

No test asserts a measured time: tables built here are tiny (few repeats) and only their
structure and the arithmetic on them are checked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest

from tests.helpers import random_plan
from tests.helpers import synthetic_table as synthetic
from vitprune.adapters import vit_shape
from vitprune.cli import main
from vitprune.errors import ConfigError
from vitprune.latency import LatencyTable, isotonic, monotone
from vitprune.models import build_model
from vitprune.plan import BlockPlan, PrunePlan, TokenStage, planned_shape
from vitprune.search import Budget, SearchSpace
from vitprune.search.config import SearchConfig
from vitprune.search.loop import search


def test_predictions_never_rise_when_a_plan_keeps_less(table, tiny):
    shape = vit_shape(tiny)
    L = len(shape.blocks)
    rng = np.random.default_rng(0)
    for seed in range(20):
        plan = random_plan(shape, seed, stages=(1, 2), keep_rate=float(rng.uniform(0.3, 0.9)))
        base = table.predict(planned_shape(shape, plan))
        i = int(rng.integers(L))
        bp = plan.blocks[i]
        more_heads = [*bp.heads, *[h for h in range(shape.blocks[i].heads) if h not in bp.heads][:1]]
        more_neurons = sorted(set(bp.neurons) | set(range(shape.blocks[i].mlp_hidden)[:5]))
        for bigger in (BlockPlan(more_heads, bp.neurons), BlockPlan(bp.heads, more_neurons)):
            blocks = list(plan.blocks)
            blocks[i] = bigger
            grown = PrunePlan(tuple(blocks), plan.tokens)
            assert table.predict(planned_shape(shape, grown)) >= base - 1e-12
        more_tokens = PrunePlan(plan.blocks, tuple(TokenStage(s.block, min(1.0, s.keep_rate + 0.2))
                                                   for s in plan.tokens))
        assert table.predict(planned_shape(shape, more_tokens)) >= base - 1e-12
    assert table.predict(shape) >= max(
        table.predict(planned_shape(shape, random_plan(shape, s))) for s in range(5))


def test_monotone_grids_are_isotonic_fits():
    assert isotonic(np.array([1.0, 3.0, 2.0, 4.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    noisy = np.array([[1.0, 5.0, 2.0], [0.5, 1.0, 3.0]])
    m = monotone(noisy)
    assert np.all(np.diff(m, axis=0) >= 0) and np.all(np.diff(m, axis=1) >= 0)
    assert m.max() < 5.0  # one slow outlier is averaged, not spread over every larger cell


def test_a_table_round_trips_through_json(table, tiny, tmp_path):
    # every field away from its default, so a field the JSON drops comes back different
    table = dataclasses.replace(table, scale=1.37, offset_ms=0.21,
                                meta={**table.meta, "note": "x"},
                                drop_ms=np.asarray(table.drop_ms) + 0.5)
    assert table.drop_ms is not None and table.meta["note"] == "x"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table.to_dict()))
    again = LatencyTable.load(path)
    for f in dataclasses.fields(LatencyTable):
        want, got = getattr(table, f.name), getattr(again, f.name)
        if isinstance(want, np.ndarray):
            assert np.array_equal(got, want), f.name
        else:
            assert got == want, f.name
    assert again.fingerprint() == table.fingerprint()
    shape = vit_shape(tiny)
    plan = random_plan(shape, 3, stages=(1,))
    assert again.predict(planned_shape(shape, plan)) == table.predict(planned_shape(shape, plan))


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("attn_ms"), "damaged"),
    (lambda d: d.update(mlp_ms=[[1.0]]), "mlp_ms must be"),
    (lambda d: d.update(format="something else"), "not a vitprune latency table"),
    (lambda d: d.update(version=99), "newer"),
    (lambda d: d.update(tokens=[5, 3]), "rising order"),
    (lambda d: d.update(scale=-1.0), "scale > 0"),
])
def test_a_malformed_table_is_refused_clearly(table, tmp_path, change, message):
    d = table.to_dict()
    change(d)
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=message):
        LatencyTable.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LatencyTable.load(tmp_path / "junk.json")


def test_a_table_of_another_model_batch_or_dtype_is_refused(table):
    d12 = vit_shape(build_model("fmnist_vit_d12"))
    with pytest.raises(ConfigError, match="another model"):
        table.check_model(d12)
    with pytest.raises(ConfigError, match="another model"):
        SearchSpace(d12, latency=table)
    with pytest.raises(ConfigError, match="batch 2"):
        table.check_run(batch=64)
    with pytest.raises(ConfigError, match="dtype"):
        table.check_run(dtype="bfloat16")
    with pytest.warns(UserWarning, match="will not hold"):
        table.check_run(device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table.check_run(batch=2, dtype="float32", device="cpu", threads=1)


def test_a_pruned_model_of_the_tables_model_fits_it(table, tiny):
    shape = vit_shape(tiny)
    pruned = planned_shape(shape, random_plan(shape, 1))
    table.check_model(pruned)  # fewer heads and neurons than the table's: fine


@pytest.mark.parametrize("which", ["measured", "synthetic"])
def test_batch_cost_is_the_plan_cost_under_a_latency_table(table, tiny, which):
    shape = vit_shape(tiny)
    space = SearchSpace(shape, latency=table if which == "measured" else synthetic(shape),
                        head_bounds=(0, 0.9), neuron_bounds=(0, 0.9), token_bounds=(0, 0.9),
                        neuron_multiple=4)
    X = np.random.default_rng(0).uniform(space.lower, space.upper, size=(50, space.dim))
    assert space.batch_cost(X) == pytest.approx([space.cost(x) for x in X], rel=1e-12)
    assert space.metric == "latency"
    assert space.dense_cost == space.latency.dense_ms(space.shape)


@pytest.mark.parametrize(("budget", "method"), [(Budget(0.7), "random"), ("ms", "random"),
                                                (Budget(0.6), "gp-ei"), (Budget(0.6), "uniform")])
def test_a_search_under_a_latency_budget_stays_in_the_band_of_predicted_time(tiny, budget,
                                                                             method):
    table = synthetic(vit_shape(tiny))
    space = SearchSpace(vit_shape(tiny), latency=table, head_bounds=(0, 0.9),
                        neuron_bounds=(0, 0.9), token_bounds=(0, 0.9))
    if budget == "ms":  # an absolute budget: 70% of the dense time, in ms
        budget = Budget(0.7 * space.dense_cost, unit="ms")
    target = budget.target(space.dense_cost)
    trials = 1 if method == "uniform" else 5
    res = search(lambda plan, ratios: float(sum(ratios.heads)), space, budget,
                 config=SearchConfig(method=method, trials=trials, init=min(3, trials)),
                 progress=False)
    for t in res.trials:
        assert 0.98 * target <= t.latency_ms <= target
        assert t.macs < space.dense_macs
    assert 0.98 * target <= table.predict(planned_shape(space.shape, res.best_plan)) <= target


def test_budget_units_must_fit_the_metric(table, tiny):
    from vitprune.search.config import SearchError
    from vitprune.search.sampler import resolve_band

    lat = SearchSpace(vit_shape(tiny), latency=table)
    with pytest.raises(SearchError, match="GMACs bounds MACs"):
        resolve_band(lat, Budget(0.001, unit="gmacs"))
    with pytest.raises(SearchError, match="--budget-metric latency"):
        resolve_band(SearchSpace(vit_shape(tiny)), Budget(10.0, unit="ms"))


def test_latency_commands(tmp_path, capsys):
    out = tmp_path / "t.json"
    args = ["latency-table", "--model", "fmnist_vit_tiny", "--batch", "2", "--threads", "1",
            "--repeats", "1", "--neuron-points", "3", "--token-points", "3", "--quiet",
            "--out", str(out), "--json"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2  # never over an existing file
    assert "exists" in capsys.readouterr().err
    plan = {"blocks": [{"heads": [0, 1], "neurons": list(range(32))}] * 4,
            "tokens": [{"block": 1, "keep_rate": 0.5, "fuse": True}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert main(["cost", "--model", "fmnist_vit_tiny", "--plan", str(tmp_path / "plan.json"),
                 "--latency-table", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    tiny = vit_shape(build_model("fmnist_vit_tiny"))
    saved = LatencyTable.load(out)
    assert res["predicted_ms"] == saved.predict(planned_shape(tiny, PrunePlan.from_dict(plan)))
    # a fraction is of the dense model's time measured whole at build time, not the prediction
    assert res["dense_ms"] == saved.meta["dense_ms_measured"] != saved.predict(tiny)
    assert main(["cost", "--model", "fmnist_vit_d12", "--latency-table", str(out)]) == 2
    assert "another model" in capsys.readouterr().err
    search = ["search", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--trials", "3",
              "--init", "3", "--method", "random", "--calib-images", "32", "--criterion",
              "magnitude", "--quiet", "--json", "--budget", "0.7"]
    assert main(search + ["--budget-metric", "latency", "--out", str(tmp_path / "s0")]) == 2
    assert "--latency-table" in capsys.readouterr().err  # refused before any work
    assert not (tmp_path / "s0").exists()
    fake = tmp_path / "synthetic.json"  # a deterministic table: a measured one's reach varies
    fake.write_text(json.dumps(synthetic(tiny).to_dict()))
    assert main(search + ["--budget-metric", "latency", "--latency-table", str(fake),
                          "--out", str(tmp_path / "s1")]) == 0
    summary = json.loads((tmp_path / "s1" / "search.json").read_text())
    assert summary["metric"] == "latency" and summary["band_ms"][1] == pytest.approx(
        0.7 * summary["dense_ms"])


def test_neuron_multiples_hold_in_searched_plans(tmp_path):
    from vitprune.config import SearchSettings
    from vitprune.data import load_splits
    from vitprune.pipeline import policy_search

    tiny = build_model("fmnist_vit_tiny").eval()
    res = policy_search(tiny, load_splits("synthetic", calib_size=64), "0.6", tmp_path / "s",
                        settings=SearchSettings(method="random", trials=4, init=4,
                                                calib_images=32, neuron_multiple=16),
                        progress=False)
    widths = [len(b.neurons) for p in (res.best_plan,) for b in p.blocks]
    assert all(w % 16 == 0 for w in widths) and min(widths) < 64  # cut, and on multiples
    with pytest.raises(ConfigError, match="neuron_multiple"):
        SearchSettings(neuron_multiple=0)


def test_a_dropped_half_costs_what_the_table_measured_for_it(tiny, table):
    shape = vit_shape(tiny)
    syn = synthetic(shape)
    d = syn.to_dict()
    d["drop_ms"] = [0.001] * len(syn.tokens)
    syn = LatencyTable.from_dict(d)
    dense = PrunePlan.dense(shape)
    blocks = list(dense.blocks)
    blocks[0] = BlockPlan((), blocks[0].neurons)
    dropped = PrunePlan(tuple(blocks), base=dense.base)
    n = shape.num_prefix + shape.num_patches
    attn_full = 0.01 * shape.blocks[0].heads * n + 0.005
    saved = syn.predict(shape) - syn.predict(planned_shape(shape, dropped))
    assert saved == pytest.approx(syn.scale * (attn_full - 0.001))
    one_head = list(dense.blocks)
    one_head[0] = BlockPlan((0,), blocks[0].neurons)
    assert table.predict(planned_shape(shape, dropped)) <= table.predict(
        planned_shape(shape, PrunePlan(tuple(one_head), base=dense.base)))
    assert np.all(table.drop_ms <= table.attn_ms[0]) and np.all(table.drop_ms > 0)


def test_a_search_warns_when_the_table_was_measured_on_another_device(tiny, tmp_path):
    from vitprune.config import SearchSettings
    from vitprune.data import load_splits
    from vitprune.pipeline import policy_search

    syn = synthetic(vit_shape(tiny)).to_dict()
    syn["meta"].update(device="cuda", threads=1)
    (tmp_path / "gpu.json").write_text(json.dumps(syn))
    settings = SearchSettings(method="random", trials=2, init=2, calib_images=16,
                              budget_metric="latency", latency_table=str(tmp_path / "gpu.json"))
    with pytest.warns(UserWarning, match="device 'cuda'"):
        policy_search(tiny, load_splits("synthetic", calib_size=32), "0.7", tmp_path / "s",
                      settings=settings, progress=False)


def test_compress_under_a_latency_budget_reports_predicted_beside_measured_time(tiny, tmp_path):
    import vitprune
    from vitprune.data import load_splits

    path = tmp_path / "table.json"
    path.write_text(json.dumps(synthetic(vit_shape(tiny)).to_dict()))
    res = vitprune.compress("fmnist_vit_tiny", load_splits("synthetic", calib_size=64), "0.7",
                            tmp_path / "run", trials=3, init=2, calib_images=32,
                            score_images=32, epochs=1, max_steps_per_epoch=1, progress=False,
                            budget_metric="latency", latency_table=str(path))
    lat = res.metrics.latency
    table = LatencyTable.load(path)
    assert lat["predicted_ms"] == table.predict(vit_shape(res.model))
    assert 0.98 * 0.7 <= lat["predicted_fraction"] <= 0.7
    assert lat["measured_ms"] > 0 and lat["batch"] == 2
    assert "Latency budget on the table" in res.report.read_text()


def _staged():
    from vitprune.latency import StagedLatencyTable, StageGrid

    return StagedLatencyTable(
        (StageGrid((0, 1), (1, 2), (4, 8), 16, np.array([1.0, 2.0]), np.array([3.0, 5.0]), 0.5),
         StageGrid((2,), (1, 2, 3, 4), (8, 16), 4, np.array([1.0, 2, 3, 4]), np.array([2.0, 4.0]))),
        fixed_ms=1.0, scale=2.0, offset_ms=0.5,
        meta={"model": {"embed_dim": 8, "num_patches": 16, "num_prefix": 0, "heads": [2, 2, 4],
                        "head_dim": [4, 4, 4], "mlp_hidden": [8, 8, 16]}, "batch": 2})


def test_a_staged_table_sums_each_stages_own_grid_by_hand():
    """Swin's table: each block read in its stage's grid (heads, widths at the stage's tokens),
    interpolated, a dropped half at the stage's drop time, then calibrated."""
    t = _staged()
    heads = np.array([[2, 1, 4], [0, 2, 2]])
    neurons = np.array([[8, 6, 16], [8, 0, 12]])
    zero = np.zeros_like(heads)
    # image 0: (2 + 5) + (1 + 4) + (4 + 4) = 20;  image 1: (0.5 + 5) + (2 + 0.5) + (2 + 3) = 13
    parts = t.parts_counts(heads, neurons, zero, zero, zero.astype(bool))
    assert parts.tolist() == [20.0 + 1.0, 13.0 + 1.0]
    assert t.predict_counts(heads, neurons, zero, zero, zero).tolist() == [42.5, 28.5]
    again = LatencyTable.from_dict(t.to_dict())
    assert type(again) is type(t) and again.to_dict() == t.to_dict()
    assert t.cells == 2 + 2 + 4 + 2


def test_a_staged_table_refuses_another_model_and_damage():
    from vitprune.cost import BlockShape, VitShape

    t = _staged()

    def shape(mlp=(8, 8, 16), heads=(2, 2, 4)):
        return VitShape(embed_dim=8, num_patches=16, num_prefix=0, patch_macs=1, num_classes=2,
                        num_heads_out=1, blocks=tuple(BlockShape(h, 4, d)
                                                      for h, d in zip(heads, mlp)))

    t.check_model(shape())
    t.check_model(shape(mlp=(4, 8, 12), heads=(1, 2, 3)))  # a pruned model of it fits
    with pytest.raises(ConfigError, match="another model"):
        t.check_model(shape(mlp=(8, 8, 32)))
    d = t.to_dict()
    d["stages"][1]["blocks"] = [3]
    with pytest.raises(ConfigError, match="cover the blocks"):
        LatencyTable.from_dict(d)
    d = t.to_dict()
    d["stages"][0]["attn_ms"] = [1.0]
    with pytest.raises(ConfigError, match="attn_ms"):
        LatencyTable.from_dict(d)


def test_a_fractional_budget_is_of_the_measured_dense_time_for_the_tables_own_model():
    """The dense model measured whole at build time is the reference for the table's model;
    for another shape (a pruned model searched again), or without the record, the prediction."""
    import dataclasses

    from tests.helpers import synthetic_table
    from vitprune.search import Ratios, ratios_to_plan

    shape = vit_shape(build_model("fmnist_vit_tiny"))
    table = synthetic_table(shape)
    parts = table.parts(shape)
    with_record = dataclasses.replace(table, meta={**table.meta, "dense_ms_measured": 7.5,
                                                   "dense_ms_parts": parts})
    assert with_record.dense_ms(shape) == 7.5
    pruned = planned_shape(shape, ratios_to_plan(shape, Ratios.uniform(4, 0.5, 0.5),
                                                 token_blocks=()))
    assert with_record.dense_ms(pruned) == with_record.predict(pruned)
    bare = dataclasses.replace(table, meta={k: v for k, v in table.meta.items()
                                            if k != "dense_ms_measured"})
    assert bare.dense_ms(shape) == bare.predict(shape)


def _measured_here(tiny, tmp_path):
    """A synthetic table that says it was measured on this machine (a dense time measured)."""
    d = synthetic(vit_shape(tiny)).to_dict()
    d["meta"].update(device="cpu", dense_ms_measured=LatencyTable.from_dict(d).predict(
        vit_shape(tiny)))
    path = tmp_path / "here.json"
    path.write_text(json.dumps(d))
    return path, LatencyTable.from_dict(d)


def _loop_settings(path, rounds=3):
    from vitprune.config import SearchSettings

    return SearchSettings(method="random", trials=4, init=4, calib_images=16,
                          budget_metric="latency", latency_table=str(path), latency_rounds=rounds)


def test_a_latency_search_re_searches_until_the_measured_time_holds(tiny, tmp_path, monkeypatch):
    """The table under-predicts every plan by 20% (as searched plans were measured to be): the
    first plan misses 0.6 by 20%, the second is searched at 0.5 and measures 0.6."""
    from vitprune import pipeline
    from vitprune.data import load_splits

    path, table = _measured_here(tiny, tmp_path)
    shape = vit_shape(tiny)
    dense_ms = table.dense_ms(shape)
    calls = []

    def slow(tab, dense, plan, rounds=5):
        calls.append(plan)
        return 1.2 * tab.predict(planned_shape(shape, plan)) / dense_ms

    monkeypatch.setattr(pipeline, "measured_fraction", slow)
    splits = load_splits("synthetic", calib_size=32)
    res = pipeline.policy_search(tiny, splits, "0.6", tmp_path / "s",
                                 settings=_loop_settings(path), progress=False)
    record = json.loads((tmp_path / "s" / pipeline.LATENCY_ROUNDS).read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2] and record["chosen"] == 2
    assert record["held"] and record["rounds"][1]["budget"] == pytest.approx(
        0.6 / (record["rounds"][0]["measured_fraction"] / 0.6))
    got = table.predict(planned_shape(shape, res.best_plan)) / dense_ms
    assert 1.2 * got == pytest.approx(record["rounds"][1]["measured_fraction"])
    assert abs(1.2 * got / 0.6 - 1) <= pipeline.LATENCY_MISS
    assert PrunePlan.load(tmp_path / "s" / "best_plan.json") == res.best_plan  # the chosen one
    # a resume makes the same choice from the record, timing nothing again
    monkeypatch.setattr(pipeline, "measured_fraction", lambda *a, **k: pytest.fail("timed"))
    again = pipeline.policy_search(tiny, splits, "0.6", tmp_path / "s", resume=True,
                                   settings=_loop_settings(path), progress=False)
    assert again.best_plan == res.best_plan and len(calls) == 2


def test_a_latency_search_killed_in_a_later_round_resumes_that_round(tiny, tmp_path,
                                                                    monkeypatch):
    """Timing is noisy: timed again, round 1 would measure differently and ask round 2 another
    budget. A search stopped after round 2's trials (before its timing) resumes round 2 at the
    budget it had, from its trials, and times round 1 no more."""
    from vitprune import pipeline
    from vitprune.data import load_splits

    path, table = _measured_here(tiny, tmp_path)
    shape = vit_shape(tiny)
    calls = []

    class Killed(Exception):
        pass

    def noisy(tab, dense, plan, rounds=5):
        calls.append(plan)
        if len(calls) == 2:
            raise Killed  # the process dies while it times round 2's plan
        return (1.2 + 0.01 * len(calls)) * tab.predict(planned_shape(shape, plan)) / \
            table.dense_ms(shape)

    monkeypatch.setattr(pipeline, "measured_fraction", noisy)
    splits = load_splits("synthetic", calib_size=32)
    with pytest.raises(Killed):
        pipeline.policy_search(tiny, splits, "0.6", tmp_path / "s",
                               settings=_loop_settings(path), progress=False)
    record = json.loads((tmp_path / "s" / pipeline.LATENCY_ROUNDS).read_text())
    assert len(record["rounds"]) == 1 and record["chosen"] is None  # round 1, as it was timed
    round2 = (tmp_path / "s" / "round2" / "trials.jsonl").read_text()
    evaluated = []
    real_search = pipeline.search

    def counting(objective, *a, **k):
        def counted(plan, *x, **y):
            evaluated.append(plan)
            return objective(plan, *x, **y)
        return real_search(counted, *a, **k)

    monkeypatch.setattr(pipeline, "search", counting)
    res = pipeline.policy_search(tiny, splits, "0.6", tmp_path / "s", resume=True,
                                 settings=_loop_settings(path), progress=False)
    record = json.loads((tmp_path / "s" / pipeline.LATENCY_ROUNDS).read_text())
    assert len(calls) == 3 and calls[2] == res.best_plan  # only round 2's plan timed again
    assert [r["round"] for r in record["rounds"]] == [1, 2] and record["chosen"] == 2
    assert record["rounds"][0]["measured_fraction"] == pytest.approx(  # the first timing
        1.21 * record["rounds"][0]["predicted_fraction"])
    assert not evaluated  # both rounds' trials were read back, none evaluated again
    assert (tmp_path / "s" / "round2" / "trials.jsonl").read_text() == round2


def test_a_latency_search_searches_once_where_it_cannot_time_its_table(tiny, tmp_path,
                                                                        monkeypatch):
    """A table measured elsewhere (no dense time measured here), or one round asked: no loop."""
    from vitprune import pipeline
    from vitprune.data import load_splits

    monkeypatch.setattr(pipeline, "measured_fraction", lambda *a, **k: pytest.fail("timed"))
    splits = load_splits("synthetic", calib_size=32)
    fake = tmp_path / "synthetic.json"
    fake.write_text(json.dumps(synthetic(vit_shape(tiny)).to_dict()))
    here, _ = _measured_here(tiny, tmp_path)
    for name, path, rounds in (("a", fake, 3), ("b", here, 1)):
        pipeline.policy_search(tiny, splits, "0.6", tmp_path / name, progress=False,
                               settings=_loop_settings(path, rounds))
        assert not (tmp_path / name / pipeline.LATENCY_ROUNDS).exists()
    with pytest.raises(ConfigError, match="latency_rounds"):
        _loop_settings(here, 0)


def test_a_latency_search_times_its_plan_for_real_on_the_model_without_the_search_hooks(
        tiny, tmp_path, monkeypatch):
    """Not replaced by a stand-in: the loop prunes and times the chosen plan on the model the
    search masks, which must be timed (and pruned) without the search's hooks."""
    from vitprune import pipeline
    from vitprune.data import load_splits

    real, seen = pipeline.measured_fraction, []

    def check(table, dense, plan, rounds=5):
        seen.append(sum(len(m._forward_pre_hooks) + len(m._forward_hooks)
                        for m in dense.modules()))
        return real(table, dense, plan, rounds=1)

    monkeypatch.setattr(pipeline, "measured_fraction", check)
    path, _ = _measured_here(tiny, tmp_path)
    pipeline.policy_search(tiny, load_splits("synthetic", calib_size=32), "0.6",
                           tmp_path / "s", settings=_loop_settings(path, 2), progress=False)
    record = json.loads((tmp_path / "s" / pipeline.LATENCY_ROUNDS).read_text())
    assert seen and seen == [0] * len(seen)
    # a real measurement was recorded (its value is this machine's, so only its kind is checked)
    assert all(math.isfinite(r["measured_fraction"]) and r["measured_fraction"] > 0
               for r in record["rounds"])
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in tiny.modules())
