"""The end-to-end compress job: stages, resume, refusal of foreign directories, report."""

import json

import pytest
import torch

import vitprune
from vitprune.adapters import vit_shape
from vitprune.cli import main
from vitprune.cost import macs
from vitprune.errors import BudgetError, OutputError

QUICK = dict(trials=4, init=2, calib_images=64, score_images=64, epochs=2, max_steps_per_epoch=3,
             progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, ):
    from vitprune.data import load_splits

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run") / "c"
    return vitprune.compress("fmnist_vit_tiny", load_splits("synthetic", calib_size=64), 0.6, out,
                             **QUICK)


def test_compress_runs_end_to_end_and_the_model_reloads(run):
    assert {p.name for p in run.out.iterdir()} >= {
        "run.json", "scores.json", "search", "plan.json", "finetune", "model", "eval.json",
        "report.md", "plan.png", "finetune.png"}
    model = vitprune.load(run.model_dir)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), run.model(x))
    rows = run.metrics.rows
    kept = rows["finetuned"].macs / rows["dense"].macs
    assert kept == run.metrics.macs_kept
    assert 0.588 <= kept <= 0.6  # inside the default 2% band below the budget
    assert rows["finetuned"].macs == macs(vit_shape(model)).total  # the real, smaller model
    assert rows["finetuned"].params < rows["dense"].params
    assert sum(p.numel() for p in model.parameters()) == rows["finetuned"].params
    report = (run.out / "report.md").read_text()
    assert f"{rows['finetuned'].test_top1:.2f}" in report and "| 3 |" in report
    hist = run.metrics.finetune_history
    assert [h.epoch for h in hist] == [1, 2]
    # the record is what eval.json holds, field for field
    from vitprune.records import Evaluation

    on_disk = json.loads((run.out / "eval.json").read_text())
    assert Evaluation.from_dict(on_disk) == run.metrics and run.metrics.to_dict() == on_disk
    assert rows["dense"].timed("cpu", 1)["latency_ms"] > 0 and rows["pruned"].speed == {}
    record = json.loads((run.out / "run.json").read_text())
    assert record["kind"] == "compress"
    assert record["done"] == ["scores", "search", "finetune", "evaluate", "report"]
    assert record["settings"]["epochs"] == 2 and record["settings"]["trials"] == 4


def test_a_run_is_read_back_through_its_records(run, tmp_path):
    """read_run gives what the run returned, typed, without claiming the directory; an
    unfinished run reads with its later stages None, and a damaged finished stage is named."""
    import shutil

    from vitprune.compression import read_run
    from vitprune.rundir import read_state

    got = read_run(run.out)
    assert got.finished and got.metrics == run.metrics and got.plan == run.plan
    assert got.report == run.report and got.state.kind == "compress"
    assert len(got.trials) == 4 and got.search.n_evaluations == 4
    assert got.search.best == max(got.trials, key=lambda t: t.value)
    assert got.scores_meta["criterion"] == "hsic"
    part = tmp_path / "part"
    shutil.copytree(run.out, part)
    record = json.loads((part / "run.json").read_text())
    (part / "run.json").write_text(json.dumps({**record, "done": ["scores", "search"]}))
    half = read_run(part)
    assert not half.finished and half.metrics is None and half.plan == run.plan
    (part / "plan.json").write_text("{")
    with pytest.raises(OutputError, match="finished stage 'search'.*damaged"):
        read_run(part)
    assert read_state(tmp_path / "nothing") is None
    with pytest.raises(OutputError, match="not a compress run"):
        read_run(tmp_path / "nothing")


def test_rerun_resumes_at_the_first_unfinished_stage(run):
    from vitprune.data import load_splits

    weights = (run.model_dir / "model.safetensors").read_bytes()
    record = json.loads((run.out / "run.json").read_text())
    (run.out / "run.json").write_text(json.dumps({**record, "done": record["done"][:3]}))
    (run.out / "eval.json").write_text("{}")  # what the unfinished stage left is rewritten
    stamp = (run.out / "search" / "trials.jsonl").stat().st_mtime_ns
    again = vitprune.compress("fmnist_vit_tiny", load_splits("synthetic", calib_size=64), 0.6,
                              run.out, **QUICK)
    assert (run.out / "search" / "trials.jsonl").stat().st_mtime_ns == stamp  # no new search
    assert (run.model_dir / "model.safetensors").read_bytes() == weights  # no new fine-tuning
    assert again.metrics.rows["finetuned"].test_top1 == run.metrics.rows["finetuned"].test_top1
    assert json.loads((run.out / "eval.json").read_text())["rows"]
    assert json.loads((run.out / "run.json").read_text())["done"] == record["done"]


