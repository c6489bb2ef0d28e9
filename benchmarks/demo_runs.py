"""`make demo`'s job, timed, over seeds: what a user of the README's first command should expect.

Runs ``python -m vitprune.demo`` (the job `make demo` runs, on the shipped Fashion-MNIST baseline)
once per seed, each into its own run directory, times it as a whole process, and writes the
results with their range:

    python benchmarks/demo_runs.py --seeds 0 1 --out docs/demo

Seed 0 is `make demo` itself (``runs/demo``); other seeds go to ``runs/demo_s<seed>``. A finished
run is read, not run again (its wall time was recorded when it ran). Time it on quiet cores.

``--dense-reference`` also gives the dense baseline the demo's fine-tuning (the same epochs,
recipe and seed, distilled from its own copy; ``runs/demo_dense_s<seed>``), so that the demo's
fine-tuned accuracy is compared with equal training, not with the baseline as shipped.
The page is :func:`page` of docs/demo.json; its hand-written reading is kept between the page's
reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune import fsutil  # noqa: E402
from vitprune.compression import read_run  # noqa: E402
from vitprune.rundir import read_state  # noqa: E402

WALL = "demo_wall.json"  # written beside each run directory when this script times it


def run_dir(seed: int) -> Path:
    return Path("runs/demo") if seed == 0 else Path(f"runs/demo_s{seed}")


def run(seed: int) -> dict:
    """Run (or read) the demo with ``seed``; its evaluation and wall time."""
    out = run_dir(seed)
    wall_file = out.parent / f"{out.name}.{WALL}"
    if read_state(out) is None or not read_run(out).finished:
        cmd = [sys.executable, "-m", "vitprune.demo"] + (
            [] if seed == 0 else ["--seed", str(seed), "--out", str(out)])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        fsutil.write_json(wall_file, {"seconds": round(time.perf_counter() - t0, 1),
                                      "command": " ".join(cmd)})
    metrics = read_run(out).metrics
    rows = metrics.rows
    d, f = rows["dense"], rows["finetuned"]
    # timed by this script on quiet cores, or not: then neither its wall time nor its speed is kept
    wall = json.loads(wall_file.read_text())["seconds"] if wall_file.exists() else None
    speed = {"throughput_speedup_b64": f.timed("cpu", 64)["throughput"]
             / d.timed("cpu", 64)["throughput"],
             "latency_speedup_b1": d.timed("cpu", 1)["latency_ms"]
             / f.timed("cpu", 1)["latency_ms"]} if wall else {
        "throughput_speedup_b64": None, "latency_speedup_b1": None}
    return {"seed": seed, "out": str(out), "wall_seconds": wall, "threads": metrics.threads,
            "macs_kept": metrics.macs_kept, "params_m": f.params / 1e6,
            "dense_top1": d.test_top1, "pruned_top1": rows["pruned"].test_top1,
            "finetuned_top1": f.test_top1, **speed}


BASELINE = "vitprune/assets/fmnist_vit_d12"


def dense_reference(seed: int) -> float:
    """Test top-1 of the dense baseline given the demo's fine-tuning at ``seed`` (run once; its
    result is kept in ``runs/demo_dense_s<seed>.json``)."""
    from vitprune.demo import DEMO

    done = Path(f"runs/demo_dense_s{seed}.json")
    if not done.exists():
        epochs = DEMO[DEMO.index("--epochs") + 1]
        cmd = [sys.executable, "-m", "vitprune", "finetune", "--student", BASELINE,
               "--teacher", BASELINE, "--data", "fashion-mnist", "--epochs", epochs,
               "--seed", str(seed), "--out", f"runs/demo_dense_s{seed}", "--resume", "--json",
               "--quiet"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        fsutil.write_json(done, json.loads(out))
    return json.loads(done.read_text())["test_top1"]


def spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return (f"{format(statistics.mean(values), fmt)} [{format(min(values), fmt)}-"
            f"{format(max(values), fmt)}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", type=Path, required=True, help="docs/demo: writes .md and .json")
    ap.add_argument("--dense-reference", action="store_true",
                    help="also fine-tune the dense baseline alike, per seed (not timed)")
    ap.add_argument("--rows-from", type=Path, help="take the finished demo rows from this "
                    "committed JSON (docs/demo.json) instead of their run directories")
    args = ap.parse_args()
    kept = ({r["seed"]: r for r in json.loads(args.rows_from.read_text())["rows"]}
            if args.rows_from else {})
    rows = [kept[s] if s in kept else run(s) for s in args.seeds]
    if args.dense_reference:
        for r in rows:
            r["dense_reference_top1"] = dense_reference(r["seed"])
    command = "python benchmarks/demo_runs.py " + " ".join(sys.argv[1:])
    if args.rows_from:  # the rows' own command made them; this one added the references
        command = json.loads(args.rows_from.read_text())["command"] + " --dense-reference"
    record = {"command": command, "rows": rows}
    print(pages.publish(args.out, record, page))
    return 0


def page(record: dict) -> str:
    """The page's generated text, from ``docs/demo.json`` alone."""
    rows = record["rows"]
    lines = ["# `make demo`: what to expect", "",
             f"Command: `{record['command']}` (on two quiet CPU cores). Each row is the whole job "
             "of `make demo` (HSIC scores, a 24-evaluation GP-EI search at budget 0.6, physical "
             "pruning, 3 epochs of fine-tuning with distillation, evaluation and CPU speed) with "
             "one seed; seed 0 is `make demo` itself.", "",
             "| seed | wall (min) | MACs kept | params (M) | test top-1 dense | pruned | "
             "fine-tuned | dense fine-tuned alike | throughput b64 | latency b1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        timed = r["wall_seconds"] is not None
        wall, thr, lat = (f"{r['wall_seconds'] / 60:.1f}", f"{r['throughput_speedup_b64']:.2f}x",
                          f"{r['latency_speedup_b1']:.2f}x") if timed else ("-", "-", "-")
        lines.append(f"| {r['seed']} | {wall} | {r['macs_kept']:.1%} | {r['params_m']:.3f} | "
                     f"{r['dense_top1']:.2f} | {r['pruned_top1']:.2f} | "
                     f"**{r['finetuned_top1']:.2f}** | "
                     + (f"{r['dense_reference_top1']:.2f}" if "dense_reference_top1" in r else "-")
                     + f" | {thr} | {lat} |")
    timed = [r for r in rows if r["wall_seconds"]]
    refs = [r for r in rows if "dense_reference_top1" in r]
    lines += ["", "Expect (mean [range] over the seeds above): test top-1 "
              f"{spread([r['finetuned_top1'] for r in rows], '.2f')} against the dense "
              f"{rows[0]['dense_top1']:.2f}"
              + (f" (the dense model given the same fine-tuning: "
                 f"{spread([r['dense_reference_top1'] for r in refs], '.2f')}, seeds "
                 f"{', '.join(str(r['seed']) for r in refs)})" if refs else "")
              + f", at {spread([r['macs_kept'] for r in rows], '.1%')} "
              "of the MACs"]
    if timed:
        lines[-1] += (", throughput at batch 64 "
                      f"{spread([r['throughput_speedup_b64'] for r in timed], '.2f')}x, in "
                      f"{spread([r['wall_seconds'] / 60 for r in timed], '.1f')} minutes "
                      "(rows timed on quiet cores; '-': run beside other work, not timed)")
    lines[-1] += "."
    return "\n".join([*lines, "", "## Reading"])


if __name__ == "__main__":
    sys.exit(main())
