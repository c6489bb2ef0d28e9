"""Docs pages generated from their JSON: regenerating each from the committed JSON gives the
committed page (its hand-written reading block aside), and the reading survives regeneration."""

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import pages  # noqa: E402

# page -> the benchmark module whose page(record) writes it from docs/<page>.json
GENERATED = {"backbones": "backbone_fidelity", "latency_budget": "latency_budget",
             "baseline_t197": "baseline_t197", "evidence": "evidence", "evidence_ft600": "evidence",
             "evidence_kdf": "evidence", "evidence_open_loop": "evidence", "ft_proxy": "ft_proxy",
             "hsic_variants": "hsic_variants", "compress": "compress_fmnist",
             "criteria_accuracy": "criteria_accuracy", "demo": "demo_runs", "deploy": "deploy",
             "families": "families_cost", "latency": "latency_predict",
             "latency_compare": "latency_compare", "latency_depth": "latency_depth",
             "latency_multiples": "latency_multiples", "max_ratio": "max_ratio_report",
             "rehearse_224": "rehearse_224", "results": "results_report",
             "scoring_memory": "scoring_memory", "scoring_speed": "scoring_speed",
             "search_anchors": "search_anchors", "search_compare": "search_compare",
             "search_objective": "search_objective",
             "surgery_speed": "surgery_speed",
             "user_errors": "user_errors"}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_the_committed_page_is_its_json_regenerated(name):
    md, js = ROOT / "docs" / f"{name}.md", ROOT / "docs" / f"{name}.json"
    if not js.is_file():
        pytest.skip(f"docs/{name}.json is not committed yet")
    module = importlib.import_module(GENERATED[name])
    want = pages.render(md, module.page(json.loads(js.read_text())), after="## Reading")
    assert md.read_text() == want, f"regenerate docs/{name}.md with its report step"


def test_every_page_with_a_json_beside_it_is_generated_and_keeps_its_reading_inside():
    docs = ROOT / "docs"
    paired = {p.stem for p in docs.glob("*.md") if p.with_suffix(".json").is_file()}
    assert paired - set(GENERATED) == set(), "register these pages in GENERATED"
    assert not list(docs.glob("*_reading.md")), "a page's reading belongs in its reading block"


def test_regenerating_a_page_keeps_its_reading(tmp_path):
    page = tmp_path / "p.md"
    pages.write(page, "# Title\n\n| a |\n\n## Reading\n", after="## Reading")
    assert pages.PLACEHOLDER in page.read_text()
    text = page.read_text().replace(pages.PLACEHOLDER, "The numbers say so.")
    page.write_text(text)
    pages.write(page, "# Title\n\n| b |\n\n## Reading\n", after="## Reading")
    again = page.read_text()
    assert "| b |" in again and "| a |" not in again and "The numbers say so." in again
