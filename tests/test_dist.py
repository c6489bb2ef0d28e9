"""Two processes under torchrun (gloo, CPU) reproduce a single process's results."""

import json
import os
import subprocess
import sys

import pytest

from vitprune.cli import main


def _torchrun(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "vitprune", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    """A saved dense model: every rank must load the same weights."""
    out = tmp_path_factory.mktemp("dense")
    assert main(["train", "--model", "fmnist_vit_tiny", "--data", "synthetic", "--epochs", "1",
                 "--max-steps-per-epoch", "10", "--threads", "1", "--quiet", "--out", str(out)]) == 0
    return out


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_process_search_matches_one_process(tmp_path, dense_dir):
    args = ["search", "--model", str(dense_dir), "--data", "synthetic", "--budget", "0.6",
            "--trials", "5", "--init", "3", "--calib-images", "100", "--criterion", "magnitude",
            "--threads", "1", "--quiet", "--json"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    _torchrun(args + ["--out", str(tmp_path / "two")], tmp_path)
    one, two = _lines(tmp_path / "one" / "trials.jsonl"), _lines(tmp_path / "two" / "trials.jsonl")
    assert len(one) == len(two) == 5
    assert [t["ratios"] for t in one] == [t["ratios"] for t in two]
    # accuracy on 100 images, counted 50 per rank and summed: exactly equal
    assert [t["value"] for t in one] == [t["value"] for t in two]
    assert len({t["value"] for t in one}) > 1  # the plans really differ in accuracy


def test_two_process_finetune_matches_one_process(tmp_path, dense_dir):
    assert main(["compress", "--model", str(dense_dir), "--data", "synthetic", "--budget", "0.6",
                 "--trials", "3", "--init", "2", "--calib-images", "64", "--epochs", "1",
                 "--max-steps-per-epoch", "1", "--threads", "1", "--quiet",
                 "--out", str(tmp_path / "c")]) == 0
    plan_dir = tmp_path / "pruned"
    assert main(["prune", "--model", str(dense_dir), "--plan",
                 str(tmp_path / "c" / "search" / "best_plan.json"), "--out", str(plan_dir)]) == 0
    args = ["finetune", "--student", str(plan_dir), "--teacher", str(dense_dir), "--data",
            "synthetic", "--epochs", "2", "--max-steps-per-epoch", "3", "--batch-size", "32",
            "--lr", "2e-3", "--no-augment", "--threads", "1", "--quiet", "--json"]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    _torchrun(args + ["--out", str(tmp_path / "two")], tmp_path)
    one, two = _lines(tmp_path / "one" / "train_log.jsonl"), _lines(tmp_path / "two" / "train_log.jsonl")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["calib_top1"] == pytest.approx(a["calib_top1"], abs=1e-9)
    assert one[1]["train_loss"] != one[0]["train_loss"]  # it trained
