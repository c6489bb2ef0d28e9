"""ft_proxy's plans built from a study plan: the study's widths and token stages, another
criterion's units."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import ft_proxy  # noqa: E402

from vitprune.pipeline import load_dense  # noqa: E402
from vitprune.plan import PrunePlan  # noqa: E402
from vitprune.scoring import get_criterion, rankings, save_scores  # noqa: E402


def test_a_shaped_plan_keeps_the_study_plans_widths_and_tokens_with_the_criterions_units(
        tmp_path):
    dense = load_dense(ft_proxy.MODELS["t197"], None, device="cpu")[0].eval()
    scores = get_criterion("magnitude")(dense)
    save_scores(tmp_path / "t197" / "scores_magnitude_256.json", scores, {"criterion": "magnitude"})
    spec = "vitprune/s0"
    study = PrunePlan.load(ft_proxy.STATE / "t197" / "t0.4" / spec / "plan.json")
    got = ft_proxy.shaped_plan(dense, tmp_path, "t197", 0.4, spec, "magnitude")
    assert got.tokens == study.tokens and got.base == study.base
    assert [(len(b.heads), len(b.neurons)) for b in got.blocks] == \
        [(len(b.heads), len(b.neurons)) for b in study.blocks]
    for b, (heads, _), s in zip(got.blocks, rankings(scores), scores):
        assert set(b.heads) == set(heads[:len(b.heads)])
        kept = s.neurons[list(b.neurons)]  # the kept neurons outscore every dropped one
        dropped = torch.ones(len(s.neurons), dtype=torch.bool)
        dropped[list(b.neurons)] = False
        assert not dropped.any() or kept.min() >= s.neurons[dropped].max()
    assert got != study  # magnitude chooses other units than the study's HSIC


def test_restore_puts_the_pages_rows_back_and_report_regenerates_the_same_page(tmp_path):
    import json

    committed = ft_proxy.ROOT / "docs" / "ft_proxy"
    runs, out = tmp_path / "runs", tmp_path / "page"
    (tmp_path / "page.json").write_text((committed.with_suffix(".json")).read_text())
    ft_proxy.main(["restore", "--runs", str(runs), "--out", str(out)])
    rows = json.loads((tmp_path / "page.json").read_text())["rows"]
    assert len(list(runs.rglob("row.json"))) == len(rows) > 0
    (tmp_path / "page.json").unlink()
    ft_proxy.main(["report", "--runs", str(runs), "--out", str(out)])
    assert json.loads((tmp_path / "page.json").read_text())["rows"] == rows
    generated = (tmp_path / "page.md").read_text()
    assert generated.split("## Reading")[0] == \
        committed.with_suffix(".md").read_text().split("## Reading")[0]
