"""docs/latency_depth.md and its JSON: does dropping whole attentions or MLPs (``--depth``) win
at batch 1, where narrower blocks do not remove per-operation overhead?

On the Fashion-MNIST baseline with the batch-1 CPU latency table: the cheapest plan each search
space can reach (predicted, and measured), then a search under a latency budget that only the
depth space reaches, its plan measured and fine-tuned with the results study's recipe (one epoch
of distillation), beside a width-only plan of the widest space at its cheapest.

    python benchmarks/latency_depth.py run --table runs/latency/fmnist_b1/table.json
    python benchmarks/latency_depth.py report --out docs/latency_depth

The page is :func:`page` of docs/latency_depth.json; its hand-written reading is kept between the
page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import pages  # noqa: E402

from vitprune import fsutil, load  # noqa: E402
from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.config import SearchSettings  # noqa: E402
from vitprune.cost import macs  # noqa: E402
from vitprune.data import load_splits  # noqa: E402
from vitprune.latency import LatencyTable  # noqa: E402
from vitprune.pipeline import finetune, policy_search, score, search_space, test_metrics  # noqa: E402
from vitprune.plan import PrunePlan, planned_shape  # noqa: E402
from vitprune.speed import Timer  # noqa: E402
from vitprune.surgery import prune  # noqa: E402
from vitprune.train import FINETUNE  # noqa: E402

BASELINE = ROOT / "vitprune" / "assets" / "fmnist_vit_d12"


def cmd_run(args) -> int:
    runs = args.runs
    runs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    dense = load(BASELINE).eval()
    shape = vit_shape(dense)
    table = LatencyTable.load(args.table)
    splits = load_splits("fashion-mnist")
    scores_path = runs / "scores_hsic.json"
    if scores_path.exists():
        from vitprune.scoring import load_scores

        hsic = load_scores(scores_path)[0]
    else:
        hsic = score(dense, splits, "hsic", n_images=256, out=scores_path)
    base = replace(SearchSettings(), trials=args.trials, init=args.init, anchors=False,
                   budget_metric="latency", latency_table=str(args.table))
    spaces = {"width": search_space(dense, base, hsic),
              "depth": search_space(dense, replace(base, depth=True), hsic)}
    plans = {f"cheapest, {k}": s.plan(s.upper) for k, s in spaces.items()}
    path = runs / "plans" / f"depth_{args.budget}.json"
    if not path.exists():
        res = policy_search(dense, splits, str(args.budget), runs / "search", scores=hsic,
                            settings=replace(base, depth=True), seed=0, progress=False,
                            resume=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        res.best_plan.save(path)
    plans[f"depth search at {args.budget}"] = PrunePlan.load(path)
    nets = {"dense": dense, **{k: prune(dense, p) for k, p in plans.items()}}
    x = torch.randn(1, 1, 28, 28)
    measured = dict(zip(nets, Timer("cpu", 3, 20, "min").interleaved(list(nets.values()), x,
                                                                       rounds=5)))
    rows = {}
    for k, p in {"dense": None, **plans}.items():
        s = shape if p is None else planned_shape(shape, p)
        rows[k] = {"predicted_ms": table.predict(s), "measured_ms": measured[k],
                   "macs_kept": macs(s).total / macs(shape).total,
                   "blocks_without_attention": 0 if p is None else sum(not b.heads for b in p.blocks),
                   "blocks_without_mlp": 0 if p is None else sum(not b.neurons for b in p.blocks)}
    for k in ("cheapest, width", f"depth search at {args.budget}"):
        cell = runs / "finetune" / "".join(c if c.isalnum() else "_" for c in k)
        result = cell / "result.json"
        if not result.exists():
            student = prune(dense, plans[k])
            before = test_metrics(student, splits)["test_top1"]
            t0 = time.perf_counter()
            finetune(student, dense, splits, replace(FINETUNE, epochs=1, augment=False,
                                                     kd_alpha=0.5, seed=0),
                     cell / "run", resume=True, progress=False)
            fsutil.write_json(result, {"test_top1_before": before,
                                       "test_top1": test_metrics(student, splits)["test_top1"],
                                       "finetune_s": round(time.perf_counter() - t0, 1)})
        rows[k].update(json.loads(result.read_text()))
    fsutil.write_json(runs / "result.json", {"rows": rows, "table": table.describe(),
                                             "budget": args.budget, "threads": args.threads})
    return 0


def cmd_report(args) -> int:
    res = json.loads((args.runs / "result.json").read_text())
    fsutil.write_json(Path(str(args.out) + ".json"), res)
    pages.write(Path(str(args.out) + ".md"), page(res), after="## Reading")
    print(page(res))
    return 0


def page(res: dict) -> str:
    """The page's generated text, from ``docs/latency_depth.json`` alone."""
    rows, dense = res["rows"], res["rows"]["dense"]
    lines = [
        "# Depth pruning at batch 1",
        "",
        "Made by `python benchmarks/latency_depth.py run --table runs/latency/fmnist_b1/table.json`"
        f" then `report` (figures in `latency_depth.json`). Fashion-MNIST baseline (test top-1 "
        f"90.02), batch 1, CPU ({res['table']}). Times are the fastest of 100 calls over five "
        "interleaved rounds. \"cheapest\" is the most pruned corner of each search space (every "
        "ratio at its top: 0.9 without `--depth`; with it, attentions outside the token blocks "
        "and every MLP dropped); the depth search is a latency-budget search (GP-EI, 50 "
        f"evaluations) at {res['budget']} of the dense predicted time, which only the depth "
        "space reaches. Fine-tuning: one epoch of distillation, seed 0.",
        "",
        "| model | MACs kept | attention / MLP dropped | predicted ms | measured ms | speed-up "
        "| test top-1 before / after FT |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, r in rows.items():
        acc = (f"{r['test_top1_before']:.2f} / {r['test_top1']:.2f}" if "test_top1" in r
               else "-")
        lines.append(f"| {k} | {r['macs_kept']:.1%} | {r['blocks_without_attention']} / "
                     f"{r['blocks_without_mlp']} | {r['predicted_ms']:.3f} | "
                     f"{r['measured_ms']:.3f} | {dense['measured_ms'] / r['measured_ms']:.2f}x "
                     f"| {acc} |")
    return "\n".join([*lines, "", "## Reading"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--runs", type=Path, default=Path("runs/latency_depth"))
    run = sub.choices["run"]
    run.add_argument("--table", type=Path, required=True)
    run.add_argument("--budget", type=float, default=0.6)
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--trials", type=int, default=50)
    run.add_argument("--init", type=int, default=20)
    run.set_defaults(func=cmd_run)
    rep = sub.choices["report"]
    rep.add_argument("--out", type=Path, default=ROOT / "docs" / "latency_depth")
    rep.set_defaults(func=cmd_report)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
