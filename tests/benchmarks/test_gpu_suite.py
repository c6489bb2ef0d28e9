"""The GPU suite's smoke run: every part on the CPU with a tiny model, so the script a GPU
machine runs as it is cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUITE), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_suite")
    proc = _run("--smoke", "--out", str(d / "gpu"), "--work", str(d / "work"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, json.loads((d / "gpu.json").read_text())


def test_every_part_runs_and_is_recorded(smoke):
    _, res = smoke
    assert res["smoke"] is True
    assert set(res["parts"]) == {"table", "speed", "families", "compile-s", "compile-b",
                                 "compress", "torchrun"}
    t = res["parts"]["table"]
    assert len(t["rows"]) == 1 + res["settings"]["table_plans"]
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in t["rows"])


def test_speed_rows_carry_the_ideal_speedup_of_their_macs(smoke):
    _, res = smoke
    for part in ("speed", "compile-s"):
        for rows in res["parts"][part].values():
            plans = {r["plan"] for r in rows}
            assert {"dense", "macs 60%", "latency 60%"} <= plans
            assert {r["batch"] for r in rows} == set(res["settings"]["batches"])
            for r in rows:
                assert r["ideal"] == pytest.approx(1 / r["macs_fraction"])
                if r["plan"] == "macs 60%":
                    assert 0.5 < r["macs_fraction"] <= 0.6
                if r["plan"] == "dense":
                    assert r["speedup"] == 1.0
    families = res["parts"]["families"]
    assert set(families) == {"swin_tiny_patch4_window7_224", "eva02_tiny_patch14_224"}
    for rows in families.values():
        assert {r["plan"] for r in rows} == {"dense", "macs 60%"}
        assert all(0.5 < r["macs_fraction"] <= 0.6 for r in rows if r["plan"] != "dense")


def test_compress_runs_in_one_process_and_under_torchrun_on_the_asked_device(smoke):
    _, res = smoke
    for part in ("compress", "torchrun"):
        r = res["parts"][part]
        assert r["returncode"] == 0, r["tail"]
        assert r["scored_on"] == "cpu" and r["evaluated_on"]
        assert r["search_evaluations_per_min"] > 0
        assert [s["stage"].split(" ")[0] for s in r["stages"]][1:] == [
            "scoring", "searching", "fine-tuning", "evaluating"]


def test_the_page_is_made_from_the_json_and_a_rerun_skips_finished_parts(smoke):
    d, res = smoke
    page = (d / "gpu.md").read_text()
    assert "smoke run on the CPU: not results" in page
    assert f"{res['parts']['table']['median_abs_error']:.1%} median" in page
    proc = _run("--smoke", "--out", str(d / "gpu"), "--work", str(d / "work"), "--parts",
                "table", "compress")
    assert proc.returncode == 0 and proc.stdout.count("done already") == 2
    assert json.loads((d / "gpu.json").read_text())["parts"] == res["parts"]
