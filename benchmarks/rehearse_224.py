"""The users' path rehearsed at full resolution on this CPU: Fashion-MNIST written as an
ImageFolder tree of 224x224 RGB JPEGs, then `vitprune compress` of deit_tiny_patch16_224 with the
DeiT recipe through every stage (small settings: few search evaluations and fine-tuning steps).

    python benchmarks/rehearse_224.py --out docs/rehearse_224

Steps (each resumable; results go to --out.json as they come):
1. the image folder (``--per-class`` training and ``--val-per-class`` validation images per
   class, bicubic 28 -> 224, RGB JPEG quality 90) under ``--work``;
2. the training loader's images/s (DeiT recipe transform, batch 32) with 0, 1 and 2 worker
   processes, against the model's own training images/s (student step with distillation from
   the dense teacher, batch 32): whether loading keeps up;
3. the compress command in a child process, its wall time and peak resident memory per stage
   (sampled every 0.2 s; stages from its progress lines).
The model has random weights (no hub access here): the rehearsal checks that every stage runs at
224 and what it costs, not accuracy. Time on quiet cores only. The page is :func:`page` of
--out.json; its hand-written reading is kept between the page's reading markers when the page is
regenerated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune import fsutil  # noqa: E402

MODEL = "deit_tiny_patch16_224"
SETTINGS = ["--budget", "0.6", "--recipe", "deit", "--trials", "6", "--init", "4",
            "--calib-images", "128", "--score-images", "256", "--calib-size", "500",
            "--epochs", "1", "--max-steps-per-epoch", "20", "--batch-size", "32",
            "--bench-batches", "1", "32", "--workers", "1", "--threads", "2"]


def write_folder(root: Path, per_class: int, val_per_class: int) -> dict:
    """Fashion-MNIST as root/{train,val}/<class>/*.jpg at 224x224 RGB; skipped when complete."""
    from PIL import Image

    from vitprune.data import load_splits

    done = root / "complete.json"
    if done.exists():
        return json.loads(done.read_text())
    splits = load_splits("fashion-mnist")
    t0 = time.perf_counter()
    counts = {}
    for split, ds, per in (("train", splits.train, per_class), ("val", splits.test, val_per_class)):
        seen = [0] * 10
        for i in range(len(ds)):
            label = int(ds.labels[i])
            if seen[label] >= per:
                if min(seen) >= per:
                    break
                continue
            d = root / split / f"class_{label}"
            d.mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(ds.images[i, 0].numpy()).resize((224, 224), Image.BICUBIC)
            img.convert("RGB").save(d / f"{seen[label]:05d}.jpg", quality=90)
            seen[label] += 1
        counts[split] = sum(seen)
    rec = {"images": counts, "seconds": round(time.perf_counter() - t0, 1),
           "bytes": sum(f.stat().st_size for f in root.rglob("*.jpg"))}
    fsutil.write_json(done, rec)
    return rec


def loader_rate(root: Path, workers: int, batches: int = 12, batch: int = 32) -> float:
    """Training-loader images/s with the DeiT recipe's transform (first batch not timed)."""
    from vitprune.data import load_splits, make_loader, training_set
    from vitprune.pipeline import source_data_config
    from vitprune.train import RECIPES

    splits = load_splits("imagefolder", root, img_size=224, workers=workers,
                         data_config=source_data_config(MODEL))
    r = RECIPES["deit"]
    ds = training_set(splits, augment=True, rand_augment=r["rand_augment"],
                      random_erasing=r["random_erasing"])
    loader = make_loader(ds, batch, shuffle=True, drop_last=True, num_workers=workers)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def train_rate(steps: int = 4, batch: int = 32) -> float:
    """Images/s of fine-tuning steps: student forward + backward, teacher forward, AdamW."""
    from vitprune.adapters import vit_shape
    from vitprune.models import build_model
    from vitprune.search import Ratios, ratios_to_plan
    from vitprune.surgery import prune
    from vitprune.train import Distiller

    torch.manual_seed(0)
    teacher = build_model(MODEL, num_classes=10).eval()
    student = prune(teacher, ratios_to_plan(vit_shape(teacher), Ratios.uniform(
        12, heads=1 / 3, neurons=0.4, tokens=0.3))).train()
    loss_fn = Distiller(teacher, alpha=0.5, temperature=2.0)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = loss_fn(student(x), y, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch / (sum(times[1:]) / steps)


def run_compress(root: Path, out: Path) -> dict:
    """The compress command in a child process: wall time and peak RSS (GB) per stage."""
    cmd = [sys.executable, "-m", "vitprune", "compress", "--model", MODEL, "--data", "imagefolder",
           "--data-dir", str(root), *SETTINGS, "--out", str(out)]
    return staged_run(cmd, rss_gb)


def rss_gb(pid: int) -> float:
    """Resident memory of process ``pid`` in GB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 2**20 for line in status if line.startswith("VmRSS")), 0.0)


def staged_run(cmd: list[str], memory, env: dict | None = None) -> dict:
    """Run ``cmd`` (a vitprune compress command line), timing each stage from its progress
    lines and sampling ``memory(pid)`` (GB) every 0.2 s: wall seconds and peak per stage."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    peak = {"all": 0.0}
    stages: list[dict] = [{"stage": "start (load data and model)", "t": time.perf_counter(),
                           "peak_gb": 0.0}]

    def sample():
        while proc.poll() is None:
            gb = memory(proc.pid)
            stages[-1]["peak_gb"] = max(stages[-1]["peak_gb"], gb)
            peak["all"] = max(peak["all"], gb)
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-40:]
        if line.startswith("[compress] "):
            stages.append({"stage": line[len("[compress] "):].strip(), "t": time.perf_counter(),
                           "peak_gb": 0.0})
    rc = proc.wait()
    end = time.perf_counter()
    rows = [{"stage": s["stage"], "seconds": round((stages[i + 1]["t"] if i + 1 < len(stages)
                                                      else end) - s["t"], 1),
             "peak_gb": round(s["peak_gb"], 2)} for i, s in enumerate(stages)]
    return {"command": " ".join(cmd[1:]), "returncode": rc, "stages": rows,
            "peak_gb": round(peak["all"], 2), "tail": tail if rc else tail[-12:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("runs/rehearse_224"))
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--val-per-class", type=int, default=200)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(2)
    jpath = args.out.with_suffix(".json")
    res = json.loads(jpath.read_text()) if jpath.exists() else {}
    res["cpu_cores"] = os.cpu_count()
    root = args.work / "fmnist224"
    res["folder"] = write_folder(root, args.per_class, args.val_per_class)
    fsutil.write_json(jpath, res)
    for w in (0, 1, 2):
        key = f"loader_images_per_s_workers{w}"
        if key not in res:
            res[key] = round(loader_rate(root, w), 1)
            print(key, res[key], flush=True)
            fsutil.write_json(jpath, res)
    if "train_images_per_s" not in res:
        res["train_images_per_s"] = round(train_rate(), 1)
        print("train images/s", res["train_images_per_s"], flush=True)
        fsutil.write_json(jpath, res)
    if "compress" not in res or res["compress"]["returncode"]:
        res["compress"] = run_compress(root, args.work / "compress")
        fsutil.write_json(jpath, res)
    pages.write(args.out.with_suffix(".md"), page(res), after="## Reading")
    return 0 if res["compress"]["returncode"] == 0 else 1


def page(res: dict) -> str:
    """The page's generated text, from ``docs/rehearse_224.json`` alone."""
    f, c = res["folder"], res["compress"]
    lines = [
        "# Rehearsal at 224: deit_tiny_patch16_224 compressed on Fashion-MNIST JPEGs", "",
        "Command: `python benchmarks/rehearse_224.py --out docs/rehearse_224`  ",
        f"CPU, {res['cpu_cores']} cores, 2 torch threads, quiet. The image folder: "
        f"{f['images']['train']} training and {f['images']['val']} validation JPEGs at 224x224 "
        f"({f['bytes'] / 1e6:.0f} MB, written in {f['seconds']:.0f} s). Random weights (no "
        "hub here): the rehearsal shows that every stage runs at full resolution and what it "
        "costs, not accuracy.", "",
        f"`vitprune {c['command'].split(' ', 2)[2]}`", "",
        f"Exit status {c['returncode']}; peak resident memory {c['peak_gb']:.2f} GB.", "",
        "| stage | wall (s) | peak RSS (GB) |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_gb']:.2f} |"
              for s in c["stages"]]
    lines += ["", "Loading against training (batch 32; the DeiT recipe's transform: random "
              "resized crop, flip, RandAugment, random erasing):", "",
              "| | images/s |", "|---|---|"]
    for w in (0, 1, 2):
        lines.append(f"| loader, {w} worker process(es) | {res[f'loader_images_per_s_workers{w}']:.1f} |")
    lines.append(f"| fine-tuning step (student + teacher forward, backward, AdamW) | "
                 f"{res['train_images_per_s']:.1f} |")
    return "\n".join([*lines, "", "## Reading"])


if __name__ == "__main__":
    sys.exit(main())
