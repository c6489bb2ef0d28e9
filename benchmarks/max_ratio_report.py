"""docs/max_ratio.md and its JSON: the per-block prune-ratio cap of the search, 0.5 against 0.9.

Reads the cells that ``benchmarks/results.py run`` left for the methods "ours" (ratios in
[0, 0.5]) and "ours, ratios to 0.9" (ratios in [0, 0.9]) in each runs directory given. Each
directory holds ``commands.txt``: the exact commands that filled it, one a line; the ``--model``
of its ``results.py run`` line names the dense model (default: the shipped one). For the shipped
model the same cells of the one-epoch study (docs/results.json) are kept beside, for comparison.
Writes nothing but the report; it measures nothing.

    python benchmarks/max_ratio_report.py runs/max_ratio_tiny runs/max_ratio_d12

The page is :func:`page` of docs/max_ratio.json; its hand-written reading is kept between the
page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune.io.model_dir import CONFIG  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "vitprune/assets/fmnist_vit_d12"
CAPS = {"ours": 0.5, "ours, ratios to 0.9": 0.9}
RECIPE = ("distillation from the dense model (KD alpha {kd_alpha}, T = 2), {epochs} epochs, AdamW "
          "at 5e-4 (weight decay 0.05, batch 128) with half an epoch of warm-up and cosine decay, "
          "{augment}; plans from a GP-EI search of {trials} evaluations ({init} random first) "
          "maximising the masked model's top-1 on 2,000 held-out training images, joint over "
          "heads, MLP neurons and tokens, HSIC ranking, MACs band [budget - 2%, budget]")


def _option(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv else default


def _study(runs: Path) -> dict:
    """One runs directory: its dense model, commands and cells, summarised per budget and cap."""
    commands = [c for c in (runs / "commands.txt").read_text().splitlines() if c.strip()]
    argv = shlex.split(next(c for c in commands if "results.py run" in c))
    model = _option(argv, "--model", BASELINE)
    meta = json.loads((ROOT / model / CONFIG).read_text())
    trained = meta["meta"]["trained"]
    rows = [json.loads(p.read_text()) for p in sorted(runs.glob("*/b*/s*/result.json"))]
    rows = [r for r in rows if r["method"] in CAPS]
    budgets = {}
    for budget in sorted({r["budget"] for r in rows}, reverse=True):
        caps = {}
        for method, cap in CAPS.items():
            cell = sorted((r for r in rows if r["budget"] == budget and r["method"] == method),
                          key=lambda r: r["seed"])
            done = [r for r in cell if "test_top1" in r]
            top = [r["test_top1"] for r in done]
            caps[str(cap)] = {
                "method": method,
                "unreachable": next((r["unreachable"] for r in cell if "unreachable" in r), None),
                "seeds": [{k: r[k] for k in ("seed", "macs_kept", "test_top1_before", "test_top1")}
                          for r in done],
                **({"mean": statistics.mean(top), "min": min(top), "max": max(top),
                    "mean_before": statistics.mean(r["test_top1_before"] for r in done)}
                   if done else {})}
        lo, hi = caps["0.5"], caps["0.9"]
        paired = [b["test_top1"] - a["test_top1"] for a in lo["seeds"] for b in hi["seeds"]
                  if a["seed"] == b["seed"]]
        budgets[str(budget)] = {
            "caps": caps, "diff_mean": hi["mean"] - lo["mean"] if "mean" in lo and "mean" in hi
            else None, "diff_per_seed": paired}
    first = next(r for r in rows if "epochs" in r)
    return {"runs": str(runs), "model": model, "arch": meta["arch"]["name"],
            "dense_top1": trained["test_top1"],
            "dense_trained_by": [x["command"] for x in meta["meta"].get("lineage", []) + [trained]],
            "recipe": {"epochs": first["epochs"], "kd_alpha": first["kd_alpha"],
                       "augment": first["augment"], "trials": int(_option(argv, "--trials", "50")),
                       "init": int(_option(argv, "--init", "20"))},
            "commands": commands, "budgets": budgets,
            "one_epoch": _one_epoch(model, set(budgets))}


def _one_epoch(model: str, budgets: set[str]) -> list[dict]:
    """The same cells in the one-epoch study of docs/results.json (shipped model only), by
    budget (largest first), method and seed."""
    path = ROOT / "docs" / "results.json"
    if model != BASELINE or not path.exists():
        return []
    rows = [r for r in json.loads(path.read_text())["rows"]
            if r["method"] in CAPS and "test_top1" in r and str(r["budget"]) in budgets]
    return [{k: r[k] for k in ("method", "budget", "seed", "test_top1_before", "test_top1")}
            for r in sorted(rows, key=lambda r: (-r["budget"], r["method"], r["seed"]))]


def _fmt(c: dict) -> str:
    if c["unreachable"]:
        return f"cannot reach the budget ({c['unreachable']})"
    if not c["seeds"]:
        return "not run"
    return f"**{c['mean']:.2f}** [{c['min']:.2f}-{c['max']:.2f}], {len(c['seeds'])} seed(s)"


def page(record: dict) -> str:
    """The page's generated text, from ``docs/max_ratio.json`` alone."""
    studies = record["studies"]
    r = {**studies[0]["recipe"], "augment": "augmentation" if studies[0]["recipe"]["augment"]
         else "no augmentation"}
    if any(s["recipe"] != studies[0]["recipe"] for s in studies):
        raise SystemExit("the runs directories differ in recipe; report them separately")
    lines = ["# Prune-ratio cap of the search: 0.5 against 0.9", "",
             "The search picks, per block, the fraction of heads, MLP neurons and tokens to prune. "
             "`ours` keeps each ratio in [0, 0.5] (the method's cap, vitprune's default when this study ran; "
             "the default is now 0.9); `ours, ratios to "
             "0.9` allows [0, 0.9]. Everything else is the same: search, physical pruning, "
             "fine-tuning, Fashion-MNIST test top-1 (10,000 images).", "",
             "Recipe: " + RECIPE.format(**r) + ".", "", "## Reading"]
    for s in studies:
        lines += [f"## {s['arch']} (`{s['model']}`), dense test top-1 {s['dense_top1']:.2f}", "",
                  "| budget | cap | MACs kept | seed | top-1 before fine-tuning | test top-1 |",
                  "|---|---|---|---|---|---|"]
        for budget, b in s["budgets"].items():
            for cap, c in b["caps"].items():
                if not c["seeds"]:
                    lines.append(f"| {budget} | {cap} | {_fmt(c)} | | | |")
                for x in c["seeds"]:
                    lines.append(f"| {budget} | {cap} | {100 * x['macs_kept']:.1f}% | {x['seed']} "
                                 f"| {x['test_top1_before']:.2f} | {x['test_top1']:.2f} |")
        lines += ["", "| budget | cap 0.5 | cap 0.9 | 0.9 minus 0.5 (mean) | per seed |",
                  "|---|---|---|---|---|"]
        for budget, b in s["budgets"].items():
            d = "" if b["diff_mean"] is None else f"{b['diff_mean']:+.2f}"
            per = ", ".join(f"{x:+.2f}" for x in b["diff_per_seed"])
            lines.append(f"| {budget} | {_fmt(b['caps']['0.5'])} | {_fmt(b['caps']['0.9'])} "
                         f"| {d} | {per} |")
        if s["one_epoch"]:
            lines += ["", "The same cells after one epoch (docs/results.md), for comparison:", ""]
            lines += [f"- {x['method']}, budget {x['budget']}, seed {x['seed']}: before "
                      f"{x['test_top1_before']:.2f}, after {x['test_top1']:.2f}"
                      for x in s["one_epoch"]]
        lines += ["", "Commands:", "", "```"] + [f"# dense model: {c}" for c in
                                                  s["dense_trained_by"]] + s["commands"] + ["```", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="runs directories of benchmarks/results.py")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "max_ratio",
                    help="writes OUT.md and OUT.json")
    args = ap.parse_args()
    record = {"studies": [_study(r) for r in args.runs]}
    pages.publish(args.out, record, page)
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
