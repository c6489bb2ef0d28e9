"""The embedded default job (vitprune/demo.py): which baseline it compresses, with which
settings, and where; the run itself is `make demo` (minutes), not a test."""

from __future__ import annotations

from vitprune import demo


def test_the_demo_compresses_the_shipped_baseline_with_its_settings(monkeypatch, tmp_path):
    calls = []

    def fake_cli(argv):
        calls.append(argv)
        out = argv[argv.index("--out") + 1]
        (tmp_path / "r").mkdir(exist_ok=True)
        assert out == str(tmp_path / "r")
        (tmp_path / "r" / demo.REPORT).write_text("# Report\n\nsummary\n## Plan\n")
        return 0

    monkeypatch.setattr(demo, "cli_main", fake_cli)
    assert demo.main(["--out", str(tmp_path / "r"), "--quiet"]) == 0
    (argv,) = calls
    assert argv[:3] == ["compress", "--model", str(demo.BASELINE)]  # shipped: nothing trained
    assert argv[argv.index("--budget") + 1] == "0.6" and argv[argv.index("--trials") + 1] == "24"
    assert argv[argv.index("--threads") + 1] == "2" and argv[-1] == "--quiet"
    assert argv.count("--out") == 1  # the user's --out replaced the default, not added to it


def test_without_the_shipped_baseline_it_is_trained_by_the_committed_phases(monkeypatch,
                                                                            tmp_path):
    calls = []

    def fake_cli(argv):
        calls.append(argv)
        out = tmp_path / "runs" / argv[argv.index("--out") + 1].rsplit("/", 1)[-1]
        out.mkdir(parents=True)
        (out / demo.CONFIG).write_text("{}")
        return 0

    monkeypatch.setattr(demo, "BASELINE", tmp_path / "missing")
    monkeypatch.setattr(demo, "cli_main", fake_cli)
    got = demo.baseline_dir(tmp_path / "runs")
    assert got == tmp_path / "runs" / "baseline_p2"
    assert [c[0] for c in calls] == ["train", "train"] and all("--resume" in c for c in calls)
    assert calls[1][calls[1].index("--model") + 1] == str(tmp_path / "runs" / "baseline")
    again = demo.baseline_dir(tmp_path / "runs")  # both phases done: nothing runs again
    assert again == got and len(calls) == 2
