"""The main job on the embedded default: `make demo` runs ``python -m vitprune.demo``.

Starts from the shipped Fashion-MNIST baseline (``vitprune/assets/fmnist_vit_d12``); where it is
missing, trains it first with the committed training commands (two phases, resumable, about 80
minutes on two CPU cores). Then evaluates it on the test split and prints accuracy, MACs and
parameters.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import main as cli_main

ASSETS = Path(__file__).parent / "assets"
BASELINE = ASSETS / "fmnist_vit_d12"
# The commands that made the shipped baseline (docs/baseline.md): 15 epochs with shift/flip
# augmentation, then 6 epochs without it at a lower learning rate ("{prev}": phase 1's output).
PHASES = [
    ("baseline", ["train", "--model", "fmnist_vit_d12", "--data", "fashion-mnist", "--epochs", "15",
                  "--seed", "0"]),
    ("baseline_p2", ["train", "--model", "{prev}", "--data", "fashion-mnist", "--epochs", "6",
                     "--lr", "4e-4", "--no-augment", "--seed", "1"]),
]


def baseline_dir(runs: Path = Path("runs")) -> Path:
    """The shipped baseline, or one trained now into ``runs/`` by the committed commands."""
    if (BASELINE / "model.safetensors").exists():
        return BASELINE
    prev = None
    for name, args in PHASES:
        out = runs / name
        if not (out / "model.json").exists():
            print(f"No shipped baseline at {BASELINE}; training {out} (resumable).", flush=True)
            resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
            cmd = [str(prev) if a == "{prev}" else a for a in args]
            if cli_main(cmd + ["--out", str(out)] + resume) != 0:
                raise SystemExit(2)
        prev = out
    return prev


def main(argv: list[str] | None = None) -> int:
    base = baseline_dir()
    print(f"Baseline: {base}", flush=True)
    return cli_main(["eval", "--model", str(base), "--data", "fashion-mnist"] + list(argv or []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
