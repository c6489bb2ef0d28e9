"""Speed and peak memory of HSIC scoring of every head and neuron: batched vs one at a time.

DeiT-S (random weights: speed does not depend on their values) scored with the ``hsic``
criterion on random 224x224 calibration images, on CPU. Three ways to compute the same numbers
from the same collected features:

* batched: ``HSICCriterion.score_block``, all components of a block in chunked tensor expressions;
* loop, per-component maths: one component at a time, each its own standardisation, Gram
  matrix, ``Hc`` centring by matrix products and ``trace(K Hc L Hc)`` per call (normalised:
  three traces), the way HSIC scoring is usually written (and the authors' release does it);
* loop, batched maths: :func:`hsic_to_target` called with one component at a time (the gain
  of batching alone, the maths being the same).

The loops are timed on a sample of neurons per block and extrapolated to all calls the batched
version replaces (D neuron relevances + H head relevances + H(H-1)/2 head pairs per block); the
output says so. The forward passes that collect features are common to all and timed apart.
Peak memory: resident-set high-water mark of the phase above the resident set at its start
(Linux ``/proc/self/clear_refs`` resets the mark; torch's CPU tensors are malloc'd, so they count).

    python benchmarks/scoring_speed.py                      # full: 12 blocks, 64 and 256 images
    python benchmarks/scoring_speed.py --quick              # 2 blocks, 16 and 32 images

Run the full version on quiet cores: nothing else should load the machine while it measures.
The page is :func:`page` of its JSON; its hand-written reading is kept between the page's reading
markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script from a checkout: find vitprune beside benchmarks/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.models import build_model  # noqa: E402
from vitprune.scoring.collect import block_feature_bytes, collect, feature_groups  # noqa: E402
from vitprune.scoring.criteria import HSICCriterion  # noqa: E402
from vitprune.scoring.hsic import DEFAULT_SIGMAS, hsic_to_target  # noqa: E402

MIB = 1024 * 1024


# ---- memory -------------------------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def measured(fn: Callable[[], object]) -> tuple[object, float, float | None]:
    """(result, seconds, peak MiB above the phase's starting RSS, or None if not measurable)."""
    can = _reset_peak()
    start = _status_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    if not can or start is None or peak is None:
        return out, secs, None
    return out, secs, (peak - start) / 1024


# ---- the one-component-at-a-time reference -----------------------------------------------------

def loop_hsic(x: torch.Tensor, target: torch.Tensor, sigmas=DEFAULT_SIGMAS) -> float:
    """Normalised biased HSIC of one component (n, p) with a target Gram (n, n), per-call maths."""
    n, p = x.shape
    x = x.float()
    std = x.std(dim=0, unbiased=False)
    z = torch.where(std > 0, (x - x.mean(dim=0)) / torch.where(std > 0, std, 1), 0.0)
    d = torch.cdist(z, z).pow(2) / p
    k = sum(torch.exp(-d / (2 * s * s)) for s in sigmas) / len(sigmas)
    h = torch.eye(n) - torch.full((n, n), 1.0 / n)
    kh, lh = k @ h, target @ h
    hxy = torch.trace(kh @ lh) / (n - 1) ** 2
    hxx = torch.trace(kh @ kh) / (n - 1) ** 2
    hyy = torch.trace(lh @ lh) / (n - 1) ** 2
    denom = torch.sqrt(hxx * hyy)
    return float(hxy / denom) if denom > 0 else 0.0


# ---- one configuration --------------------------------------------------------------------------

def time_loops(feats: dict[int, torch.Tensor], target: torch.Tensor, picks: dict[int, list[int]]
               ) -> tuple[float, float, float]:
    """(per-component-maths loop s, batched-maths loop s, max |loop - batched|) on the picks."""
    t0 = time.perf_counter()
    ref = {i: [loop_hsic(feats[i][j], target.float()) for j in picks[i]] for i in picks}
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in picks:
        for j in picks[i]:
            hsic_to_target(feats[i][j:j + 1], target, chunk=1)
    t_same = time.perf_counter() - t0
    diff = max((hsic_to_target(feats[i][picks[i]], target) - torch.tensor(ref[i])).abs().max().item()
               for i in picks)
    return t_loop, t_same, diff


def run(model, shape, n: int, blocks: list[int], sample: int, chunk: int, max_bytes: int,
        seed: int) -> dict:
    """Score ``blocks`` as HSICCriterion does (one loader pass per group of blocks that fits
    ``max_bytes``), timing each phase, and time the loops on a sample of each block's neurons."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 224, 224, generator=gen)
    loader = [(images[i:i + 32], torch.zeros(min(32, n - i), dtype=torch.long))
              for i in range(0, n, 32)]
    crit = HSICCriterion(max_images=n, chunk=chunk)
    groups = [g for g in (tuple(i for i in grp if i in blocks)
                          for grp in feature_groups(shape, n, torch.float16, max_bytes)) if g]
    t = {"collect": 0.0, "batched": 0.0, "loop": 0.0, "same": 0.0}
    peaks, diff, first, target = {"collect": [], "batched": []}, 0.0, None, None
    for group in groups:
        got, secs, peak = measured(lambda: collect(
            model, loader, shape, blocks=group, max_images=n, feature_dtype=torch.float16,
            statistics=first is None))
        t["collect"] += secs
        peaks["collect"].append(peak)
        if first is None:
            first, target = got, crit.target_gram(got, shape.num_classes)  # (n, n) float64
        _, secs, peak = measured(lambda got=got: [crit.score_block(
            got.features[i].heads, got.features[i].neurons, target, first.neuron_abs[i])
            for i in group])
        t["batched"] += secs
        peaks["batched"].append(peak)
        picks = {i: torch.randperm(shape.blocks[i].mlp_hidden, generator=gen)[:sample].tolist()
                 for i in group}
        loop, same, d = time_loops({i: got.features[i].neurons for i in group}, target, picks)
        t["loop"], t["same"], diff = t["loop"] + loop, t["same"] + same, max(diff, d)
        del got
    calls = sum(b.mlp_hidden + b.heads + b.heads * (b.heads - 1) // 2
                for b in (shape.blocks[i] for i in blocks))
    timed = sample * len(blocks)
    loop_s, same_s = t["loop"] / timed * calls, t["same"] / timed * calls
    return {
        "images": n, "blocks": len(blocks), "passes": len(groups), "components": calls,
        "collect_s": t["collect"], "collect_peak_mib": _max(peaks["collect"]),
        "features_mib": sum(block_feature_bytes(shape, i, n, torch.float16) for i in blocks) / MIB,
        "batched_s": t["batched"], "batched_peak_mib": _max(peaks["batched"]),
        "loop_s_extrapolated": loop_s, "loop_same_maths_s_extrapolated": same_s,
        "loop_calls_timed": timed,
        "speedup": loop_s / t["batched"], "speedup_same_maths": same_s / t["batched"],
        "speedup_end_to_end": (t["collect"] + loop_s) / (t["collect"] + t["batched"]),
        "max_abs_diff_loop_vs_batched": diff,
    }


def _max(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else max(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--images", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--blocks", type=int, default=None, help="score the first B blocks (all)")
    ap.add_argument("--sample", type=int, default=32,
                    help="neurons per block timed one at a time, then extrapolated")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-feature-mib", type=int, default=1024,
                    help="features per loader pass, as HSICCriterion.max_feature_bytes")
    ap.add_argument("--quick", action="store_true", help="2 blocks, 16 and 32 images, sample 8")
    ap.add_argument("--out", type=Path, default=Path("docs/scoring_speed"),
                    help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    if args.quick:
        args.images, args.blocks, args.sample = [16, 32], 2, 8
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    shape = vit_shape(model)
    blocks = list(range(min(args.blocks or len(shape.blocks), len(shape.blocks))))
    rows = []
    for n in args.images:
        row = run(model, shape, n, blocks, args.sample, args.chunk, args.max_feature_mib * MIB,
                  seed=n)
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {"command": "python " + " ".join(sys.argv), "torch": torch.__version__,
           "device": f"cpu ({platform.processor() or platform.machine()}), "
                     f"{args.threads} thread(s)",
           "model": args.model, "quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
           "peak_rss_total_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    record = {"env": env, "rows": rows}
    print(pages.publish(args.out, record, page))
    return 0


def _mib(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.0f}"


def page(record: dict) -> str:
    """The page's generated text, from ``docs/scoring_speed.json`` alone."""
    rows, env = record["rows"], record["env"]
    head = ["images", "blocks", "passes", "HSIC calls", "collect (s)", "collect peak (MiB)",
            "features (MiB)", "batched (s)", "batched peak (MiB)", "loop* (s)", "speed-up",
            "loop, batched maths* (s)", "speed-up", "end-to-end speed-up", "max |diff|"]
    lines = [f"# HSIC scoring speed: {env['model']}"
             + (" (QUICK run: not the full benchmark)" if env["quick"] else ""), "",
             f"Command: `{env['command']}`  ",
             f"Device: {env['device']}; torch {env['torch']}; {env['date']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["images"], r["blocks"], r["passes"], r["components"], f"{r['collect_s']:.1f}",
                 _mib(r["collect_peak_mib"]), f"{r['features_mib']:.0f}", f"{r['batched_s']:.2f}",
                 _mib(r["batched_peak_mib"]), f"{r['loop_s_extrapolated']:.1f}",
                 f"{r['speedup']:.0f}x", f"{r['loop_same_maths_s_extrapolated']:.1f}",
                 f"{r['speedup_same_maths']:.0f}x", f"{r['speedup_end_to_end']:.1f}x",
                 f"{r['max_abs_diff_loop_vs_batched']:.1e}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    timed = rows[0]["loop_calls_timed"] if rows else 0
    lines += [
        "",
        f"\\* Loops timed on {timed} neuron calls per configuration (a random sample of each "
        "block's neurons) and extrapolated linearly to all HSIC calls the batched version makes "
        "(D neuron relevances + H head relevances + H(H-1)/2 head pairs per block).",
        "Speed-up = loop / batched scoring time on the same collected features. End-to-end adds "
        "the feature-collecting forward passes (common to both) to each side.",
        "Passes = loader passes (blocks are collected in groups whose float16 features fit "
        "--max-feature-mib; the first pass also records predictions). Features = float16 "
        "features of all scored blocks (held one group at a time).",
        "Peak = largest over passes of the resident-set high-water mark during the phase minus "
        "the resident set at its start; 0 means the phase fitted in memory the process already "
        "held (freed by the previous phase). Batched scoring upcasts one chunk at a time.",
        "max |diff| compares normalised HSIC of the sampled neurons, loop vs batched (float32).",
        "",
        "## Reading",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
