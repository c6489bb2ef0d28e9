"""docs/latency_multiples.md and its JSON: do MLP widths on multiples of 8/16/64 pay on this
device? The MLP half of one block is timed at aligned widths and at the widths one below and one
above, at each batch given (the fastest of the calls, interleaved so drift hits all alike).

    python benchmarks/latency_multiples.py --out docs/latency_multiples
    python benchmarks/latency_multiples.py --model deit_small_patch16_224 --batches 32 \
        --out docs/latency_multiples_deit

The page is :func:`page` of its JSON; its hand-written reading is kept between the page's reading
markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import pages  # noqa: E402

from vitprune.adapters import adapter_for, vit_shape  # noqa: E402
from vitprune.io import resolve_model  # noqa: E402
from vitprune.profile import _block, device_name  # noqa: E402
from vitprune.speed import Timer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vitprune/assets/fmnist_vit_d12")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "latency_multiples"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = resolve_model(str(ROOT / args.model) if (ROOT / args.model).is_dir()
                          else args.model)[0]
    adapter, shape = adapter_for(model), vit_shape(model)
    D, C = shape.blocks[0].mlp_hidden, shape.embed_dim
    N = shape.num_prefix + shape.num_patches
    aligned = sorted(w for w in {16, 32, 48, *range(64, D + 1, 64)} if w <= D)
    widths = sorted({v for w in aligned for v in (w - 1, w, w + 1) if 1 <= v <= D})
    halves = {w: adapter.halves(_block(adapter, adapter.blocks(model)[0], "cpu",
                                       torch.float32, neurons=range(w)))[1] for w in widths}
    rows = []
    for b in args.batches:
        x = torch.randn(b, N, C)
        ms = dict(zip(widths, Timer("cpu", 3, 15, "min").interleaved(list(halves.values()), x,
                                                                       rounds=5)))
        for w in aligned:
            row = {"batch": b, "width": w, "ms": ms[w], "ms_below": ms.get(w - 1),
                   "ms_above": ms.get(w + 1)}
            row["gain_vs_neighbours"] = (statistics.mean(
                [v for v in (row["ms_below"], row["ms_above"]) if v]) / ms[w] - 1)
            rows.append(row)
    record = {"rows": rows, "model": args.model, "threads": args.threads,
              "batches": args.batches, "tokens": N, "embed_dim": C, "mlp_hidden": D,
              "device_name": device_name("cpu")}
    print(pages.publish(args.out, record, page))
    return 0


def page(record: dict) -> str:
    """The page's generated text, from its JSON alone."""
    model = record["model"]
    lines = ["# Do MLP widths on multiples pay here?", "",
             f"Made by `python benchmarks/latency_multiples.py --model {model} --batches "
             f"{' '.join(map(str, record['batches']))}` (figures in the JSON beside). One block's "
             f"MLP half of {model} ({record['tokens']} tokens, model width {record['embed_dim']}, "
             f"MLP width {record['mlp_hidden']}) on {record['device_name']}, "
             f"{record['threads']} threads: the fastest of 75 calls per MLP width, interleaved. "
             "Gain: the mean time of the widths one below and one above, over the aligned "
             "width's (one below does less work, so a positive gain there is alignment alone).",
             "", "| batch | width | ms | ms at width - 1 | ms at width + 1 | gain |",
             "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['batch']} | {r['width']} | {r['ms']:.4f} | "
                     f"{r['ms_below']:.4f} | " + (f"{r['ms_above']:.4f}" if r["ms_above"] else "-")
                     + f" | {r['gain_vs_neighbours']:+.1%} |")
    return "\n".join([*lines, "", "## Reading"])


if __name__ == "__main__":
    sys.exit(main())
