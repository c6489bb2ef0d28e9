"""Peak memory and wall time of HSIC scoring at 197 tokens: `vitprune score` of DeiT-S (and
DeiT-B) at 224 with 1,024 and more calibration images, each in its own process.

    python benchmarks/scoring_memory.py --folder runs/rehearse_224/fmnist224 --out docs/scoring_memory

The folder is the rehearsal's (benchmarks/rehearse_224.py). Scoring keeps per block the features
of every calibration image (float16) and collects as many blocks per pass over the images as fit
1 GiB (``HSIC.max_feature_bytes``; a block larger than that gets a pass of its own), so its memory
holds the calibration images (float32), the model, max(1 GiB, one block's features) and one Gram
chunk, plus one batch's activations, working copies and the interpreter; the table sets the
measured peak beside the named terms, and the page's reading states the bound. Random weights
(speed and memory do not depend on them). The page is :func:`page` of docs/scoring_memory.json;
its hand-written reading is kept between the page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pages
from rehearse_224 import rss_gb, staged_run

from vitprune import fsutil
from vitprune.adapters import vit_shape
from vitprune.cost import token_counts
from vitprune.models import build_model

GIB = 2**30
CASES = [("deit_small_patch16_224", 1024), ("deit_small_patch16_224", 1536),
         ("deit_base_patch16_224", 1024)]


def bound_gb(name: str, n: int) -> dict:
    """The stated bound's parts, GB."""
    model = build_model(name, num_classes=10)
    shape = vit_shape(model)
    tokens = max(t for t, _ in token_counts(shape))
    block = max(n * tokens * (b.heads + b.mlp_hidden) * 2 for b in shape.blocks)  # float16
    weights = sum(p.numel() * 4 for p in model.parameters())
    chunk = 32 * n * (n + tokens) * 4  # HSIC.chunk components' Gram step, float32
    pe = model.patch_embed
    images = n * pe.proj.in_channels * pe.img_size[0] * pe.img_size[1] * 4  # held as float32
    return {"weights": weights / 1e9, "features": max(GIB, block) / 1e9,
            "one_block_features": block / 1e9, "gram_chunk": chunk / 1e9,
            "images": images / 1e9}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--only", nargs="*", help="model names to run (default: all cases)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    jpath = args.out.with_suffix(".json")
    res = json.loads(jpath.read_text()) if jpath.exists() else {"cases": {}}
    for name, n in CASES:
        key = f"{name} n={n}"
        if key in res["cases"] or (args.only and name not in args.only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "vitprune", "score", "--model", name, "--data",
                   "imagefolder", "--data-dir", str(args.folder), "--calib-size", str(n),
                   "--score-images", str(n), "--workers", "1", "--threads", "2",
                   "--out", str(Path(tmp) / "scores.json")]
            rec = staged_run(cmd, rss_gb)
        rec["bound_gb"] = bound_gb(name, n)
        res["cases"][key] = rec
        print(key, rec["returncode"], rec["peak_gb"], "GB", rec["stages"][-1]["seconds"], "s",
              flush=True)
        fsutil.write_json(jpath, res)
    for key, rec in res["cases"].items():  # the bound's terms as this code states them
        name, n = key.split(" n=")
        rec["bound_gb"] = bound_gb(name, int(n))
    fsutil.write_json(jpath, res)
    pages.write(args.out.with_suffix(".md"), page(res), after="## Reading")
    return 0


def page(res: dict) -> str:
    """The page's generated text, from ``docs/scoring_memory.json`` alone."""
    lines = ["# HSIC scoring memory at 197 tokens", "",
             "Command: `python benchmarks/scoring_memory.py --folder runs/rehearse_224/fmnist224 "
             "--out docs/scoring_memory`  ",
             "CPU, 2 threads, 224x224 JPEGs, one process per row (peak resident memory sampled "
             "every 0.2 s).", "",
             "| model, images | wall (s) | peak RSS (GB) | named terms: calibration images + "
             "weights + max(1 GiB, one block's features) + Gram chunk (GB) | one block's "
             "features (GB) |",
             "|---|---|---|---|---|"]
    for key, r in res["cases"].items():
        b = r["bound_gb"]
        total = b["images"] + b["weights"] + b["features"] + b["gram_chunk"]
        lines.append(f"| {key} | {r['stages'][-1]['seconds']:.0f} | {r['peak_gb']:.2f} | "
                     f"{total:.2f} | {b['one_block_features']:.2f} |")
    return "\n".join([*lines, "", "## Reading"])


if __name__ == "__main__":
    sys.exit(main())
