"""The GPU suite: what a first GPU at hand confirms, in one command that its machine runs as it
is (no network; that machine's own python3 and its preinstalled torch, timm, transformers,
scikit-learn and onnxruntime; the project on ``PYTHONPATH=.``).

    PYTHONPATH=. python3 benchmarks/gpu_suite.py --out docs/gpu            # on a CUDA machine
    PYTHONPATH=. python3 benchmarks/gpu_suite.py --out docs/gpu --parts table speed
    python benchmarks/gpu_suite.py --smoke --out /tmp/gpu_smoke           # CPU, tiny, < 2 min

Parts (each under 8 minutes on one H100/H200, written to ``OUT.json`` as it finishes, and
skipped by a re-run that finds it there; ``OUT.md`` is regenerated from the JSON each time):

- ``table``: a latency table of DeiT-S at batch 256 in bf16 on the GPU, and its prediction error
  on 20 random pruned models (heads, neurons, three token stages) timed whole.
- ``speed``: dense DeiT-S and DeiT-B against their plans at 60% and 40% of the MACs (heads,
  neurons and tokens cut alike) and, for DeiT-S, a plan at 60% of the table's predicted time;
  batch 1, 64 and 256, weights in bf16, eager, timed in interleaved rounds, with the ideal
  1 / (MACs fraction) beside each speed-up.
- ``families``: Swin-T and EVA-02-S against their uniform plans at the same MACs budgets (Swin:
  heads and neurons, no token stages; EVA: tokens too), the same batches, bf16, eager.
- ``compile-s``, ``compile-b``: the same under ``torch.compile(fullgraph=True)`` (one part per
  model: compiling takes most of the time); resumable cell by cell.
- ``compress``, ``torchrun``: ``vitprune compress`` of DeiT-S at 224 end to end on a generated
  image folder with small settings, as one process and under ``torchrun --nproc_per_node 1``
  (NCCL): each stage's wall time and peak GPU memory, scoring images/s and search
  evaluations/min, and the device the run's evaluation records (the proof that it ran there).

- ``evidence``: the 197-token accuracy study (benchmarks/evidence.py) run on the GPU as it is
  (``--device cuda``), one seed at 60% of the dense time, the rows vitprune, its anchored
  search, Torch-Pruning's best configuration, ToMe (training-free and fine-tuned) and the
  dense reference, 300 fine-tuning steps each: every phase's wall time and exit status, and the
  rows' top-1 and measured speed-ups on the GPU. It needs the four Fashion-MNIST files: pass
  their directory with ``--data-dir`` (this machine's Debian package is at
  /usr/share/datasets/fashion-mnist; copy it into the working tree, e.g. ``runs/fashion-mnist``,
  and carry that path to the GPU machine). Without them the part records the data error (a
  re-run tries it again) and the others still run.

``--smoke`` runs every part on the CPU with a tiny model and tiny settings (compile through
dynamo's ``eager`` backend, which checks the graph without the C++ build), so the script cannot
rot: the test suite runs it. Its pages are not results and are never committed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from latency_predict import random_plans  # noqa: E402
from rehearse_224 import staged_run  # noqa: E402

from vitprune import fsutil  # noqa: E402
from vitprune.adapters import input_shape, vit_shape  # noqa: E402
from vitprune.compression import read_run  # noqa: E402
from vitprune.cost import macs  # noqa: E402
from vitprune.latency import LatencyTable  # noqa: E402
from vitprune.models import build_model  # noqa: E402
from vitprune.plan import PrunePlan, planned_shape  # noqa: E402
from vitprune.profile import build_table, device_name  # noqa: E402
from vitprune.rundir import read_state  # noqa: E402
from vitprune.search.space import Ratios, ratios_to_plan, solve_uniform  # noqa: E402
from vitprune.speed import Timer, compare  # noqa: E402
from vitprune.surgery import prune  # noqa: E402

PARTS = ("table", "speed", "families", "compile-s", "compile-b", "compress", "torchrun",
         "evidence")


@dataclass(frozen=True)
class Settings:
    """What each part runs: the GPU run's or the smoke run's."""

    device: str
    models: tuple[str, str]  # the "s" and "b" model
    batches: tuple[int, ...]
    dtype: str
    fractions: tuple[float, ...]  # MACs budgets of the speed plans
    latency_fraction: float
    table_batch: int
    table_plans: int
    table_repeats: int
    token_points: int | None
    rounds: int
    reps: int
    compile_backend: str
    compress_args: tuple[str, ...]
    folder_per_class: int  # 0: no image folder (synthetic data)
    # the other families' models (name, constructor arguments) for the families part
    families: tuple[tuple[str, dict], ...] = ()
    evidence_args: tuple[str, ...] = ()  # the evidence study's settings (given to its plans)
    data_dir: str | None = None  # the Fashion-MNIST files (None: the Debian package's place)


GPU = Settings(
    device="cuda", models=("deit_small_patch16_224", "deit_base_patch16_224"),
    batches=(1, 64, 256), dtype="bfloat16", fractions=(0.6, 0.4), latency_fraction=0.6,
    table_batch=256, table_plans=20, table_repeats=9, token_points=None, rounds=15, reps=5,
    compile_backend="inductor",
    compress_args=("--model", "deit_small_patch16_224", "--data", "imagefolder",
                   "--budget", "0.6", "--recipe", "deit", "--score-images", "1024",
                   "--calib-size", "1000", "--calib-images", "1000", "--trials", "24",
                   "--init", "10", "--epochs", "1", "--max-steps-per-epoch", "300",
                   "--batch-size", "128", "--bench-batches", "1", "64"),
    folder_per_class=500,
    families=(("swin_tiny_patch4_window7_224", {}), ("eva02_small_patch14_224", {})),
    evidence_args=("--models", "t197", "--targets", "0.6", "--seeds", "0", "--max-steps", "300",
                   "--rows", "vitprune", "vitprune__anchored_search",
                   "torch_pruning__best_configuration", "tome__training_free",
                   "tome__fine_tuned", "dense_reference"))
SMOKE = Settings(
    device="cpu", models=("fmnist_vit_tiny", "fmnist_vit_tiny"), batches=(1, 4),
    dtype="bfloat16", fractions=(0.6,), latency_fraction=0.6, table_batch=4, table_plans=3,
    table_repeats=2, token_points=4, rounds=2, reps=1, compile_backend="eager",
    compress_args=("--model", "fmnist_vit_tiny", "--data", "synthetic", "--calib-size", "64",
                   "--budget", "0.6", "--score-images", "32", "--calib-images", "32",
                   "--trials", "3", "--init", "2", "--epochs", "1", "--max-steps-per-epoch",
                   "2", "--bench-batches", "2", "--threads", "1"),
    folder_per_class=0,
    families=(("swin_tiny_patch4_window7_224",
               dict(img_size=28, patch_size=2, in_chans=1, embed_dim=16, depths=(2, 2),
                    num_heads=(2, 2), window_size=7, num_classes=10)),
              ("eva02_tiny_patch14_224",
               dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                    num_classes=10, ref_feat_shape=(7, 7)))),
    evidence_args=("--smoke", "--models", "d12", "--targets", "0.6", "--seeds", "0",
                   "--trials", "3", "--init", "2", "--calib-images", "32", "--max-steps", "1",
                   "--rows", "vitprune", "dense_reference"))


def _dtype(s: Settings) -> torch.dtype:
    return getattr(torch, s.dtype)


# -- plans --------------------------------------------------------------------------------------
def latency_plan(shape, table: LatencyTable, fraction: float) -> PrunePlan:
    """The uniform plan (heads, neurons and tokens cut alike) whose predicted time is the largest
    at most ``fraction`` of the dense model's."""
    dense = table.predict(shape)
    lo, hi = 0.0, 0.9
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        plan = ratios_to_plan(shape, Ratios.uniform(len(shape.blocks), mid, mid, min(mid, 0.5)))
        lo, hi = (lo, mid) if table.predict(planned_shape(shape, plan)) <= fraction * dense \
            else (mid, hi)
    return ratios_to_plan(shape, Ratios.uniform(len(shape.blocks), hi, hi, min(hi, 0.5)))


