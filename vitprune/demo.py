"""The main job on the embedded default: `make demo` runs ``python -m vitprune.demo``.

Compresses the shipped Fashion-MNIST baseline (``vitprune/assets/fmnist_vit_d12``) to 60% of its
MACs: HSIC scores, a 24-evaluation GP-EI search, physical pruning, 3 epochs of fine-tuning with
distillation, evaluation and a report in ``runs/demo`` (about 8 minutes measured on two CPU cores;
re-running resumes or, when finished, just prints the table). Where the baseline is missing it is
trained first with the committed training commands (two phases, resumable, about 100 minutes).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import main as cli_main
from .io.model_dir import CONFIG, WEIGHTS
from .report import REPORT

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
    if (BASELINE / WEIGHTS).exists():
        return BASELINE
    prev = None
    for name, args in PHASES:
        out = runs / name
        if not (out / CONFIG).exists():
            print(f"No shipped baseline at {BASELINE}; training {out} (resumable).", flush=True)
            cmd = [str(prev) if a == "{prev}" else a for a in args]
            # --resume continues an interrupted phase, and starts one that never began
            if cli_main(cmd + ["--out", str(out), "--resume"]) != 0:
                raise SystemExit(2)
        prev = out
    return prev


# the demo's settings (docs/demo.md: what they give); docs/compress.md has the 8-epoch run
# Two threads everywhere: the thread count changes the order of floating-point sums, and with it
# the last digits of every evaluation the search compares (docs/compress.md, "What varies").
DEMO = ["--budget", "0.6", "--trials", "24", "--init", "10", "--epochs", "3", "--threads", "2"]


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    base = baseline_dir()
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else Path("runs/demo")
    print(f"Baseline: {base}\nCompressing it into {out} (resumable: run again to continue).",
          flush=True)
    rc = cli_main(["compress", "--model", str(base), "--data", "fashion-mnist", *DEMO,
                   "--out", str(out)] + [a for a in argv if a not in ("--out", str(out))])
    if rc == 0:
        report = (out / REPORT).read_text().split("\n## ")[0]
        print("\n" + report + f"\nFull report: {out / REPORT}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
