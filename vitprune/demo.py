"""The main job on the embedded default: `make demo` runs ``python -m vitprune.demo``.

Starts from the shipped Fashion-MNIST baseline (``vitprune/assets/fmnist_vit_d12``); where it is
missing, trains it first with the committed training command (resumable, tens of minutes on two
CPU cores). Then evaluates it on the test split and prints accuracy, MACs and parameters.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import main as cli_main

ASSETS = Path(__file__).parent / "assets"
BASELINE = ASSETS / "fmnist_vit_d12"
TRAIN_ARGS = ["train", "--model", "fmnist_vit_d12", "--data", "fashion-mnist", "--epochs", "15",
              "--seed", "0"]


def baseline_dir(runs: Path = Path("runs")) -> Path:
    """The shipped baseline, or one trained now into ``runs/baseline`` by the committed command."""
    if (BASELINE / "model.safetensors").exists():
        return BASELINE
    out = runs / "baseline"
    if not (out / "model.json").exists():
        print(f"No shipped baseline at {BASELINE}; training it into {out} (resumable).", flush=True)
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        if cli_main(TRAIN_ARGS + ["--out", str(out)] + resume) != 0:
            raise SystemExit(2)
    return out


def main(argv: list[str] | None = None) -> int:
    base = baseline_dir()
    print(f"Baseline: {base}", flush=True)
    return cli_main(["eval", "--model", str(base), "--data", "fashion-mnist"] + list(argv or []))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
