"""Compress deit_small_patch16_224 (random weights) on a generated image folder on one GPU, bf16,
as a single process and under `torchrun --nproc_per_node 1`: does every stage complete, and
fine-tuning images/s, search evaluations/min and peak GPU memory. Needs no network.

    python benchmarks/gpu_compress.py --out docs/gpu_compress

Run it where a CUDA GPU is lent (the tests never need one). The folder: ``--per-class`` random
224x224 JPEGs per class in 10 classes (the speed and memory of the stages do not depend on what
the images show). Fine-tuning runs ``--steps`` steps of batch ``--batch`` with the DeiT recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from rehearse_224 import staged_run

from vitprune import fsutil

MODEL = "deit_small_patch16_224"


def make_folder(root: Path, per_class: int) -> None:
    from PIL import Image

    if (root / "complete").exists():
        return
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", max(10, per_class // 5))):
        for c in range(10):
            d = root / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(
                    d / f"{i}.jpg", quality=90)
    (root / "complete").write_text("")


def gpu_memory_gb(_pid: int) -> float:
    """Memory in use on GPU 0 (nvidia-smi), GB."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,"
                              "nounits", "-i", "0"], capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip().splitlines()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/gpu_compress"))
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device here: run this on a GPU machine")
    root = args.work / "folder"
    make_folder(root, args.per_class)
    settings = ["--model", MODEL, "--data", "imagefolder", "--data-dir", str(root),
                "--budget", "0.6", "--recipe", "deit", "--device", "cuda",
                "--score-images", "1024", "--calib-size", "1000", "--calib-images", "1000",
                "--trials", "24", "--init", "10", "--epochs", "1", "--max-steps-per-epoch",
                str(args.steps), "--batch-size", str(args.batch), "--bench-batches", "1", "32"]
    runs = {
        "single process": [sys.executable, "-m", "vitprune", "compress", *settings],
        "torchrun --nproc_per_node 1": [sys.executable, "-m", "torch.distributed.run",
                                        "--nproc_per_node", "1", "-m", "vitprune", "compress",
                                        *settings],
    }
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "steps": args.steps, "batch": args.batch, "runs": {}}
    for name, cmd in runs.items():
        out = args.work / name.split()[0]
        rec = staged_run([*cmd, "--out", str(out)], gpu_memory_gb, env=dict(os.environ))
        log = out / "finetune" / "train_log.jsonl"
        if log.exists():
            epoch = json.loads(log.read_text().splitlines()[-1])
            rec["finetune_images_per_s"] = round(args.steps * args.batch / epoch["seconds"], 1)
        search = next((s for s in rec["stages"] if s["stage"].startswith("searching")), None)
        if search:
            rec["search_evaluations_per_min"] = round(24 / search["seconds"] * 60, 1)
        res["runs"][name] = rec
        fsutil.write_json(args.out.with_suffix(".json"), res)
        print(name, "exit", rec["returncode"], flush=True)
    fsutil.write_text(args.out.with_suffix(".md"), report(res))
    return 0


def report(res: dict) -> str:
    lines = [f"# compress on a GPU: {MODEL}, bf16", "",
             "Command: `python benchmarks/gpu_compress.py --out docs/gpu_compress`  ",
             f"{res['device']}, torch {res['torch']}; fine-tuning {res['steps']} steps of batch "
             f"{res['batch']} (DeiT recipe), random weights, generated images.", "",
             "| run | exit | fine-tuning images/s | search evaluations/min | peak GPU memory (GB) |",
             "|---|---|---|---|---|"]
    for name, r in res["runs"].items():
        lines.append(f"| {name} | {r['returncode']} | {r.get('finetune_images_per_s', '-')} | "
                     f"{r.get('search_evaluations_per_min', '-')} | {r['peak_gb']} |")
    for name, r in res["runs"].items():
        lines += ["", f"{name}, per stage:", "", "| stage | wall (s) | peak GPU memory (GB) |",
                  "|---|---|---|"]
        lines += [f"| {s['stage']} | {s['seconds']} | {s['peak_gb']} |" for s in r["stages"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