def speed_plans(name: str, s: Settings, table: LatencyTable | None) -> dict[str, PrunePlan | None]:
    """Plan name -> plan (None: dense) timed for model ``name``."""
    shape = vit_shape(_model(name))
    plans: dict[str, PrunePlan | None] = {"dense": None}
    for f in s.fractions:
        plans[f"macs {f:.0%}"] = solve_uniform(shape, f)[1]
    if table is not None and name == s.models[0]:
        plans[f"latency {s.latency_fraction:.0%}"] = latency_plan(shape, table,
                                                                 s.latency_fraction)
    return plans


_MODELS: dict[str, torch.nn.Module] = {}


def _model(name: str) -> torch.nn.Module:
    """A model by name with random weights (seed 0); speed does not depend on the weights."""
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = build_model(name).eval()
    return _MODELS[name]


# -- parts --------------------------------------------------------------------------------------
def part_table(s: Settings, work: Path, done: dict) -> dict:
    model = _model(s.models[0])
    shape = vit_shape(model)
    path = work / "table.json"
    if path.exists():
        table = LatencyTable.load(path)
    else:
        table = build_table(model, batch=s.table_batch, device=s.device, dtype=s.dtype,
                            repeats=s.table_repeats, token_points=s.token_points,
                            progress=False)
        fsutil.write_json(path, table.to_dict())
    plans = random_plans(shape, s.table_plans)
    nets = [model] + [prune(model, p) for p in plans]
    x = torch.randn(s.table_batch, *input_shape(model), device=s.device, dtype=_dtype(s))
    with torch.inference_mode():
        measured = Timer(s.device, 2, s.table_repeats, "min").interleaved(
            [n.to(s.device, _dtype(s)).eval() for n in nets], x, rounds=3)
    rows = []
    for i, (p, ms) in enumerate(zip([None, *plans], measured)):
        pred = table.predict(shape if p is None else planned_shape(shape, p))
        rows.append({"plan": "dense" if p is None else i - 1, "measured_ms": ms,
                     "predicted_ms": pred, "error": pred / ms - 1})
    errs = sorted(abs(r["error"]) for r in rows[1:])
    return {"model": s.models[0], "batch": s.table_batch, "dtype": s.dtype,
            "table_build_s": table.meta.get("build_s"),
            "median_abs_error": float(np.median(errs)), "max_abs_error": errs[-1],
            "dense_error": rows[0]["error"], "rows": rows}


