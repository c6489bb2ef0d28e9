"""Where onnxruntime spends its time on the dense and the pruned Fashion-MNIST models: kernel time
per operator type (onnxruntime's own profiler), batch 64, float32 and int8.

    python benchmarks/deploy_profile.py --out docs/deploy_profile.json

Explains docs/deploy.md: which operators pruning shrinks and which it leaves as they are.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import torch

from vitprune import fsutil
from vitprune.adapters import input_shape
from vitprune.io import load
from vitprune.io.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"dense": ROOT / "vitprune" / "assets" / "fmnist_vit_d12",
          "pruned 0.6": Path("runs/compress/b0.6/model"),
          "pruned 0.4": Path("runs/compress/b0.4/model")}


def profile(path: Path, shape, batch: int, threads: int, runs: int, tmp: str) -> dict:
    """Mean kernel milliseconds per run by operator type, and how many nodes of each."""
    opts = ort.SessionOptions()
    opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "prof")
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = torch.randn(batch, *shape).numpy()
    for _ in range(runs):
        session.run(None, {"x": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    ms, nodes = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            ms[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
            nodes[e["args"]["op_name"]] += 1
    return {op: {"ms": round(t, 3), "nodes": nodes[op] // runs} for op, t in ms.most_common()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    res = {"batch": args.batch, "threads": args.threads, "runs": args.runs,
           "onnxruntime": ort.__version__, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, d in MODELS.items():
            model = load(d)
            for int8 in (False, True):
                path = Path(tmp) / f"{name}-{int8}.onnx".replace(" ", "_")
                export_onnx(model, input_shape(model), path, batch=args.batch, int8=int8)
                ops = profile(path, input_shape(model), args.batch, args.threads, args.runs, tmp)
                key = f"{name}{' int8' if int8 else ''}"
                res["models"][key] = {"total_ms": round(sum(o["ms"] for o in ops.values()), 3),
                                      "ops": ops}
                print(key, res["models"][key]["total_ms"], "ms", flush=True)
    fsutil.write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
