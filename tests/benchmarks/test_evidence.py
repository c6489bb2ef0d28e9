"""The evidence study's phases run end to end (smoke: a tiny model, synthetic data, a table
whose times follow the work), and its page is generated from what the cells hold."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import evidence  # noqa: E402


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    runs = tmp_path_factory.mktemp("evidence")
    base = ["--runs", str(runs)]
    assert evidence.main(["plans", *base, "--smoke", "--models", "d12", "--seeds", "0",
                          "--targets", "0.6", "--trials", "3", "--init", "2",
                          "--calib-images", "32", "--max-steps", "1"]) == 0
    for phase in ("time", "finetune"):  # speed is the plan's: timed before fine-tuning
        assert evidence.main([phase, *base]) == 0
    assert evidence.main(["report", *base, "--out", str(runs / "evidence")]) == 0
    return runs


def test_every_method_has_a_cell_and_the_matched_ones_record_their_target(study):
    cells = study / "d12" / "t0.6"
    methods = {p.name for p in cells.iterdir()}
    assert methods == {evidence.slug(m.name) for m in evidence.METHODS if m.kind != "dense"}
    for m in evidence.METHODS:
        if m.kind in ("tp", "tome"):
            info = json.loads((cells / evidence.slug(m.name) / "s0" / "plan_info.json").read_text())
            assert info["target_speedup_b64"] > 0  # matched to vitprune's measured speed-up
            assert "matched_speedup" in info or "unreachable" in info
    tp = json.loads((cells / "torch_pruning__best_configuration" / "s0" /
                     "plan_info.json").read_text())
    assert "unreachable" in tp or {c["mode"] for c in tp["tried"]} == {"local", "global"}
    assert (study / "d12" / "dense" / "dense_reference" / "s0" / "test_pred.npy").exists()
    # timed before fine-tuning: every reachable cell has its speed (fine-tuned ToMe included)
    for m in evidence.METHODS:
        cell = (study / "d12" / "dense" if m.kind == "dense" else cells) / evidence.slug(m.name)
        result = json.loads((cell / "s0" / "result.json").read_text())
        assert ("unreachable" in result) != (cell / "s0" / "speed.json").exists(), m.name
    # a model, target and seed's cells are timed in one pass, the dense reference among them
    speeds = [json.loads(p.read_text()) for p in (*cells.glob("*/s0/speed.json"),
                                                  *(study / "d12" / "dense").glob("*/s0/speed.json"))]
    assert len(speeds) > 2 and {s["timed_with"] for s in speeds} == {len(speeds)}
    # the anchored search runs at the fraction of the dense time vitprune's plan measured
    vp = json.loads((cells / "vitprune" / "s0" / "plan_info.json").read_text())
    assert vp["speedup_b64_at_plan"] > 1  # the smoke counts FLOPs (deterministic), never times
    an = json.loads((cells / evidence.slug(evidence.ANCHORED) / "s0" / "plan_info.json")
                    .read_text())
    assert an["budget_fraction"] == pytest.approx(min(1.0, 1 / vp["speedup_b64_at_plan"]))
    trials = (cells / evidence.slug(evidence.ANCHORED) / "s0" / "search" / "trials.jsonl")
    assert json.loads(trials.read_text().splitlines()[0])["source"] == "anchor"
    # the distilled choice's plan is the candidate that recovered best in its short distillation
    d = cells / evidence.slug(evidence.DISTILLED) / "s0"
    choice = json.loads((d / "search" / "choice.json").read_text())
    pick = max(choice["candidates"], key=lambda c: c["distilled_top1"])
    assert choice["chosen"] == pick["trial"] and choice["steps"] == 2
    assert json.loads((d / "search" / "search.json").read_text())["best"]["trial"] == pick["trial"]
    # the row "vitprune" stays the plain search now that anchors are the default
    plain = cells / "vitprune" / "s0" / "search" / "trials.jsonl"
    assert json.loads(plain.read_text().splitlines()[0])["source"] == "init"


def test_the_page_holds_each_row_and_its_intervals(study):
    record = json.loads((study / "evidence.json").read_text())
    rows = record["models"]["d12"]["0.6"]
    assert {"vitprune", "dense reference", "tokens only"} <= set(rows)
    vp = rows["vitprune"]
    assert vp["vs_dense"]["low"] <= vp["vs_dense"]["diff"] <= vp["vs_dense"]["high"]
    assert "vs_vitprune" not in vp and "vs_dense" not in rows["dense reference"]
    assert rows["tokens only"]["vs_vitprune"]["images"] == record["test_images"]
    assert "vs_anchored" in rows["tokens only"] and "vs_anchored" not in rows[evidence.ANCHORED]
    page = (study / "evidence.md").read_text()
    assert "## d12, 60% of the dense time" in page and "<!-- reading -->" in page
    # the page is its JSON regenerated (what the docs test holds every generated page to)
    assert page == evidence.pages.render(study / "evidence.md", evidence.page(record),
                                         after="## Reading")


def test_the_committed_dense_rows_intervals_are_their_own_targets():
    """The dense reference is one row shared by every target of a model; its interval against
    each of vitprune's rows is the negative of that row's against it, target by target."""
    record = json.loads((Path(evidence.ROOT) / "docs" / "evidence.json").read_text())
    checked = 0
    for targets in record["models"].values():
        for rows in targets.values():
            dense = rows["dense reference"]
            for me in evidence.OURS:
                if (iv := rows.get(me, {}).get("vs_dense")):
                    assert dense[evidence._vs(me)]["diff"] == pytest.approx(-iv["diff"], abs=0.011)
                    checked += 1
    assert checked >= 5


def test_the_group_taylor_row_keeps_group_taylors_best_units(study):
    import torch

    from vitprune.data import load_splits
    from vitprune.pipeline import load_dense, scored
    from vitprune.plan import PrunePlan
    from vitprune.scoring import rankings

    cell = study / "d12" / "t0.6" / evidence.slug(evidence.GROUP) / "s0"
    assert json.loads((cell / "plan_info.json").read_text())["criterion"] == "group-taylor"
    plan = PrunePlan.load(cell / "plan.json")
    splits = load_splits("synthetic", calib_size=64)  # the smoke's data and model
    torch.manual_seed(0)
    dense = load_dense("fmnist_vit_tiny", splits, device="cpu", verb="benchmark")[0].eval()
    ranks = rankings(scored(dense, splits, "group-taylor", n_images=32)[0])
    hsic = rankings(scored(dense, splits, "hsic", n_images=32)[0])
    for b, (heads, neurons) in zip(plan.blocks, ranks):
        assert set(b.heads) == set(heads[:len(b.heads)])
        assert set(b.neurons) == set(neurons[:len(b.neurons)])
    # and that is not what HSIC would have kept at these widths
    assert any(set(b.neurons) != set(n[:len(b.neurons)]) for b, (_, n) in zip(plan.blocks, hsic))


def test_a_cpu_study_records_no_device_and_its_phases_refuse_another(study, monkeypatch):
    """The device is a setting of the study: a CPU study's settings are what they were before
    the setting existed (the committed study resumes), and a later phase asked for another
    device refuses before it loads anything, naming the study's."""
    settings = json.loads((study / "study.json").read_text())
    assert "device" not in settings
    monkeypatch.setattr(evidence.devices, "resolve",  # as on a machine with a GPU
                        lambda spec: "cuda:0" if str(spec).startswith("cuda") else "cpu")
    with pytest.raises(SystemExit, match="planned on cpu"):
        evidence.main(["finetune", "--runs", str(study), "--device", "cuda"])
    assert json.loads((study / "study.json").read_text()) == settings


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path):
    runs = tmp_path / "study"
    with pytest.raises(SystemExit, match="CUDA is not available here"):
        evidence.main(["plans", "--runs", str(runs), "--smoke", "--device", "cuda"])
    assert not (runs / "study.json").exists()