def _table(work: Path) -> LatencyTable | None:
    path = work / "table.json"
    return LatencyTable.load(path) if path.exists() else None


def part_speed(s: Settings, work: Path, done: dict) -> dict:
    """Eager speed of every model and plan at every batch, interleaved per (model, batch)."""
    out = {}
    for name in dict.fromkeys(s.models):
        model, rows = _model(name), []
        plans = speed_plans(name, s, _table(work))
        nets = {k: (model if p is None else prune(model, p)).to(s.device, _dtype(s))
                for k, p in plans.items()}
        for b in s.batches:
            res = compare(nets, input_shape(model), b, rounds=s.rounds, reps=s.reps,
                          device=s.device, amp=False, dtype=_dtype(s))
            rows += _rows(model, plans, res, b, "eager")
        out[name] = rows
        _MODELS.pop(name)  # keep GPU memory for the next model
    return out


def part_families(s: Settings, work: Path, done: dict) -> dict:
    """Swin-T and EVA-02-S against their uniform plans at the MACs budgets (Swin: heads and
    neurons; EVA: tokens too), eager, every batch, interleaved per (model, batch)."""
    out = {}
    for name, kwargs in s.families:
        torch.manual_seed(0)
        model = build_model(name, **kwargs).eval()
        shape = vit_shape(model)
        plans: dict[str, PrunePlan | None] = {"dense": None}
        for f in s.fractions:
            plans[f"macs {f:.0%}"] = solve_uniform(shape, f, tokens=not shape.windowed)[1]
        nets = {k: (model if p is None else prune(model, p)).to(s.device, _dtype(s))
                for k, p in plans.items()}
        rows = []
        for b in s.batches:
            res = compare(nets, input_shape(model), b, rounds=s.rounds, reps=s.reps,
                          device=s.device, amp=False, dtype=_dtype(s))
            rows += _rows(model, plans, res, b, "eager")
        out[name] = rows
        del nets, model
    return out


