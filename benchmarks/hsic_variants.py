"""docs/hsic_variants.md and .json: variants of the HSIC criterion, chosen on calibration images.

No fine-tuning: each variant scores heads and neurons on calibration images, then the
components it ranks lowest are removed uniformly in every block (a third or half of the heads,
half the neurons) and the masked model's top-1 is measured on **held-out calibration images**
(the calibration split's images from 1,024 on, which no variant scored: 3,976 images), the
split the choice of default is made on. Test top-1 is reported beside it for the record only
(on the 50-token model; on the 197-token one it would triple the run's time).
Both benchmark models: the 50-token one (vitprune/assets/fmnist_vit_d12) and the 197-token one
(vitprune/assets/fmnist_vit_t197), where the bandwidth was expected to matter more (N = 197
tokens a head; it changes no head ranking there).

    python benchmarks/hsic_variants.py run --threads 2 --out runs/hsic_variants   # resumable
    python benchmarks/hsic_variants.py report --runs runs/hsic_variants           # the page

(d12 took about 25 minutes on one thread, t197 13 on two; the page says each model's threads.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune import fsutil, load  # noqa: E402
from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.data import load_splits, make_loader  # noqa: E402
from vitprune.pipeline import MaskedAccuracy, score  # noqa: E402
from vitprune.scoring import rankings  # noqa: E402
from vitprune.search import Ratios, ratios_to_plan  # noqa: E402
from vitprune.train import EVAL_BATCH  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"d12 (50 tokens)": "vitprune/assets/fmnist_vit_d12",
          "t197 (197 tokens)": "vitprune/assets/fmnist_vit_t197"}
WITH_TEST = {"d12 (50 tokens)"}  # the test column, for the record, where it is affordable
PAPER = {"bandwidth": "fixed"}  # the authors' settings: sigmas 1-16, normalised, redundancy 0.1
VARIANTS = [  # every variant spells out how it differs from vitprune's defaults
    ("authors' settings (fixed sigmas 1-16, softmax target, redundancy 0.1)", "hsic", PAPER),
    ("vitprune default (median bandwidth)", "hsic", {}),
    ("median bandwidth, labels target", "hsic", {"target": "labels"}),
    ("median bandwidth, raw (not normalised)", "hsic", {"normalized": False}),
    ("median bandwidth, no redundancy term", "hsic", {"redundancy_weight": 0.0}),
    ("median bandwidth, redundancy 0.5", "hsic", {"redundancy_weight": 0.5}),
    ("median bandwidth, unbiased estimator", "hsic", {"unbiased": True}),
    ("median bandwidth, 1024 images", "hsic", {"max_images": 1024}),
    ("activation magnitude (reference)", "activation", {}),
    ("taylor (reference)", "taylor", {}),
]
SETTINGS = [("heads -1/3", 1 / 3, 0.0), ("heads -1/2", 0.5, 0.0), ("neurons -50%", 0.0, 0.5)]
HELD_OUT_FROM = 1024  # calibration images before this index may be scored


def run_model(label: str, path: str) -> dict:
    model = load(ROOT / path)
    splits = load_splits("fashion-mnist")
    held = Subset(splits.calib, range(HELD_OUT_FROM, len(splits.calib)))
    sets = {"calib_heldout": [b for b in make_loader(held, EVAL_BATCH)]}
    if label in WITH_TEST:
        sets["test"] = [b for b in make_loader(splits.test, EVAL_BATCH)]
    shape = vit_shape(model)
    depth = len(shape.blocks)
    scored = []
    for name, criterion, opts in VARIANTS:
        t0 = time.perf_counter()
        n = opts.get("max_images", 256)
        scores = score(model, splits, criterion, n_images=n,
                       **{k: v for k, v in opts.items() if k != "max_images"})
        scored.append((name, rankings(scores), time.perf_counter() - t0))
    rows = [{"variant": name, "score_seconds": round(secs, 1)} for name, _, secs in scored]
    for split, batches in sets.items():
        objective = MaskedAccuracy(model, batches)
        rows_dense = objective(ratios_to_plan(shape, Ratios.uniform(depth, 0.0, 0.0)))
        for row, (_, rank, _) in zip(rows, scored):
            for s, h, d in SETTINGS:
                row[f"{split}: {s}"] = objective(ratios_to_plan(
                    shape, Ratios.uniform(depth, heads=h, neurons=d), rankings=rank))
        objective.close()
        rows[0][f"{split}: dense"] = rows_dense
    return {"model": label, "path": path, "held_out_images": len(held),
            "threads": torch.get_num_threads(), "rows": rows}


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (label, path) in enumerate(MODELS.items()):
        dest = args.out / f"model{i}.json"
        if not dest.exists():
            fsutil.write_json(dest, run_model(label, path))
            print(dest, flush=True)


def cmd_report(args: argparse.Namespace) -> None:
    models = [json.loads(p.read_text()) for p in sorted(args.runs.glob("model*.json"))]
    record = {"command": "python benchmarks/hsic_variants.py run --threads N --out RUNS; "
                         "python benchmarks/hsic_variants.py report --runs RUNS",
              "held_out_from": HELD_OUT_FROM, "models": models}
    pages.publish(ROOT / "docs" / "hsic_variants", record, page)


def page(r: dict) -> str:
    lines = ["# HSIC criterion variants, chosen on calibration images (no fine-tuning)", "",
             "Generated by `benchmarks/hsic_variants.py report` from `docs/hsic_variants.json` "
             "(commands in the script's docstring). Each variant scores on the first 256 "
             "calibration images (1,024 where it says); the components it ranks lowest are "
             "removed uniformly in every block; top-1 of the masked model on the held-out "
             f"calibration images (from image {r['held_out_from']} on: the selection split) "
             "and, for the record, on the 10,000 test images. Choices are made on the first.", ""]
    for m in r["models"]:
        rows = m["rows"]
        test_dense = rows[0].get("test: dense")
        lines += [f"## {m['model']}: `{m['path']}`", "",
                  f"Dense: held-out calibration {rows[0]['calib_heldout: dense']:.2f} "
                  f"({m['held_out_images']} images)"
                  + (f", test {test_dense:.2f}." if test_dense is not None else
                     "; test not measured on this model (its cost).")
                  + (f" Scoring times on {m['threads']} thread(s)." if "threads" in m else ""),
                  "",
                  "| variant | " + " | ".join(f"calib {s}" for s, _, _ in SETTINGS) + " | "
                  + " | ".join(f"test {s}" for s, _, _ in SETTINGS) + " | scoring (s) |",
                  "|---|" + "---|" * (2 * len(SETTINGS) + 1)]
        best = {s: max(row[f"calib_heldout: {s}"] for row in rows) for s, _, _ in SETTINGS}
        for row in rows:
            calib = [f"**{row[f'calib_heldout: {s}']:.2f}**"
                     if row[f"calib_heldout: {s}"] == best[s] else f"{row[f'calib_heldout: {s}']:.2f}"
                     for s, _, _ in SETTINGS]
            test = [f"{row[f'test: {s}']:.2f}" if f"test: {s}" in row else "-"
                    for s, _, _ in SETTINGS]
            lines.append(f"| {row['variant']} | " + " | ".join(calib) + " | " + " | ".join(test)
                         + f" | {row['score_seconds']:.1f} |")
        lines.append("")
    lines += ["Bold: the best on the held-out calibration images in its column.", "",
              "## Reading", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", type=Path, default=Path("runs/hsic_variants"))
    run.add_argument("--threads", type=int, default=1)
    rep = sub.add_parser("report")
    rep.add_argument("--runs", type=Path, default=Path("runs/hsic_variants"))
    args = ap.parse_args(argv)
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
