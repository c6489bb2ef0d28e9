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
        "compress.json", "scores.json", "search", "pruned", "finetune", "model", "eval.json",
        "report.md", "plan.png", "finetune.png"}
    model = vitprune.load(run.model_dir)
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), run.model(x))
    rows = run.metrics["rows"]
    kept = rows["finetuned"]["macs"] / rows["dense"]["macs"]
    assert 0.588 <= kept <= 0.6  # inside the default 2% band below the budget
    assert rows["finetuned"]["macs"] == macs(vit_shape(model)).total  # the real, smaller model
    assert rows["finetuned"]["params"] < rows["dense"]["params"]
    assert sum(p.numel() for p in model.parameters()) == rows["finetuned"]["params"]
    report = (run.out / "report.md").read_text()
    assert f"{rows['finetuned']['test_top1']:.2f}" in report and "| 3 |" in report
    hist = run.metrics["finetune_history"]
    assert [h["epoch"] for h in hist] == [1, 2]


def test_rerun_resumes_at_the_first_unfinished_stage(run):
    from vitprune.data import load_splits

    weights = (run.model_dir / "model.safetensors").read_bytes()
    (run.out / "eval.json").unlink()
    stamp = (run.out / "search" / "trials.jsonl").stat().st_mtime_ns
    again = vitprune.compress("fmnist_vit_tiny", load_splits("synthetic", calib_size=64), 0.6,
                              run.out, **QUICK)
    assert (run.out / "search" / "trials.jsonl").stat().st_mtime_ns == stamp  # no new search
    assert (run.model_dir / "model.safetensors").read_bytes() == weights  # no new fine-tuning
    assert again.metrics["rows"]["finetuned"]["test_top1"] == run.metrics["rows"]["finetuned"]["test_top1"]


def test_out_dir_of_another_run_or_other_files_is_refused_untouched(run, tmp_path):
    from vitprune.data import load_splits

    splits = load_splits("synthetic", calib_size=64)
    before = (run.out / "compress.json").read_text()
    with pytest.raises(OutputError, match="another compression run.*config.epochs"):
        vitprune.compress("fmnist_vit_tiny", splits, 0.6, run.out, **{**QUICK, "epochs": 3})
    assert (run.out / "compress.json").read_text() == before
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
    rc = main(["finetune", "--student", str(run.out / "pruned"), "--teacher", str(tmp_path / "seven"),
               "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "ft"), "--quiet"])
    assert rc == 2
    assert "incompatible" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()
    assert json.loads((run.out / "compress.json").read_text())["config"]["epochs"] == 2


def test_a_run_made_before_a_setting_existed_still_resumes(tmp_path):
    """A setting added later is at its default in an older run's manifest, not a difference."""
    import dataclasses
    import json

    from vitprune.compression import MANIFEST, CompressConfig, _claim
    from vitprune.errors import OutputError

    config = json.loads(json.dumps(dataclasses.asdict(CompressConfig())))
    manifest = {"format": "vitprune.compress", "version": 1, "model": "m", "data": "d",
                "config": config}
    older = {**manifest, "config": {k: v for k, v in config.items() if k != "dims"}}
    (tmp_path / MANIFEST).write_text(json.dumps(older))
    _claim(tmp_path, manifest, {})  # accepted
    changed = {**manifest, "config": {**config, "dims": ["heads"]}}
    with pytest.raises(OutputError, match="config.dims"):
        _claim(tmp_path, changed, {})