def _rows(model, plans: dict, res: dict, batch: int, runtime: str) -> list[dict]:
    dense_macs = macs(vit_shape(model)).total
    d = res["dense"]
    rows = []
    for k, p in plans.items():
        frac = 1.0 if p is None else macs(planned_shape(vit_shape(model), p)).total / dense_macs
        r = res[k]
        rows.append({"plan": k, "batch": batch, "runtime": runtime, "macs_fraction": frac,
                     "latency_ms": r["latency_ms"], "throughput": r["throughput"],
                     "speedup": d["latency_ms"] / r["latency_ms"], "ideal": 1.0 / frac})
    return rows


def part_compile(which: int):
    def run(s: Settings, work: Path, done: dict) -> dict:
        name = s.models[which]
        model = _model(name)
        plans = speed_plans(name, s, _table(work))
        cells = work / f"compile_{which}.json"  # finished cells: a re-run resumes after them
        rows = json.loads(cells.read_text()) if cells.exists() else []
        for b in s.batches:
            if any(r["batch"] == b for r in rows):
                continue
            nets = {k: torch.compile((model if p is None else prune(model, p))
                                     .to(s.device, _dtype(s)).eval(), fullgraph=True,
                                     dynamic=False, backend=s.compile_backend)
                    for k, p in plans.items()}
            t0 = time.perf_counter()
            res = compare(nets, input_shape(model), b, rounds=s.rounds, reps=s.reps,
                          device=s.device, amp=False, dtype=_dtype(s))
            new = _rows(model, plans, res, b, "compile")
            for r in new:
                r["compile_and_time_s"] = round(time.perf_counter() - t0, 1)
            rows += new
            fsutil.write_json(cells, rows)
            torch._dynamo.reset()
        _MODELS.pop(name, None)
        return {name: rows}
    return run


def part_compress(torchrun: bool):
    def run(s: Settings, work: Path, done: dict) -> dict:
        args = list(s.compress_args) + ["--device", s.device]
        if s.folder_per_class:
            folder = work / "folder"
            make_folder(folder, s.folder_per_class)
            args += ["--data-dir", str(folder)]
        launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1"]
                  if torchrun else [sys.executable])
        out = work / ("torchrun" if torchrun else "single")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        rec = staged_run([*launch, "-m", "vitprune", "compress", *args, "--out", str(out)],
                         memory_gb if s.device == "cuda" else rss_gb, env=env)
        # where the stages ran, as the run recorded it: scoring in scores.json, the rest in
        # eval.json (the throughputs below say the same from the other side)
        if read_state(out) is not None:
            done = read_run(out)
            if done.scores_meta is not None:
                rec["scored_on"] = done.scores_meta.get("device")
            if done.metrics is not None:
                rec["evaluated_on"] = done.metrics.device_name
        stage = {r["stage"].split(" ")[0]: r["seconds"] for r in rec["stages"]}
        images, trials = _arg(args, "--score-images"), _arg(args, "--trials")
        if stage.get("scoring"):
            rec["scoring_images_per_s"] = round(images / stage["scoring"], 1)
        if stage.get("searching"):
            rec["search_evaluations_per_min"] = round(trials / stage["searching"] * 60, 1)
        return rec
    return run


