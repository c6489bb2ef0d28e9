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


# every part but the evidence study, whose smoke (four processes, about 45 s) runs in the slow
# test below; tests/benchmarks/test_evidence.py runs the same study in-process
FAST_PARTS = ("table", "speed", "families", "compile-s", "compile-b", "compress", "torchrun")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpu_suite")
    proc = _run("--smoke", "--out", str(d / "gpu"), "--work", str(d / "work"), "--parts",
                *FAST_PARTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, json.loads((d / "gpu.json").read_text())


def test_every_part_runs_and_is_recorded(smoke):
    _, res = smoke
    assert res["smoke"] is True
    assert set(res["parts"]) == set(FAST_PARTS)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_suite

    assert set(gpu_suite.PARTS) == {*FAST_PARTS, "evidence"}  # a GPU run runs them all
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


@pytest.mark.slow
def test_the_evidence_study_runs_on_the_asked_device_with_its_rows(tmp_path):
    d = tmp_path
    proc = _run("--smoke", "--out", str(d / "gpu"), "--work", str(d / "work"), "--parts",
                "evidence")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((d / "gpu.json").read_text())
    r = res["parts"]["evidence"]
    assert [p["phase"] for p in r["phases"]] == ["plans", "time", "finetune", "report"]
    assert all(p["returncode"] == 0 for p in r["phases"]) and "failed" not in r
    assert r["device"] == res["settings"]["device"] == "cpu"
    rows = r["rows"]
    assert set(rows) == {"d12 0.6: vitprune", "d12 0.6: dense reference"}
    assert rows["d12 0.6: vitprune"]["macs_kept"] < 1 and rows["d12 0.6: vitprune"]["speedup_b64"] > 1
    assert "## The evidence study on cpu" in (d / "gpu.md").read_text()


def test_a_failed_evidence_phase_is_recorded_with_its_reason_and_tried_again(tmp_path,
                                                                            monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_suite

    bad = gpu_suite.replace(gpu_suite.SMOKE, evidence_args=("--smoke", "--models", "nonexistent"))
    r = gpu_suite.part_evidence(bad, tmp_path, {})
    assert r["failed"] and [p["phase"] for p in r["phases"]] == ["plans"]
    assert r["phases"][0]["returncode"] != 0 and "nonexistent" in "\n".join(r["tail"])
    out = tmp_path / "gpu"
    out.with_suffix(".json").write_text(json.dumps(
        {"smoke": True, "settings": {"device": "cpu"}, "parts": {"evidence": r}}))
    calls = []  # a re-run does not take the failed part for done: it runs it again
    monkeypatch.setitem(gpu_suite.RUNNERS, "evidence",
                        lambda s, work, done: calls.append(s) or {"phases": [], "rows": {}})
    assert gpu_suite.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "w"),
                           "--parts", "evidence"]) == 0
    assert len(calls) == 1
    assert json.loads(out.with_suffix(".json").read_text())["parts"]["evidence"] == {
        "phases": [], "rows": {}}
