"""Speed of physically pruned DeiT-S vs dense: MACs, params, latency, throughput, speed-up / ideal.

Uniform plans at about 40% fewer MACs cutting heads only, neurons only, tokens only and all three
(heads alone cannot reach 40%: the smallest heads-only model keeps 68% of the MACs, so it is
measured at 70%). Random weights: speed does not depend on their values.

    python benchmarks/surgery_speed.py --out docs/surgery_speed          # CPU, 2 threads
    python benchmarks/surgery_speed.py --device cuda --batches 1 256 --out docs/surgery_speed_gpu

Run it on quiet cores: nothing else should load the machine while it measures. The page is
:func:`page` of its JSON; its hand-written reading is kept between the page's reading markers when
the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.cost import macs  # noqa: E402
from vitprune.models import build_model  # noqa: E402
from vitprune.plan import PrunePlan, planned_shape  # noqa: E402
from vitprune.search.space import solve_uniform  # noqa: E402
from vitprune.speed import measure  # noqa: E402
from vitprune.surgery import count_params, prune  # noqa: E402

# (label, target MACs fraction, dims on, neuron multiple)
CONFIGS = [
    ("dense", 1.0, {}, 1),
    ("heads only (70%)", 0.70, dict(heads=True, neurons=False, tokens=False), 1),
    ("neurons only", 0.60, dict(heads=False, neurons=True, tokens=False), 1),
    ("neurons only, x8", 0.60, dict(heads=False, neurons=True, tokens=False), 8),
    ("tokens only", 0.60, dict(heads=False, neurons=False, tokens=True), 1),
    ("all three", 0.60, dict(heads=True, neurons=True, tokens=True), 1),
    ("all three, x8", 0.60, dict(heads=True, neurons=True, tokens=True), 8),
]


def plans(model_name: str):
    dense = build_model(model_name)
    shape = vit_shape(dense)
    for label, target, dims, mult in CONFIGS:
        if label == "dense":
            yield label, PrunePlan.dense(shape), 0.0
            continue
        r, plan = solve_uniform(shape, target, neuron_multiple=mult, **dims)
        yield label, plan, r


def describe(plan: PrunePlan) -> str:
    b = plan.blocks[0]
    toks = f", tokens keep {plan.tokens[0].keep_rate:.3f} at {[t.block + 1 for t in plan.tokens]}" \
        if plan.tokens else ""
    return f"heads {len(b.heads)}, neurons {len(b.neurons)}{toks}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    args = ap.parse_args()

    torch.manual_seed(0)
    dense = build_model(args.model).eval()
    shape = vit_shape(dense)
    dense_macs = macs(shape).total
    rows = []
    for label, plan, r in plans(args.model):
        model = prune(dense, plan)
        s = planned_shape(shape, plan)
        row = {"config": label, "ratio": round(r, 4), "plan": describe(plan),
               "gmacs": macs(s).total / 1e9, "macs_kept": macs(s).total / dense_macs,
               "params_m": count_params(model) / 1e6}
        for b in args.batches:
            reps = args.repeats if b <= 8 else max(3, args.repeats // 2)
            m = measure(model, (3, 224, 224), b, warmup=2, repeats=reps, threads=args.threads,
                        device=args.device)
            row[f"latency_ms_b{b}"] = m["latency_ms"]
            row[f"throughput_b{b}"] = m["throughput"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = rows[0]
    for row in rows:
        ideal = dense_macs / (row["macs_kept"] * dense_macs)
        row["ideal_speedup"] = ideal
        for b in args.batches:
            sp = row[f"throughput_b{b}"] / base[f"throughput_b{b}"]
            row[f"speedup_b{b}"] = sp
            row[f"speedup_over_ideal_b{b}"] = sp / ideal
    env = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
           "device": args.device if args.device != "cpu" else
           f"cpu ({platform.processor() or platform.machine()}), {args.threads} threads",
           "date": time.strftime("%Y-%m-%d"), "model": args.model, "batches": args.batches}
    record = {"env": env, "rows": rows}
    print(pages.publish(args.out, record, page))
    return 0


def page(record: dict) -> str:
    """The page's generated text, from ``docs/surgery_speed.json`` alone."""
    rows, env = record["rows"], record["env"]
    batches, model = env["batches"], env["model"]
    head = ["config", "plan (per block)", "GMACs", "MACs kept", "params (M)"]
    for b in batches:
        head += [f"latency b{b} (ms)", f"img/s b{b}", f"speed-up b{b}", f"speed-up / ideal b{b}"]
    lines = [f"# Physically pruned {model}: measured speed", "",
             f"Command: `{env['command']}`  ",
             f"Device: {env['device']}; torch {env['torch']}; {env['date']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["config"], r["plan"], f"{r['gmacs']:.2f}", f"{r['macs_kept']:.3f}", f"{r['params_m']:.1f}"]
        for b in batches:
            cells += [f"{r[f'latency_ms_b{b}']:.1f}", f"{r[f'throughput_b{b}']:.1f}",
                      f"{r[f'speedup_b{b}']:.2f}x", f"{r[f'speedup_over_ideal_b{b}']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ideal speed-up = dense MACs / pruned MACs. Speed-up = pruned throughput / dense "
              "throughput, measured in the same run (median of repeats after warm-up).", "",
              "## Reading"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