def part_evidence(s: Settings, work: Path, done: dict) -> dict:
    """The evidence study's phases, each a process of its own on ``s.device``, then its rows.
    A study stopped part-way resumes (every phase continues where it stopped)."""
    runs, script = work / "evidence", [sys.executable, str(ROOT / "benchmarks" / "evidence.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    data = ["--data-dir", s.data_dir] if s.data_dir else []
    phases = {"plans": [*s.evidence_args, "--device", s.device, *data],
              "time": data, "finetune": data, "report": [*data, "--out", str(runs / "page")]}
    out: dict = {"phases": []}
    for phase, extra in phases.items():
        t0 = time.perf_counter()
        proc = subprocess.run([*script, phase, "--runs", str(runs), *extra], env=env,
                              capture_output=True, text=True)
        out["phases"].append({"phase": phase, "returncode": proc.returncode,
                              "seconds": round(time.perf_counter() - t0, 1)})
        if proc.returncode:  # the reason; the later phases are not run, and a re-run tries again
            out.update(failed=True, tail=(proc.stdout + proc.stderr).splitlines()[-12:])
            return out
    study = json.loads((runs / "study.json").read_text())
    out["device"] = study.get("device", "cpu")
    record = json.loads((runs / "page.json").read_text())
    out["rows"] = {f"{model} {target}: {name}": {k: row[k]["mean"] for k in (
        "macs_kept", "test_top1_before", "test_top1", "speedup_b1", "speedup_b64") if k in row}
        for model, targets in record["models"].items() for target, rows in targets.items()
        for name, row in rows.items() if "unreachable" not in row}
    return out


def _arg(args: list[str], name: str) -> int:
    return int(args[args.index(name) + 1])


def make_folder(root: Path, per_class: int) -> None:
    """Random 224x224 JPEGs in 10 classes (speed and memory do not depend on what they show)."""
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


def memory_gb(_pid: int) -> float:
    """Memory in use on GPU 0 (nvidia-smi), GB."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,"
                              "nounits", "-i", "0"], capture_output=True, text=True, timeout=5)
        return float(out.stdout.strip().splitlines()[0]) / 1024
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return 0.0


def rss_gb(pid: int) -> float:
    """Resident memory of process ``pid`` (the smoke run's stand-in for GPU memory), GB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


RUNNERS = {"table": part_table, "speed": part_speed, "families": part_families,
           "compile-s": part_compile(0),
           "compile-b": part_compile(1), "compress": part_compress(False),
           "torchrun": part_compress(True), "evidence": part_evidence}


# -- the page -----------------------------------------------------------------------------------
def report(res: dict) -> str:
    env = res["env"]
    lines = ["# The GPU suite" + (" (smoke run on the CPU: not results)" if res["smoke"] else ""),
             "", "Command: `PYTHONPATH=. python3 benchmarks/gpu_suite.py --out docs/gpu`  ",
             f"{env['device_name']}, torch {env['torch']}; random weights, generated images. "
             "Figures in `docs/gpu.json`.", ""]
    parts = res["parts"]
    if "table" in parts:
        t = parts["table"]
        lines += ["## Latency table", "",
                  f"{t['model']} at batch {t['batch']} in {t['dtype']}: built in "
                  f"{t['table_build_s']:.0f} s; on {len(t['rows']) - 1} random pruned models the "
                  f"prediction error is {t['median_abs_error']:.1%} median, "
                  f"{t['max_abs_error']:.1%} worst (dense {t['dense_error']:+.1%}).", ""]
    speed = {k: v for k, v in parts.items() if k in ("speed", "families")
             or k.startswith("compile")}
    for models in speed.values():
        for name, rows in models.items():
            lines += [f"## {name}, {rows[0]['runtime']}" if rows else f"## {name}", "",
                      "| plan | MACs | batch | latency (ms) | images/s | speed-up | ideal |",
                      "|---|---|---|---|---|---|---|"]
            lines += [f"| {r['plan']} | {r['macs_fraction']:.1%} | {r['batch']} | "
                      f"{r['latency_ms']:.2f} | {r['throughput']:.0f} | {r['speedup']:.2f}x | "
                      f"{r['ideal']:.2f}x |" for r in rows]
            lines.append("")
    for part in ("compress", "torchrun"):
        if part not in parts:
            continue
        r = parts[part]
        how = "torchrun --nproc_per_node 1" if part == "torchrun" else "one process"
        lines += [f"## compress, {how}",
                  "", f"Exit {r['returncode']}; scored on {r.get('scored_on', '?')}, evaluated "
                  f"on {r.get('evaluated_on', '?')}; scoring "
                  f"{r.get('scoring_images_per_s', '-')} images/s, search "
                  f"{r.get('search_evaluations_per_min', '-')} evaluations/min; peak memory "
                  f"{r['peak_gb']} GB.", "", "| stage | wall (s) | peak memory (GB) |", "|---|---|---|"]
        lines += [f"| {st['stage']} | {st['seconds']} | {st['peak_gb']} |" for st in r["stages"]]
        lines.append("")
    if "evidence" in parts:
        r = parts["evidence"]
        lines += [f"## The evidence study on {r.get('device', res['settings']['device'])}", "",
                  "Phases (wall s, exit): " + ", ".join(
                      f"{p['phase']} {p['seconds']} ({p['returncode']})" for p in r["phases"])
                  + ".", ""]
        if "rows" in r:
            lines += ["| row | MACs kept | top-1 before | top-1 after | speed-up b1 | "
                      "speed-up b64 |", "|---|---|---|---|---|---|"]
            lines += [f"| {name} | {v.get('macs_kept', 0):.1%} | {v['test_top1_before']:.2f} | "
                      f"{v['test_top1']:.2f} | {v.get('speedup_b1', 0):.2f}x | "
                      f"{v.get('speedup_b64', 0):.2f}x |" for name, v in r["rows"].items()]
        else:
            lines += ["Stopped:", "", "```", *r.get("tail", []), "```"]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.md are written")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--work", type=Path, help="scratch directory (default: runs/gpu_suite)")
    ap.add_argument("--smoke", action="store_true", help="every part on the CPU, tiny")
    ap.add_argument("--redo", action="store_true", help="run the parts again even if done")
    ap.add_argument("--data-dir", help="evidence: the four Fashion-MNIST files' directory")
    args = ap.parse_args(argv)
    s = SMOKE if args.smoke else GPU
    if args.data_dir:
        s = replace(s, data_dir=str(Path(args.data_dir).resolve()))
    if s.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run this on a GPU machine (or --smoke on the CPU)")
    work = args.work or ROOT / "runs" / ("gpu_suite_smoke" if args.smoke else "gpu_suite")
    work.mkdir(parents=True, exist_ok=True)
    path = args.out.with_suffix(".json")
    res = json.loads(path.read_text()) if path.exists() else {}
    if res.get("smoke") != args.smoke:  # never mix a smoke run into the GPU's results
        res = {"smoke": args.smoke, "settings": asdict(s), "parts": {}}
    res["env"] = {"device_name": device_name(s.device), "torch": torch.__version__}
    if s.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    for part in args.parts:
        if part in res["parts"] and not args.redo and not res["parts"][part].get("failed"):
            print(f"{part}: done already", flush=True)
            continue
        t0 = time.perf_counter()
        res["parts"][part] = RUNNERS[part](s, work, res["parts"])
        res.setdefault("wall_s", {})[part] = round(time.perf_counter() - t0, 1)
        fsutil.write_json(path, res)
        fsutil.write_text(args.out.with_suffix(".md"), report(res))
        print(f"{part}: {time.perf_counter() - t0:.0f} s", flush=True)
    fsutil.write_text(args.out.with_suffix(".md"), report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