def test_out_dir_of_another_run_or_other_files_is_refused_untouched(run, tmp_path):
    from vitprune.data import load_splits

    splits = load_splits("synthetic", calib_size=64)
    before = (run.out / "run.json").read_text()
    with pytest.raises(OutputError, match="another compress run.*epochs"):
        vitprune.compress("fmnist_vit_tiny", splits, 0.6, run.out, **{**QUICK, "epochs": 3})
    assert (run.out / "run.json").read_text() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        vitprune.compress("fmnist_vit_tiny", splits, 0.6, other, **QUICK)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def test_unreachable_budget_is_refused_before_anything_is_written(tmp_path, capsys):
    from vitprune.data import load_splits

    with pytest.raises(BudgetError, match="below the smallest"):
        vitprune.compress("fmnist_vit_tiny", load_splits("synthetic"), 0.05, tmp_path / "x", **QUICK)
    assert not (tmp_path / "x").exists()
    assert main(["compress", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--budget", "1.5",
                 "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "dense" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_finetune_command_refuses_an_incompatible_teacher(run, tmp_path, capsys):
    from vitprune.models import ArchSpec, build_model

    spec = ArchSpec("fmnist_vit_tiny", {"num_classes": 7})
    vitprune.save(tmp_path / "seven", build_model(spec), spec)
    rc = main(["finetune", "--student", str(run.model_dir), "--teacher", str(tmp_path / "seven"),
               "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "ft"), "--quiet"])
    assert rc == 2
    assert "incompatible" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_a_run_made_before_a_setting_existed_still_resumes(tmp_path):
    """A setting added later is at its default in an older run's record, not a difference."""
    from vitprune.config import CompressConfig
    from vitprune.rundir import RunDir

    flat = CompressConfig().flat()
    older = {k: v for k, v in flat.items() if k != "dims"}
    RunDir.claim(tmp_path, "compress", older).release()
    RunDir.claim(tmp_path, "compress", flat, defaults=flat).release()  # accepted
    with pytest.raises(OutputError, match="differs in: dims"):
        RunDir.claim(tmp_path, "compress", {**flat, "dims": ["heads"]}, defaults=flat)


def test_a_compress_run_of_the_previous_layout_resumes(run, tmp_path):
    """Runs made before run.json (compress.json, the plan in search/) continue where they were."""
    import shutil

    from vitprune.data import load_splits

    old = tmp_path / "old"
    shutil.copytree(run.out, old)
    record = json.loads((old / "run.json").read_text())
    (old / "run.json").unlink()
    (old / "plan.json").unlink()
    config = {k: v for k, v in record["settings"].items() if k not in ("model", "data")}
    (old / "compress.json").write_text(json.dumps({
        "format": "vitprune.compress", "version": 1, "model": record["settings"]["model"],
        "data": record["settings"]["data"], "config": config}))
    (old / "eval.json").unlink()  # that layout's way to say "evaluate again"
    weights = (old / "model" / "model.safetensors").read_bytes()
    again = vitprune.compress("fmnist_vit_tiny", load_splits("synthetic", calib_size=64), 0.6,
                              old, **QUICK)
    assert (old / "model" / "model.safetensors").read_bytes() == weights
    assert again.plan == run.plan
    assert json.loads((old / "run.json").read_text())["done"][-2:] == ["evaluate", "report"]


def test_a_budget_beside_a_config_that_says_otherwise_is_refused_before_any_work(tmp_path):
    from vitprune.config import CompressConfig
    from vitprune.errors import ConfigError

    cfg = CompressConfig.from_flat(budget="0.6")
    with pytest.raises(ConfigError, match="budget 0.4 contradicts config's budget '0.6'"):
        vitprune.compress("fmnist_vit_tiny", "synthetic", 0.4, tmp_path / "c", config=cfg)
    with pytest.raises(ConfigError, match="trials was given beside config="):
        vitprune.compress("fmnist_vit_tiny", "synthetic", out=tmp_path / "c", config=cfg, trials=3)
    assert not (tmp_path / "c").exists()
