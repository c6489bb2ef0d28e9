"""Every command owns its output: nothing overwritten, one writer at a time, settings checked
before any work, user mistakes exit 2 with one line in the command line's words."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import vitprune
from vitprune.cli import main
from vitprune.errors import OutputError
from vitprune.models import ArchSpec, build_model
from vitprune.rundir import RunDir

QUICK_TRAIN = ["--data", "synthetic", "--epochs", "1", "--batch-size", "64", "--quiet",
               "--max-steps-per-epoch", "2", "--threads", "1"]
QUICK_COMPRESS = ["--data", "synthetic", "--trials", "3", "--init", "2", "--calib-images", "32",
                  "--score-images", "32", "--epochs", "1", "--max-steps-per-epoch", "1",
                  "--threads", "1", "--quiet"]


def _snapshot(d):
    return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitprune: error: ") and "\n" not in err, err
    return err


@pytest.fixture()
def saved_model(tmp_path):
    spec = ArchSpec("fmnist_vit_tiny")
    return vitprune.save(tmp_path / "saved", build_model(spec), spec)


def test_train_refuses_a_saved_model_directory_and_its_own_input(saved_model, capsys):
    before = _snapshot(saved_model)
    assert main(["train", "--model", "fmnist_vit_tiny", "--out", str(saved_model),
                 *QUICK_TRAIN]) == 2
    assert "not made by a vitprune train run" in _one_line_error(capsys)
    assert main(["train", "--model", str(saved_model), "--out", str(saved_model),
                 *QUICK_TRAIN]) == 2
    assert "is the input" in _one_line_error(capsys)
    assert main(["train", "--model", str(saved_model), "--out", str(saved_model / "sub"),
                 *QUICK_TRAIN]) == 2
    assert "lies inside the input" in _one_line_error(capsys)
    assert _snapshot(saved_model) == before


def test_finetune_refuses_to_write_over_its_student(saved_model, capsys):
    before = _snapshot(saved_model)
    assert main(["finetune", "--student", str(saved_model), "--teacher", str(saved_model),
                 "--out", str(saved_model), *QUICK_TRAIN]) == 2
    assert "is the input" in _one_line_error(capsys)
    assert _snapshot(saved_model) == before


def test_score_never_writes_over_a_file(tmp_path, capsys):
    target = tmp_path / "notes.json"
    target.write_text("mine")
    assert main(["score", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--out",
                 str(target), "--score-images", "16"]) == 2
    assert "never writes over a file" in _one_line_error(capsys)
    assert target.read_text() == "mine"


def test_search_refuses_a_directory_of_the_users(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "plan.json").write_text("{}")
    assert main(["search", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--budget", "0.6",
                 "--trials", "3", "--init", "2", "--calib-images", "16", "--score-images", "16",
                 "--out", str(mine), "--quiet"]) == 2
    assert "not made by a vitprune search run" in _one_line_error(capsys)
    assert [p.name for p in mine.iterdir()] == ["plan.json"]


def test_a_run_of_another_command_is_refused(tmp_path, capsys):
    RunDir.claim(tmp_path / "r", "search", {"x": 1}).release()
    assert main(["train", "--model", "fmnist_vit_tiny", "--out", str(tmp_path / "r"),
                 *QUICK_TRAIN]) == 2
    assert "holds a vitprune search run, not a train run" in _one_line_error(capsys)


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path):
    out = tmp_path / "run"
    first = RunDir.claim(out, "compress", {"a": 1})
    with pytest.raises(OutputError, match="another vitprune process is writing"):
        RunDir.claim(out, "compress", {"a": 1})
    first.release()
    RunDir.claim(out, "compress", {"a": 1}).release()  # free again once released


def test_the_lock_dies_with_a_killed_process(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from vitprune.rundir import RunDir
        run = RunDir.claim({str(out)!r}, "train", {{"a": 1}})
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="another vitprune process"):
            RunDir.claim(out, "train", {"a": 1})
    finally:
        holder.kill()  # as kill -9: no clean-up code runs
        holder.wait()
    RunDir.claim(out, "train", {"a": 1}, resume=True).release()


def test_two_compress_processes_on_one_directory_do_not_both_run(tmp_path):
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "vitprune", "compress", "--model", "fmnist_vit_tiny",
           "--budget", "0.6", "--out", str(out), *QUICK_COMPRESS]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    if codes == [0, 0]:  # the second started after the first had finished: it found it done
        pass
    else:
        assert codes == [0, 2], results
        loser = next(r for r in results if r[2] == 2)
        assert "another vitprune process is writing" in loser[1]
    trials = (out / "search" / "trials.jsonl").read_text().splitlines()
    assert [json.loads(t)["trial"] for t in trials] == [0, 1, 2]


@pytest.mark.parametrize("bad, message", [
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--trials", "0"], "--trials must be an integer >= 1, got 0"),
    (["--trials", "-3"], "--trials must be an integer >= 1, got -3"),
    (["--max-ratio", "1.5"], "--max-ratio must be in (0, 1)"),
    (["--budget", "abc"], "--budget must be a fraction of the dense cost"),
    (["--budget", "1.5"], "--budget must be a fraction of the dense cost"),
    (["--init", "1"], "--init must be at least 2"),
    (["--kd-alpha", "0"], "--kd-alpha must be > 0"),
])
def test_compress_settings_are_checked_before_any_work(tmp_path, capsys, bad, message):
    out = tmp_path / "c"
    args = ["compress", "--model", "fmnist_vit_tiny", "--budget", "0.6", "--out", str(out),
            *QUICK_COMPRESS, *bad]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert message in err
    assert "resume=True" not in err and "head_bounds" not in err and "n_trials" not in err
    assert not out.exists()


def test_a_percent_budget_is_a_fraction():
    from vitprune.config import parse_budget

    b = parse_budget("60%")
    assert (b.value, b.unit) == (0.6, "fraction")


@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny"])
def test_a_timm_model_that_is_not_a_vit_exits_2(tmp_path, capsys, name):
    assert main(["compress", "--model", name, "--out", str(tmp_path / "c"), *QUICK_COMPRESS]) == 2
    assert "module, which no vitprune family prunes" in _one_line_error(capsys)
    assert not (tmp_path / "c").exists()


def test_an_out_under_a_file_or_on_a_full_disk_exits_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("x")
    assert main(["compress", "--model", "fmnist_vit_tiny", "--out", str(tmp_path / "f" / "c"),
                 *QUICK_COMPRESS]) == 2
    assert "cannot" in _one_line_error(capsys)
    import errno
    import os

    real = os.replace

    def full(src, dst):
        if str(dst).endswith("run.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert main(["compress", "--model", "fmnist_vit_tiny", "--out", str(tmp_path / "c"),
                 *QUICK_COMPRESS]) == 2
    assert "the disk is full" in _one_line_error(capsys)


def test_resume_is_named_as_the_option(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["train", "--model", "fmnist_vit_tiny", "--out", str(out), *QUICK_TRAIN]) == 0
    before = _snapshot(out)
    assert main(["train", "--model", "fmnist_vit_tiny", "--out", str(out), *QUICK_TRAIN]) == 2
    assert "continue it with --resume" in _one_line_error(capsys)
    assert _snapshot(out) == before


def test_scores_of_the_right_depth_but_wrong_widths_are_refused(tmp_path, capsys):
    import torch

    from vitprune.scoring import BlockScores, save_scores

    wrong = [BlockScores(torch.rand(3), torch.rand(64)) for _ in range(4)]  # the model has 4 heads
    save_scores(tmp_path / "s.json", wrong)
    assert main(["search", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--budget", "0.6",
                 "--scores", str(tmp_path / "s.json"), "--trials", "3", "--init", "2",
                 "--calib-images", "16", "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = _one_line_error(capsys)
    assert "block 0: scores for 3 heads" in err and "internal error" not in err


def test_help_shows_defaults_and_every_option_has_help(capsys):
    from vitprune.cli import build_parser

    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        missing = [a.option_strings[0] for a in sub._actions if a.help is None]
        assert not missing, f"{name}: options without help: {missing}"
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = capsys.readouterr().out
    assert "(default: 50)" in text and "(default: 0.9)" in text and "No logic" not in text
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"vitprune {vitprune.__version__}"


def test_a_default_changed_in_the_config_changes_the_cli(monkeypatch):
    import dataclasses

    from vitprune import cli, config

    @dataclasses.dataclass(frozen=True)
    class Changed(config.SearchSettings):
        trials: int = dataclasses.field(default=77, metadata={"help": "evaluations"})

    args = cli.build_parser().parse_args(["compress", "--model", "m", "--out", "o"])
    assert args.trials == config.SearchSettings().trials == 50
    monkeypatch.setattr(cli, "SearchSettings", Changed)
    args = cli.build_parser().parse_args(["compress", "--model", "m", "--out", "o"])
    assert args.trials == 77


def test_cli_defaults_are_the_configs():
    from vitprune import cli
    from vitprune.config import CompressConfig

    args = cli.build_parser().parse_args(["compress", "--model", "m", "--out", "o"])
    settings = {k: v for k, v in vars(args).items() if k in CompressConfig.names()}
    assert CompressConfig.from_flat(**settings) == CompressConfig()


# output files of the commands' run directories and model directories
OUTPUT_NAMES = ("run.json", "scores.json", "plan.json", "eval.json", "report.md", "trials.jsonl",
                "best_plan.json", "search.json", "checkpoint.pt", "train_log.jsonl", "model.json",
                "model.safetensors")
# names the benchmarks read runs by (their own input files, e.g. a plan they write, may reuse one)
READ_BY_NAME = ("run.json", "eval.json", "report.md", "trials.jsonl", "best_plan.json",
                "search.json", "checkpoint.pt", "train_log.jsonl", "model.json")


def _string_constants(path) -> list[str]:
    import ast

    return [n.value for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_each_output_file_name_is_written_once_and_benchmarks_use_the_constants():
    from collections import Counter
    from pathlib import Path

    import vitprune

    pkg = Path(vitprune.__file__).parent
    found = Counter(s for p in pkg.rglob("*.py") for s in _string_constants(p)
                    if s in OUTPUT_NAMES)
    # the Hugging Face family lists its own layout's weight files beside vitprune's
    found["model.safetensors"] -= 1
    assert {n: found[n] for n in OUTPUT_NAMES if found[n] != 1} == {}
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    by_name = {p.name: s for p in bench.glob("*.py") for s in _string_constants(p)
               if s in READ_BY_NAME}
    assert by_name == {}


def test_read_state_reads_the_manifest_without_taking_the_lock(tmp_path):
    from vitprune.rundir import read_state

    assert read_state(tmp_path / "new") is None
    with RunDir.claim(tmp_path / "r", "train", {"epochs": 2}) as run:
        run.mark_done("fit")
        state = read_state(tmp_path / "r")  # while the writer holds the lock
        assert (state.kind, state.settings, state.done) == ("train", {"epochs": 2}, ("fit",))
    (tmp_path / "r" / "run.json").write_text("{")
    with pytest.raises(OutputError):
        read_state(tmp_path / "r")


def test_a_run_recorded_before_a_nested_setting_existed_resumes_at_its_default(tmp_path):
    """A training run's config is a nested object: a field added since the run began counts
    at its default there, key by key; any other difference still refuses."""
    old = {"model": "m", "config": {"epochs": 3}}
    RunDir.claim(tmp_path, "train", old).release()
    new = {"model": "m", "config": {"epochs": 3, "kd_loss": "kl"}}
    defaults = {"config": {"epochs": 8, "kd_loss": "kl"}}
    RunDir.claim(tmp_path, "train", new, resume=True, defaults=defaults).release()
    with pytest.raises(OutputError, match="differs in: config"):
        RunDir.claim(tmp_path, "train", {"model": "m", "config": {"epochs": 3,
                                                                  "kd_loss": "cosine"}},
                     resume=True, defaults=defaults)
