"""Dense against pruned in each deployment runtime: eager PyTorch, torch.compile, onnxruntime and
onnxruntime int8 (plus PyTorch's eager int8), CPU.

Cases: the shipped Fashion-MNIST baseline against its compressed models at 60% and 40% of the
MACs (run directories of ``vitprune compress``, fine-tuned), and DeiT-S at 224 (random weights)
against its uniform plan at 60% of the MACs with heads, neurons and tokens cut (a searched plan
needs a trained model; speed does not). For each case, runtime and batch size, the dense and
the pruned model are timed in turn, round after round, in one process, so that their ratio (the
speed-up in that runtime) compares like with like. For the Fashion-MNIST models, test top-1 of
every runtime's model (float32 and int8) on the 10,000 test images.

    python benchmarks/deploy.py --out docs/deploy

The compressed models are made by (docs/compress.md)
``vitprune compress --model vitprune/assets/fmnist_vit_d12 --data fashion-mnist --budget B
--threads 1 --out runs/compress/bB`` for B in 0.6 and 0.4. Results go to ``--out``.json after
every measurement, and a re-run skips what is there (``--redo`` measures again). Time on quiet
cores only. The page is :func:`page` of docs/deploy.json; its hand-written reading is kept
between the page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

import vitprune  # noqa: E402
from vitprune import fsutil  # noqa: E402
from vitprune.adapters import input_shape, vit_shape  # noqa: E402
from vitprune.cost import macs  # noqa: E402
from vitprune.io import load  # noqa: E402
from vitprune.io.export import export_onnx, ort_runner  # noqa: E402
from vitprune.models import build_model  # noqa: E402
from vitprune.runtime import quantize_eager, runner  # noqa: E402
from vitprune.search.space import solve_uniform  # noqa: E402
from vitprune.speed import THOROUGH, compare, timing  # noqa: E402
from vitprune.surgery import prune  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "vitprune" / "assets" / "fmnist_vit_d12"
# (name, runtime, int8) in the order of the tables
RUNTIMES = [("eager", "eager", False), ("compile", "compile", False),
            ("onnxruntime", "onnxruntime", False), ("onnxruntime int8", "onnxruntime", True),
            ("eager int8", "eager", True)]
DEIT = "deit_small_patch16_224"
# DeiT-S takes 1-3 s per batch of 32 on two cores: fewer rounds than THOROUGH, same design.
DEIT_TIMING = {"rounds_batch1": 9, "rounds": 5, "reps_batch1": 5, "reps": 1}


def cases(runs: Path) -> dict[str, dict]:
    """name -> {dense, pruned, batch, timing, data} (models built lazily: DeiT-S is large)."""
    out = {}
    for b in ("0.6", "0.4"):
        d = runs / f"b{b}" / "model"
        out[f"fmnist {b}"] = {"dense": lambda: load(BASELINE), "pruned": (lambda d=d: load(d)),
                              "path": d, "batch": 64, "timing": THOROUGH, "data": True}
    out["deit_s 0.6"] = {"dense": _deit, "pruned": lambda: _deit(0.6), "path": None,
                         "batch": 32, "timing": DEIT_TIMING, "data": False}
    return out


def _deit(target: float | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(DEIT).eval()
    if target is None:
        return model
    _, plan = solve_uniform(vit_shape(model), target, heads=True, neurons=True, tokens=True)
    return prune(model, plan).eval()


def time_pair(dense, pruned, runtime: str, int8: bool, batch: int, plan: dict) -> dict:
    shape = input_shape(dense)
    with runner(dense, runtime, shape, batch, int8=int8, threads=torch.get_num_threads()) as rd, \
            runner(pruned, runtime, shape, batch, int8=int8,
                   threads=torch.get_num_threads()) as rp:
        res = compare({"dense": rd, "pruned": rp}, shape, batch, **timing(batch, plan))
    return {"dense": res["dense"], "pruned": res["pruned"],
            "speedup": res["dense"]["latency_ms"] / res["pruned"]["latency_ms"]}


@torch.inference_mode()
def top1(run, test, batch: int = 500) -> float:
    """Test top-1 (%) of a callable (module or onnxruntime runner) over ``test``."""
    correct = n = 0
    for i in range(0, len(test), batch):
        xs, ys = zip(*(test[j] for j in range(i, min(i + batch, len(test)))))
        x, y = torch.stack(xs), torch.as_tensor(ys)
        logits = run(x)
        pred = torch.from_numpy(np.asarray(logits)).argmax(1) if not torch.is_tensor(logits) \
            else logits.argmax(1)
        correct += (pred == y).sum().item()
        n += len(y)
    return 100.0 * correct / n


def accuracies(models: dict[str, torch.nn.Module], test) -> dict:
    """Per model: test top-1 in eager float32, onnxruntime float32 and int8, eager int8."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m in models.items():
            shape = input_shape(m)
            row = {"eager": top1(m, test), "eager int8": top1(quantize_eager(m), test)}
            for label, int8 in (("onnxruntime", False), ("onnxruntime int8", True)):
                path = Path(tmp) / f"{name}-{int8}.onnx"
                export_onnx(m, shape, path, dynamic_batch=True, batch=2, int8=int8)
                row[label] = top1(ort_runner(path, torch.get_num_threads()), test)
            out[name] = row
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/compress"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2,
                    help="timing runs (each times every case again); the tables give the range")
    ap.add_argument("--only", nargs="*", help="case names to measure (default: all)")
    ap.add_argument("--redo", action="store_true", help="measure again what --out.json holds")
    ap.add_argument("--out", type=Path, required=True, help="docs/deploy (writes .json, .md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    all_cases = cases(args.runs)
    todo = args.only or list(all_cases)
    missing = [n for n in todo if all_cases[n]["path"] and not all_cases[n]["path"].is_dir()]
    if missing:
        sys.exit(f"missing compressed models for {missing}: make them with the vitprune "
                 "compress command in this script's docstring")
    jpath = args.out.with_suffix(".json")
    res = json.loads(jpath.read_text()) if jpath.exists() and not args.redo else {}
    res.setdefault("runs", [])
    res.setdefault("top1", {})
    for r in range(args.repeat):
        if r == len(res["runs"]):
            res["runs"].append({"env": {
                "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                "vitprune": vitprune.__version__, "threads": args.threads,
                "cpu": platform.processor() or platform.machine(),
                "date": time.strftime("%Y-%m-%d %H:%M")}, "cases": {}})
        for name in todo:
            measure_case(name, all_cases[name], res, res["runs"][r], jpath, r)
    pages.write(args.out.with_suffix(".md"), page(res), after="## Reading")
    return 0


def measure_case(name: str, c: dict, res: dict, run: dict, jpath: Path, r: int) -> None:
    """Time (and, once, evaluate) one case; what ``run`` already holds is skipped."""
    cell = run["cases"].setdefault(name, {})
    keys = [(label, runtime, int8, b) for label, runtime, int8 in RUNTIMES
            for b in (1, c["batch"])]
    if all(f"{k[0]} | batch {k[3]}" in cell.get("speed", {}) for k in keys) and \
            (name in res["top1"] or not c["data"]):
        return
    dense, pruned = c["dense"](), c["pruned"]()
    res.setdefault("gmacs", {})[name] = {"dense": macs(vit_shape(dense)).total / 1e9,
                                         "pruned": macs(vit_shape(pruned)).total / 1e9}
    for label, runtime, int8, b in keys:
        key = f"{label} | batch {b}"
        if key in cell.get("speed", {}):
            continue
        torch._dynamo.reset()
        t0 = time.perf_counter()
        s = cell.setdefault("speed", {})[key] = time_pair(dense, pruned, runtime, int8, b,
                                                         c["timing"])
        print(f"run {r + 1} {name:>12} {key:<28} speed-up {s['speedup']:.2f}x "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        fsutil.write_json(jpath, res)
    if c["data"] and name not in res["top1"]:
        from vitprune.data import load_splits

        res["top1"][name] = accuracies({"dense": dense, "pruned": pruned},
                                       load_splits("fashion-mnist").test)
        print(f"{name:>12} top-1 {res['top1'][name]}", flush=True)
        fsutil.write_json(jpath, res)


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else \
        f"{fmt.format(lo)}-{fmt.format(hi)}"


def page(res: dict) -> str:
    """The page's generated text, from ``docs/deploy.json`` alone."""
    runs = res["runs"]
    env = runs[0]["env"]
    lines = ["# Deployment: the pruned model's speed-up in each runtime", "",
             "Command: `python benchmarks/deploy.py --out docs/deploy`  ",
             f"CPU ({env['cpu']}), {env['threads']} threads; torch {env['torch']}, onnxruntime "
             f"{env['onnxruntime']}, vitprune {env['vitprune']}; {len(runs)} timing runs "
             f"({', '.join(r['env']['date'] for r in runs)}), quiet cores. In each run dense and "
             "pruned are timed in turn, round after round, in one process (medians); a speed-up "
             "is dense time / pruned time in the same runtime and run, and the tables give its "
             "range over the runs. Dense and pruned columns: the first run. \"vs eager\": the "
             "speed-up in that runtime / the speed-up in eager PyTorch, per run (1.00: pruning "
             "pays exactly as much as in eager).", ""]
    for name, g in res.get("gmacs", {}).items():
        cells = [r["cases"][name]["speed"] for r in runs if name in r["cases"]]
        lines += [f"## {name}: {g['pruned'] * 1e3:.1f} of {g['dense'] * 1e3:.1f} MMACs "
                  f"({g['pruned'] / g['dense']:.1%})", "",
                  "| runtime | batch | dense | pruned | speed-up | vs eager |",
                  "|---|---|---|---|---|---|"]
        for key, s in cells[0].items():
            label, b = key.split(" | batch ")
            ups = [c[key]["speedup"] for c in cells if key in c]
            rel = [c[key]["speedup"] / c[f"eager | batch {b}"]["speedup"] for c in cells
                   if key in c and f"eager | batch {b}" in c]
            unit = (lambda r: f"{r['latency_ms']:.2f} ms") if b == "1" else \
                (lambda r: f"{r['throughput']:.0f} img/s")
            lines.append(f"| {label} | {b} | {unit(s['dense'])} | {unit(s['pruned'])} | "
                         f"{_span(ups, '{:.2f}')}x | {_span(rel, '{:.2f}')} |")
        if name in res.get("top1", {}):
            t = res["top1"][name]
            cols = list(t["dense"])
            lines += ["", "Fashion-MNIST test top-1 (10,000 images); the last column is what "
                      "onnxruntime int8 costs against eager float32 (negative: a gain):", "",
                      "| model | " + " | ".join(cols) + " | int8 cost (points) |",
                      "|---|" + "---|" * (len(cols) + 1)]
            for m, row in t.items():
                cost = row["eager"] - row["onnxruntime int8"]
                lines.append(f"| {m} | " + " | ".join(f"{row[c]:.2f}" for c in cols)
                             + f" | {cost:+.2f} |")
        lines.append("")
    return "\n".join([*lines, "## Reading"])


if __name__ == "__main__":
    sys.exit(main())