def test_a_study_beside_the_main_one_says_so_in_its_title_and_names_its_json(study):
    record = json.loads((study / "evidence.json").read_text())
    main = evidence.page(record)
    assert main.startswith("# Evidence: vitprune against its peers at equal measured speed\n")
    assert "from `docs/evidence.json`" in main
    assert evidence.main(["report", "--runs", str(study), "--out", str(study / "ev_long"),
                          "--variant", "600 fine-tuning steps"]) == 0
    page = (study / "ev_long.md").read_text()
    assert page.startswith("# Evidence: vitprune against its peers at equal measured speed "
                           "(600 fine-tuning steps)\n")
    assert "from `docs/ev_long.json`" in page
    # the rest of the page is the same study's
    assert page.split("\n", 3)[3].startswith(main.split("\n", 3)[3][:200])


def test_a_study_with_feature_distillation_fine_tunes_every_cell_with_it(study, tmp_path,
                                                                        monkeypatch):
    assert "kd_features" not in json.loads((study / "study.json").read_text())  # the main study
    runs = tmp_path / "kdf"
    base = ["--runs", str(runs)]
    assert evidence.main(["plans", *base, "--smoke", "--models", "d12", "--seeds", "0",
                          "--targets", "0.6", "--max-steps", "1", "--rows", "dense_reference",
                          "--kd-features", "0.5"]) == 0
    assert json.loads((runs / "study.json").read_text())["kd_features"] == 0.5
    seen = []
    real = evidence.finetune
    monkeypatch.setattr(evidence, "finetune",
                        lambda *a, **k: seen.append(a[3].kd_features) or real(*a, **k))
    assert evidence.main(["finetune", *base]) == 0
    assert seen == [0.5]
    assert "a feature term of weight 0.5" in evidence.page(
        {"settings": json.loads((runs / "study.json").read_text()), "test_images": 1,
         "models": {}})


def test_a_row_whose_seeds_did_not_all_finish_says_which_did():
    one = {"mean": 88.0, "min": 88.0, "max": 88.0, "n": 1}
    row = {"macs_kept": {**one, "mean": 0.6}, "test_top1_before": one, "test_top1": one}
    record = {"settings": {"epochs": 1, "max_steps": 300, "seeds": [0, 1, 2]},
              "test_images": 10, "models": {"t197": {"0.6": {
                  evidence.ANCHORED: {**row, "seeds": [0, 1]},
                  "dense reference": {**row, "seeds": [0, 1, 2]},
                  "ToMe, training-free": {**row, "seeds": [0]}}}}}
    page = evidence.page(record)
    assert f"| {evidence.ANCHORED} (seeds 0, 1) |" in page
    assert "| dense reference |" in page and "| ToMe, training-free |" in page
