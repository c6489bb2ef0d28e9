"""Which criterion picks what to cut best? Accuracy of the Fashion-MNIST baseline with no
fine-tuning after removing 30% / 50% of the MLP neurons, or a third of the heads, in every block,
the components chosen by each criterion (scores from calibration images; accuracy on test).

    python benchmarks/criteria_accuracy.py --out docs/criteria_accuracy

The page is :func:`page` of docs/criteria_accuracy.json; its hand-written reading is kept between
the page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune import load  # noqa: E402
from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.data import load_splits, make_loader  # noqa: E402
from vitprune.pipeline import MaskedAccuracy, score  # noqa: E402
from vitprune.scoring import rankings  # noqa: E402
from vitprune.search import Ratios, ratios_to_plan  # noqa: E402
from vitprune.train import EVAL_BATCH  # noqa: E402

BASELINE = Path(__file__).resolve().parents[1] / "vitprune" / "assets" / "fmnist_vit_d12"
SETTINGS = [("neurons -30%", 0.0, 0.3), ("neurons -50%", 0.0, 0.5), ("heads -1/3", 1 / 3, 0.0)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(BASELINE))
    ap.add_argument("--images", type=int, default=256, help="calibration images for scoring")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load(args.model)
    splits = load_splits("fashion-mnist")
    test = [(x, y) for x, y in make_loader(splits.test, EVAL_BATCH)]
    shape = vit_shape(model)
    depth = len(shape.blocks)
    runs = [("hsic", {}), ("magnitude", {}), ("activation", {}), ("taylor", {})]
    runs += [("random", {"seed": s}) for s in range(args.random_seeds)]
    scored = []  # score everything on the intact model first, then evaluate under masks
    for name, opts in runs:
        t0 = time.perf_counter()
        scores = score(model, splits, name, n_images=args.images, **opts)
        scored.append((name, opts, rankings(scores), time.perf_counter() - t0))
    objective = MaskedAccuracy(model, test)
    dense = objective(ratios_to_plan(shape, Ratios.uniform(depth)))
    rows: dict[str, dict] = {}
    for name, opts, rank, secs in scored:
        row = rows.setdefault(name, {"criterion": name, "score_seconds": [], **{s[0]: [] for s in SETTINGS}})
        row["score_seconds"].append(secs)
        for label, h, n in SETTINGS:
            plan = ratios_to_plan(shape, Ratios.uniform(depth, heads=h, neurons=n), rankings=rank)
            row[label].append(objective(plan))
        last = {k: v[-1] for k, v in row.items() if isinstance(v, list)}
        print(json.dumps({"criterion": name, **opts, **last}), flush=True)
    objective.close()
    kept_heads = len(ratios_to_plan(shape, Ratios.uniform(depth, heads=1 / 3)).blocks[0].heads)
    record = {"command": "python " + " ".join(sys.argv), "images": args.images,
              "heads": shape.blocks[0].heads, "kept_heads": kept_heads,
              "random_seeds": args.random_seeds, "dense_top1": dense, "rows": list(rows.values())}
    print(pages.publish(args.out, record, page))
    return 0


def page(record: dict) -> str:
    """The page's generated text, from ``docs/criteria_accuracy.json`` alone."""
    md = ["# Criteria on the Fashion-MNIST baseline (no fine-tuning)", "",
          f"Command: `{record['command']}`  ",
          f"Dense test top-1: {record['dense_top1']:.2f}%. Scores from {record['images']} "
          "calibration images (held out from training); accuracy on the 10,000 test images. "
          f"\"heads -1/3\" keeps {record['kept_heads']} of {record['heads']} heads per block "
          f"(rounding). Random: mean (min-max) over {record['random_seeds']} seeds.", "",
          "| criterion | " + " | ".join(s[0] for s in SETTINGS) + " | scoring time (s) |",
          "|---|" + "---|" * (len(SETTINGS) + 1)]
    for row in record["rows"]:
        cells = []
        for label, _, _ in SETTINGS:
            v = row[label]
            spread = f" ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else ""
            cells.append(f"{statistics.mean(v):.2f}" + spread)
        secs = statistics.mean(row["score_seconds"])
        md.append(f"| {row['criterion']} | " + " | ".join(cells) + f" | {secs:.1f} |")
    return "\n".join([*md, "", "## Reading"])


if __name__ == "__main__":
    sys.exit(main())
