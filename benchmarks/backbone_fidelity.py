"""docs/backbones.md and docs/backbones.json: a DINOv2-S-shaped backbone (no classifier)
compressed by feature fidelity at two MACs budgets, against its measured speed.

The model is DINOv2-S's geometry (``vit_small_patch14_dinov2``: width 384, 6 heads of 64,
12 blocks, MLP 1536, layer scale) on 28x28 grey images in 7x7 patches (17 tokens), with seeded
random weights and ``num_classes=0``: vitprune downloads no weights, and on this CPU a model of
that width can only be fine-tuned at a small token count. Layer scale starts at 1.0 (at
DINOv2's 1e-5 a random model's blocks would add almost nothing, and every plan would keep a
fidelity of 100). The data is a folder of Fashion-MNIST images (``run`` writes it: 3,000
training images in class folders, 1,000 test images), so the k-NN top-1 of the embeddings is
there beside the fidelity. Each cell is ``vitprune.compress`` on it with the defaults a
backbone gets: the feature objective, HSIC against the dense features, feature distillation
(cosine, alpha 1).

    python benchmarks/backbone_fidelity.py run --runs runs/backbones --seeds 0 1   # ~35 min, 1 thread
    python benchmarks/backbone_fidelity.py time --runs runs/backbones              # ~3 min, quiet cores
    python benchmarks/backbone_fidelity.py report --runs runs/backbones            # docs/backbones.{json,md}

``run`` resumes (each cell is a compress run directory); ``time`` measures the dense and
fine-tuned models interleaved at batch 1 and 64 (time it with nothing else on the cores);
``report`` reads both and writes the page, keeping its reading block.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

import vitprune  # noqa: E402
from vitprune import fsutil  # noqa: E402
from vitprune.adapters import adapter_for, input_shape  # noqa: E402
from vitprune.models import MODEL_CONFIG, ArchSpec, build_model  # noqa: E402
from vitprune.rundir import METRICS, MODEL  # noqa: E402
from vitprune.speed import compare  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "vit_small_patch14_dinov2"
ARGS = dict(img_size=28, patch_size=7, in_chans=1, num_classes=0, init_values=1.0)
DATA_CONFIG = {"input_size": [1, 28, 28], "interpolation": "bilinear", "mean": [0.2860],
               "std": [0.3530], "crop_pct": 1.0, "crop_mode": "center"}
BUDGETS = ("0.6", "0.4")
SETTINGS = dict(trials=12, init=4, calib_size=500, calib_images=256, score_images=256, epochs=2,
                max_steps_per_epoch=40, batch_size=64, lr=5e-4)
FMNIST = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "boot")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as fh:
        data = fh.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_folder(out: Path, n_train: int = 3000, n_test: int = 1000) -> Path:
    """The first ``n_train`` training and ``n_test`` test images of Fashion-MNIST as PNGs in
    class folders (``train/<class>/``, ``val/<class>/``); kept where it exists."""
    from PIL import Image

    if (out / "val").is_dir():
        return out
    tmp = out.with_name(out.name + ".tmp")
    for split, prefix, n in (("train", "train", n_train), ("val", "t10k", n_test)):
        images = _idx(FMNIST / f"{prefix}-images-idx3-ubyte.gz")[:n]
        labels = _idx(FMNIST / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        for i, (img, y) in enumerate(zip(images, labels)):
            d = tmp / split / CLASSES[y]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    tmp.rename(out)
    return out


def dense_dir(runs: Path) -> Path:
    """The seeded random dense model, saved once with its preprocessing."""
    out = runs / "dense"
    if not (out / MODEL_CONFIG).is_file():
        torch.manual_seed(0)
        model = build_model(NAME, **ARGS).eval()
        adapter_for(model).set_data_config(model, DATA_CONFIG)
        vitprune.save(out, model, ArchSpec(NAME, ARGS))
    return out


def cmd_run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data, dense = write_folder(args.runs / "images"), dense_dir(args.runs)
    for seed in args.seeds:
        for budget in BUDGETS:
            out = args.runs / f"b{budget}_s{seed}"
            res = vitprune.compress(str(dense), "imagefolder", budget, out, data_dir=data,
                                    seed=seed, progress=False, **SETTINGS)
            print(out, res.summary(), flush=True)


def _cells(runs: Path) -> list[tuple[str, int, Path]]:
    return [(b, int(d.name.split("_s")[1]), d) for b in BUDGETS
            for d in sorted(runs.glob(f"b{b}_s*")) if (d / METRICS).is_file()]


def cmd_time(args: argparse.Namespace) -> None:
    """Dense and every fine-tuned model timed in turn (rounds interleaved), batch 1 and 64."""
    torch.set_num_threads(args.threads)
    models = {"dense": vitprune.load(dense_dir(args.runs))}
    for budget, seed, d in _cells(args.runs):
        models[f"b{budget}_s{seed}"] = vitprune.load(d / MODEL)
    shape = input_shape(models["dense"])
    got = {}
    for batch in (1, 64):
        rounds = [compare(models, shape, batch, rounds=1, reps=20 if batch == 1 else 3,
                          warmup=3 if r == 0 else 0) for r in range(args.rounds)]
        got[f"batch{batch}"] = {k: [r[k]["latency_ms"] for r in rounds] for k in models}
    fsutil.write_json(args.runs / "timing.json", {"threads": args.threads, "rounds": args.rounds,
                                                 "latency_ms": got, "torch": torch.__version__})


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _summary(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4), "min": round(min(values), 4),
            "max": round(max(values), 4), "n": len(values)}


def cmd_report(args: argparse.Namespace) -> None:
    has_timing = (args.runs / "timing.json").is_file()
    timing = _read(args.runs / "timing.json") if has_timing else None
    rows = []
    for budget in BUDGETS:
        cells = [c for c in _cells(args.runs) if c[0] == budget]
        if not cells:
            continue
        ev = [_read(d / METRICS)["rows"] for _, _, d in cells]
        row = {"budget": float(budget), "seeds": [s for _, s, _ in cells],
               "macs_kept": _summary([e["finetuned"]["macs"] / e["dense"]["macs"] for e in ev]),
               "gmacs": _summary([e["finetuned"]["macs"] / 1e9 for e in ev])}
        for key in ("pruned", "finetuned"):
            row[f"{key}_test_fidelity"] = _summary([e[key]["test_fidelity"] for e in ev])
            row[f"{key}_knn_top1"] = _summary([e[key]["test_knn_top1"] for e in ev])
        row["dense_knn_top1"] = ev[0]["dense"]["test_knn_top1"]
        row["dense_gmacs"] = round(ev[0]["dense"]["macs"] / 1e9, 4)
        if timing:
            for b, lat in timing["latency_ms"].items():
                ups = [statistics.median(d / p for d, p in zip(lat["dense"], lat[f"b{budget}_s{s}"]))
                       for _, s, _ in cells]
                row[f"speedup_{b}"] = _summary(ups)
        rows.append(row)
    dense = _read(dense_dir(args.runs) / MODEL_CONFIG)
    record = {"command": "python benchmarks/backbone_fidelity.py run --runs RUNS --seeds "
                         + " ".join(map(str, sorted({s for r in rows for s in r["seeds"]})))
                         + "; ... time --runs RUNS; ... report --runs RUNS",
              "model": NAME, "model_args": ARGS,
              "dense_gmacs": rows[0]["dense_gmacs"] if rows else None,
              "settings": SETTINGS, "timing": None if timing is None else
              {"threads": timing["threads"], "rounds": timing["rounds"], "torch": timing["torch"]},
              "dense_arch": dense["arch"], "rows": rows}
    pages.publish(ROOT / "docs" / "backbones", record, page)


def _fmt(s: dict, pct: bool = False) -> str:
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.2f}")
    return f(s["mean"]) if s["n"] == 1 else f"{f(s['mean'])} ({f(s['min'])}-{f(s['max'])})"


def page(r: dict) -> str:
    seeds = sorted({s for row in r["rows"] for s in row["seeds"]})
    lines = [
        "# Backbones: feature fidelity against MACs and measured speed", "",
        "Generated by `benchmarks/backbone_fidelity.py report` from `docs/backbones.json`; "
        "the commands are in its docstring and the JSON's `command`.", "",
        f"A DINOv2-S-shaped model (`{r['model']}`: width 384, 6 heads, 12 blocks, MLP 1536, "
        "layer scale; here on 28x28 grey images in 7x7 patches, 17 tokens, "
        f"{r['dense_gmacs']} GMACs, seeded random weights, `num_classes=0`), compressed by "
        "`vitprune compress` with a backbone's defaults: the search maximises the masked "
        "model's feature fidelity on calibration images, HSIC scores against the dense model's "
        "features, fine-tuning is feature distillation (1 - cosine, alpha 1, no labels read). "
        "Fidelity is 100 x the mean cosine similarity of the output embedding to the dense "
        "model's on the 1,000 test images; the k-NN top-1 (k = 20, DINO's weighting) classifies "
        "them against the 500 labelled calibration images. "
        f"Mean over seeds {', '.join(map(str, seeds))} (range in brackets); "
        f"{r['settings']['epochs']} epochs of {r['settings']['max_steps_per_epoch']} steps of "
        f"{r['settings']['batch_size']} images of fine-tuning.", "",
        "| budget | MACs kept | GMACs | fidelity before fine-tuning | fidelity after | k-NN top-1 "
        "before | k-NN top-1 after | CPU speed-up b1 | CPU speed-up b64 |",
        "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        sp = [_fmt(row[k]) + "x" if k in row else "-" for k in ("speedup_batch1", "speedup_batch64")]
        lines.append(f"| {row['budget']:.0%} | {_fmt(row['macs_kept'], True)} | "
                     f"{_fmt(row['gmacs'])} | {_fmt(row['pruned_test_fidelity'])} | "
                     f"{_fmt(row['finetuned_test_fidelity'])} | {_fmt(row['pruned_knn_top1'])} | "
                     f"{_fmt(row['finetuned_knn_top1'])} | {sp[0]} | {sp[1]} |")
    if r["rows"]:
        lines.append(f"| dense | 100% | {r['dense_gmacs']} | 100 | 100 | "
                     f"{r['rows'][0]['dense_knn_top1']:.2f} | | 1x | 1x |")
    t = r["timing"]
    lines += ["", "Speed-ups: the dense and fine-tuned models timed in turn, round after round "
              + (f"({t['rounds']} rounds, {t['threads']} threads, torch {t['torch']}), median of "
                 "the rounds' ratios; mean (range) over seeds." if t else "(not timed yet)."),
              "", "## Reading", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "time", "report"):
        p = sub.add_parser(name)
        p.add_argument("--runs", type=Path, default=Path("runs/backbones"))
        p.add_argument("--threads", type=int, default=1 if name == "run" else 2)
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
        p.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    {"run": cmd_run, "time": cmd_time, "report": cmd_report}[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
