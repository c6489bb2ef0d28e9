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


def test_a_row_measured_before_the_test_column_gets_it_from_its_checkpoint(
        tmp_path, tiny_vit, synth_splits):
    import json

    from tests.helpers import random_plan
    from vitprune.adapters import vit_shape
    from vitprune.data import make_loader
    from vitprune.surgery import prune
    from vitprune.train import evaluate

    plan = random_plan(vit_shape(tiny_vit), 3, stages=(1,))
    trained = prune(tiny_vit, plan)
    torch.manual_seed(1)
    with torch.no_grad():  # the checkpoint's weights are not the freshly pruned model's
        for p in trained.parameters():
            p.add_(torch.randn_like(p))
    out = ft_proxy.row_dir(tmp_path, "t197", 0.4, "built", 150, 0)
    (out / "finetune").mkdir(parents=True)
    torch.save({"model": trained.state_dict()}, out / "finetune" / ft_proxy.CKPT)
    old = {"plan": "built", "held_out_after": 50.0}
    (out / "row.json").write_text(json.dumps(old))
    test = make_loader(synth_splits.test, 64)
    want = evaluate(trained.eval(), test)["top1"]
    assert want != evaluate(prune(tiny_vit, plan).eval(), test)["top1"]
    r = ft_proxy.row(tmp_path, "t197", 0.4, "built", plan, tiny_vit, None, None, 150, 0, test)
    assert r == {**old, "test_after": want}
    assert json.loads((out / "row.json").read_text()) == r  # kept for the page


def test_the_page_sets_the_held_out_ranking_beside_the_tests_at_equal_training():
    def r(plan, held, test, final):
        return {"model": "t197", "target": 0.4, "steps": 150, "plan": plan, "params": int(held),
                "held_out_before": held - 10, "held_out_after": held, "test_after": test,
                "final_test_top1": [final]}

    rows = [r("a", 87.0, 86.0, 86.5), r("b", 86.0, 86.5, 87.0), r("c", 85.0, 84.0, 84.5)]
    text = ft_proxy.page({"command": "c", "settings": {"held_out": "h", "batch": 128,
                                                         "recipe": "r"}, "rows": rows})
    assert "| a | 87 | 77.00 | 87.00 | 86.00 | 86.50 |" in text
    assert "test after 150 steps +1.00" in text  # test at k ranks them as the final does
    # a and b swap between held-out and test: 2 of 3 ranks agree
    assert "rank correlation +0.50; held-out minus test -0.50 to +1.00 points" in text
