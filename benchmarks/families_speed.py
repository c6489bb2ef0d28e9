"""docs/families_speed.json: measured CPU speed-up of DeiT-S, Swin-T and EVA-02-S pruned to 60%
of their MACs, timed interleaved with their dense models (batch 32, eager PyTorch, the machine's
threads), so the families' speed-ups can be read side by side. ``docs/families.md`` shows it
(regenerate it with ``python benchmarks/families_cost.py --out docs/families`` after this).

Plans are uniform: the smallest ratio of heads and neurons in every block (and, in the second
ViT/EVA row, of tokens at the default stages too) whose plan keeps at most 60% of the MACs, the
lowest-numbered components kept (speed does not depend on which). Weights are random: speed does
not depend on them either. Each round times every model of a family once, in turn; the speed-up
is given as the median of the rounds' ratios with their range.

    python benchmarks/families_speed.py --out docs/families_speed.json   # about 4 minutes

Time it on quiet cores (pause other jobs): the ratios are only fair when nothing else loads them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from vitprune import fsutil
from vitprune.adapters import input_shape, vit_shape
from vitprune.cost import macs
from vitprune.models import build_model
from vitprune.search.space import solve_uniform
from vitprune.speed import compare
from vitprune.surgery import prune

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # family -> (model, whether it can select tokens)
    "timm ViT/DeiT": ("deit_small_patch16_224", True),
    "Swin": ("swin_tiny_patch4_window7_224", False),
    "EVA-02": ("eva02_small_patch14_224", True),
}
TARGET = 0.6


def family_rows(family: str, name: str, tokens: bool, batch: int, rounds: int) -> list[dict]:
    """Dense and pruned variants of ``name`` timed in turn for ``rounds`` rounds."""
    torch.manual_seed(0)
    dense = build_model(name).eval()
    shape = vit_shape(dense)
    full = macs(shape).total
    variants = {"dense": (dense, "-", full)}
    for dims in (("heads", "neurons"), ("heads", "neurons", "tokens"))[:2 if tokens else 1]:
        ratio, plan = solve_uniform(shape, TARGET, tokens="tokens" in dims)
        small = prune(dense, plan).eval()
        variants[" + ".join(dims)] = (small, round(ratio, 3), macs(vit_shape(small)).total)
    models = {k: v[0] for k, v in variants.items()}
    per_round: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for r in range(rounds):
            got = compare(models, input_shape(dense), batch, rounds=1, reps=1,
                          warmup=1 if r == 0 else 0)
            for k in models:
                per_round[k].append(got[k]["latency_ms"])
    rows = []
    for k, (_, ratio, n_macs) in variants.items():
        ms = per_round[k]
        ups = [d / p for d, p in zip(per_round["dense"], ms)]
        rows.append({"family": family, "model": name, "pruned": k, "ratio": ratio,
                     "macs_kept": round(n_macs / full, 4), "latency_ms": round(statistics.median(ms), 1),
                     "speedup": round(statistics.median(ups), 3),
                     "speedup_range": [round(min(ups), 3), round(max(ups), 3)],
                     "batch": batch, "rounds": rounds, "threads": torch.get_num_threads()})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "families_speed.json"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0, rows = time.perf_counter(), []
    for family, (name, tokens) in FAMILIES.items():
        rows += family_rows(family, name, tokens, args.batch, args.rounds)
        print(rows[-1], flush=True)
    fsutil.write_json(out, {
        "command": f"python benchmarks/families_speed.py --out {args.out} --batch {args.batch} "
                   f"--rounds {args.rounds}",
        "device": "cpu", "torch": torch.__version__, "target_macs": TARGET,
        "wall_s": round(time.perf_counter() - t0, 1), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
