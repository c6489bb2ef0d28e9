"""GP-EI vs random search vs uniform ratios on the Fashion-MNIST baseline.

For each budget, method and seed: search on the masked calibration accuracy (held-out training
images), then report the best plan's calibration top-1 and its test top-1 (no fine-tuning).
Resumable: each search keeps its trials file under --runs and continues where it stopped.

    python benchmarks/search_compare.py --budgets 0.6 0.4 --seeds 0 1 2 --out docs/search_compare

The page is :func:`page` of docs/search_compare.json; its hand-written reading is kept between the
page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune import load  # noqa: E402
from vitprune.data import load_splits, make_loader  # noqa: E402
from vitprune.errors import BudgetError  # noqa: E402
from vitprune.pipeline import MaskedAccuracy, policy_search, score  # noqa: E402
from vitprune.train import EVAL_BATCH  # noqa: E402

BASELINE = Path(__file__).resolve().parents[1] / "vitprune" / "assets" / "fmnist_vit_d12"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(BASELINE))
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.6, 0.4])
    ap.add_argument("--methods", nargs="+", default=["gp-ei", "random", "uniform"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--init", type=int, default=20)
    ap.add_argument("--calib-images", type=int, default=2000)
    ap.add_argument("--criterion", default="hsic")
    ap.add_argument("--runs", type=Path, default=Path("runs/search_compare"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load(args.model)
    splits = load_splits("fashion-mnist")
    scores = score(model, splits, args.criterion, n_images=256)
    test = [(x, y) for x, y in make_loader(splits.test, EVAL_BATCH)]
    rows = []
    for budget in args.budgets:
        for method in args.methods:
            for seed in (args.seeds if method != "uniform" else args.seeds[:1]):
                out = args.runs / f"b{budget}_{method}_s{seed}"
                try:
                    res = policy_search(model, splits, budget, out, method=method,
                                        trials=args.trials, init=args.init, seed=seed,
                                        scores=scores, calib_images=args.calib_images, anchors=False,
                                        resume=True, progress=False)
                except BudgetError as exc:
                    print(f"{method} at {budget}: {exc}", flush=True)
                    continue
                objective = MaskedAccuracy(model, test)
                test_top1 = objective(res.best_plan)
                objective.close()
                walls = [t.wall_s for t in res.trials if getattr(t, "wall_s", None) is not None]
                row = {"budget": budget, "method": method, "seed": seed, "evaluations": len(res.trials),
                       "best_calib_top1": res.best.value, "best_at": res.best.trial,
                       "test_top1": test_top1,
                       "seconds_per_eval": statistics.median(walls) if walls else None}
                rows.append(row)
                print(json.dumps(row), flush=True)
    record = {"command": "python " + " ".join(sys.argv),
              "settings": {"trials": args.trials, "init": args.init,
                           "calib_images": args.calib_images, "criterion": args.criterion},
              "rows": rows}
    print(pages.publish(args.out, record, page))
    return 0


def page(record: dict) -> str:
    """The page's generated text, from ``docs/search_compare.json`` alone."""
    rows, st = record["rows"], record["settings"]
    lines = ["# Policy search on the Fashion-MNIST baseline (masked, no fine-tuning)", "",
             f"Command: `{record['command']}`  ",
             f"{st['trials']} evaluations ({st['init']} random before the GP), "
             f"{st['calib_images']} calibration images per evaluation, components ranked by "
             f"{st['criterion']}. Mean (min-max) over seeds.", "",
             "| budget | method | seeds | best calib top-1 | its test top-1 | s / evaluation |",
             "|---|---|---|---|---|---|"]
    keys = sorted({(r["budget"], r["method"]) for r in rows}, key=lambda k: (-k[0], k[1]))
    for b, m in keys:
        rs = [r for r in rows if r["budget"] == b and r["method"] == m]
        secs = [r["seconds_per_eval"] for r in rs if r["seconds_per_eval"] is not None]
        lines.append(f"| {b} | {m} | {len(rs)} | {pages.mean_range([r['best_calib_top1'] for r in rs])} | "
                     f"{pages.mean_range([r['test_top1'] for r in rs])} | "
                     + (f"{statistics.mean(secs):.2f} |" if secs else "- |"))
    return "\n".join([*lines, "", "## Reading"])


if __name__ == "__main__":
    sys.exit(main())
