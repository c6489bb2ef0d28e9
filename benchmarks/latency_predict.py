"""docs/latency.md and its JSON: how well a latency table predicts the measured time of pruned
models.

For each case (model, device, batch) it builds the latency table (``vitprune latency-table``'s
code), cuts 20 random plans (random heads, MLP neurons and token stages in every block), builds
each pruned model physically and times it whole; the error is predicted / measured - 1. Models
are timed in rounds of all models in turn, each model a warm-up and several calls back to back,
the fastest call kept: the same statistic as the table's cells.

    python benchmarks/latency_predict.py run --case fmnist_b64 --out runs/latency
    python benchmarks/latency_predict.py run --case deit_s_b32 --out runs/latency   # minutes
    python benchmarks/latency_predict.py run --case swin_t_b32 --out runs/latency   # minutes
    python benchmarks/latency_predict.py run --case deit_s_b256_cuda --out runs/latency  # GPU
    python benchmarks/latency_predict.py report runs/latency --out docs/latency

Each case's directory keeps its table and results: a re-run reuses the table and skips a case
that is done. Time nothing else on the machine meanwhile. The page is :func:`page` of
docs/latency.json; its hand-written reading (what a latency table is, and how to read these
figures) is kept between the page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import pages  # noqa: E402

from vitprune import fsutil, load  # noqa: E402
from vitprune.adapters import input_shape, vit_shape  # noqa: E402
from vitprune.latency import LatencyTable  # noqa: E402
from vitprune.models import build_model  # noqa: E402
from vitprune.plan import BlockPlan, PrunePlan, TokenStage, planned_shape  # noqa: E402
from vitprune.profile import build_table, device_name  # noqa: E402
from vitprune.speed import Timer  # noqa: E402
from vitprune.surgery import prune  # noqa: E402

SHIPPED = ROOT / "vitprune" / "assets" / "fmnist_vit_d12"
CASES = {
    "fmnist_b1": dict(model="shipped", batch=1, device="cpu", rounds=3, repeats=7),
    "fmnist_b64": dict(model="shipped", batch=64, device="cpu", rounds=3, repeats=7),
    "deit_s_b32": dict(model="deit_small_patch16_224", batch=32, device="cpu", rounds=2,
                       repeats=3, token_points=16),
    "deit_s_b256_cuda": dict(model="deit_small_patch16_224", batch=256, device="cuda",
                             rounds=3, repeats=9),
    # Swin-T: a table with one grid per stage (no token stages); 10 plans keep it to minutes
    "swin_t_b32": dict(model="swin_tiny_patch4_window7_224", batch=32, device="cpu", rounds=1,
                       repeats=2, plans=10),
}
PLANS = 20


def random_plans(shape, count: int, seed: int = 0) -> list[PrunePlan]:
    """Random plans: per block a random number of random heads and neurons (at least one of
    each), token stages at a quarter, half and three quarters of the depth keeping 30-100%."""
    rng = np.random.default_rng(seed)
    L = len(shape.blocks)
    stages = [] if shape.windowed else sorted({L // 4, L // 2, 3 * L // 4})
    plans = []
    for _ in range(count):
        blocks = tuple(
            BlockPlan(rng.choice(b.heads, int(rng.integers(1, b.heads + 1)), replace=False),
                      rng.choice(b.mlp_hidden, int(rng.integers(1, b.mlp_hidden + 1)),
                                 replace=False))
            for b in shape.blocks)
        plans.append(PrunePlan(blocks, tuple(TokenStage(s, float(rng.uniform(0.3, 1.0)))
                                             for s in stages)))
    return plans


def run(case: str, out: Path, threads: int) -> dict:
    cfg = CASES[case]
    d = out / case
    d.mkdir(parents=True, exist_ok=True)
    if (d / "result.json").exists():
        print(f"{case}: done already ({d / 'result.json'})")
        return json.loads((d / "result.json").read_text())
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{case} needs a CUDA GPU")
    torch.set_num_threads(threads)
    model = load(SHIPPED) if cfg["model"] == "shipped" else build_model(cfg["model"]).eval()
    shape, batch, device = vit_shape(model), cfg["batch"], cfg["device"]
    if (d / "table.json").exists():
        table = LatencyTable.load(d / "table.json")
    else:
        t0 = time.perf_counter()
        table = build_table(model, batch=batch, device=device, threads=threads,
                            repeats=cfg["repeats"], token_points=cfg.get("token_points"))
        fsutil.write_json(d / "table.json", table.to_dict())
        print(f"{case}: table built in {time.perf_counter() - t0:.0f} s")
    plans = random_plans(shape, cfg.get("plans", PLANS))
    nets = [model] + [prune(model, p) for p in plans]
    timer = Timer(device, 2, cfg["repeats"], "min")
    x = torch.randn(batch, *input_shape(model), device=device)
    runs = [n.to(device).eval() for n in nets]
    measured = timer.interleaved(runs, x, rounds=cfg["rounds"])
    rows = []
    for i, (p, m) in enumerate(zip([None, *plans], measured)):
        s = shape if p is None else planned_shape(shape, p)
        pred = table.predict(s)
        rows.append({"plan": "dense" if p is None else i - 1, "measured_ms": m,
                     "predicted_ms": pred, "error": pred / m - 1})
    errs = [abs(r["error"]) for r in rows[1:]]
    res = {"case": case, **cfg, "model_name": cfg["model"] if cfg["model"] != "shipped"
           else "fmnist_vit_d12 (shipped)", "device_name": device_name(device),
           "threads": threads if device == "cpu" else None, "torch": torch.__version__,
           "table_build_s": table.meta.get("build_s"), "table_cells": table.cells,
           "median_abs_error": statistics.median(errs), "max_abs_error": max(errs),
           "dense_error": rows[0]["error"], "rows": rows}
    fsutil.write_json(d / "result.json", res)
    print(f"{case}: median |error| {res['median_abs_error']:.1%}, worst {res['max_abs_error']:.1%}")
    return res


def report(runs: Path, out: str) -> None:
    """Write the page from the cases under ``runs``; cases already on the page whose runs are
    not here (made on another machine or in another session) are kept as they were."""
    results = {r["case"]: r for r in (json.loads(p.read_text())
                                      for p in sorted(runs.glob("*/result.json")))}
    old = Path(out + ".json")
    if old.exists():
        results = {**{r["case"]: r for r in json.loads(old.read_text())["cases"]}, **results}
    record = {"cases": [results[k] for k in sorted(results)]}
    pages.publish(out, record, page)
    print("\n".join(page(record).splitlines()[:12 + len(record["cases"])]))


def page(record: dict) -> str:
    """The page's generated text, from ``docs/latency.json`` alone."""
    results = record["cases"]
    lines = [
        "# Latency tables: predicted against measured time of pruned models",
        "",
        "Made by `python benchmarks/latency_predict.py run --case CASE --out runs/latency` for "
        "each case, then `python benchmarks/latency_predict.py report runs/latency --out "
        "docs/latency` (figures in `docs/latency.json`). For each case: the model's latency "
        "table (`vitprune latency-table`), 20 random plans (random heads, MLP neurons and three "
        "token stages keeping 30-100% in every block; for Swin 10 plans, no token stages), "
        "each pruned model built and timed whole (rounds of all models in turn, each warm and "
        "timed back to back; the fastest call kept, as for the table's cells). "
        "Error = predicted / measured - 1.",
        "",
        "| case | model | device | batch | table build | cells | median abs error | worst | dense |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        dev = f"{r['device_name']}" + (f", {r['threads']} threads" if r.get("threads") else "")
        lines.append(f"| {r['case']} | {r['model_name']} | {dev} | {r['batch']} | "
                     f"{r['table_build_s']:.0f} s | {r['table_cells']} | "
                     f"{r['median_abs_error']:.1%} | {r['max_abs_error']:.1%} | "
                     f"{r['dense_error']:+.1%} |")
    lines += ["", "Target: median at most 5%, worst at most 10%.", "", "## Reading"]
    for r in results:
        lines += [f"## {r['case']}", "", "| plan | measured ms | predicted ms | error |",
                  "|---|---|---|---|"]
        lines += [f"| {row['plan']} | {row['measured_ms']:.2f} | {row['predicted_ms']:.2f} | "
                  f"{row['error']:+.1%} |" for row in r["rows"]]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--case", required=True, choices=sorted(CASES))
    r.add_argument("--out", type=Path, default=Path("runs/latency"))
    r.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("report")
    p.add_argument("runs", type=Path)
    p.add_argument("--out", default=str(ROOT / "docs" / "latency"))
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args.case, args.out, args.threads)
    else:
        report(args.runs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
