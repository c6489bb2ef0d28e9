"""Copy a trained baseline into the package (vitprune/assets/NAME) with its full training record.

    python benchmarks/ship_baseline.py runs/baseline runs/baseline_p2 --to vitprune/assets/fmnist_vit_d12

The last run's weights are shipped; model.json's meta lists every run's command, seed and
accuracy (``lineage``: earlier phases, ``trained``: the last), so `vitprune train` reproduces it,
with each run's calibration top-1 by epoch and its training time over all its sittings.

    python benchmarks/ship_baseline.py /work/t197/baseline --to vitprune/assets/fmnist_vit_t197
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vitprune.io import load, save
from vitprune.io.model_dir import read_config
from vitprune.models import ArchSpec


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path, help="training run directories, in order")
    ap.add_argument("--to", type=Path, required=True)
    args = ap.parse_args()
    metas = [read_config(r)["meta"]["trained"] for r in args.runs]
    for m in metas:
        # the per-epoch logs stay in docs/baseline.md; the calibration curve (the plateau rule
        # reads it) and the training time over every sitting of a resumed run travel along
        history = m.pop("history", None) or []
        m["calib_top1_by_epoch"] = [h["calib_top1"] for h in history]
        m["train_seconds_all_epochs"] = round(sum(h["seconds"] for h in history), 1)
    last = read_config(args.runs[-1])
    model = load(args.runs[-1])
    save(args.to, model, ArchSpec.from_dict(last["arch"]), plan=last.get("plan"),
         meta={"trained": metas[-1], "lineage": metas[:-1]})
    print(json.dumps(read_config(args.to)["meta"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
