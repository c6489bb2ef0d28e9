"""A careless user's sweep: every command with each mistake that applies to it, run as a user runs
it (``python -m vitprune ...`` in a fresh process), classified by what the user sees.

Classes: ``one line`` (exit 2, one line of stderr starting ``vitprune: error:``), ``usage``
(exit 2 from argparse: its usage block and one error line), ``accepted`` (exit 0; listed for a
reader to judge: some mistakes are honoured, e.g. a colour folder read grey), ``traceback`` (a
Python traceback or exit 1: the class this sweep exists to keep at zero), ``wrote`` (refused but
left its --out behind) and ``timeout``. Inputs (tiny random models, small image folders, tables,
plans) are made under ``--work``; results go to ``--out``.json after every case, and a re-run
skips the cases already there.

    python benchmarks/user_errors.py --work runs/user_errors --out docs/user_errors

The page is :func:`page` of --out.json; its hand-written reading is kept between the page's
reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

TINY = ["--model", "fmnist_vit_tiny"]
SYN = ["--data", "synthetic"]


def make_inputs(w: Path) -> None:
    """The files the cases read (made once)."""
    if (w / "done").exists():
        return
    import torch
    from PIL import Image

    from vitprune.io import save
    from vitprune.models import ArchSpec, build_model
    from vitprune.profile import build_table

    w.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save(w / "saved", build_model("fmnist_vit_tiny").eval(), ArchSpec("fmnist_vit_tiny"))
    torch.save(build_model("fmnist_vit_tiny").state_dict(), w / "tiny.pt")
    torch.save(build_model("fmnist_vit_d12").state_dict(), w / "d12.pt")
    (w / "garbage.pt").write_bytes(os.urandom(2000))
    (w / "notjson.json").write_text("{not json")
    (w / "foreign").mkdir()
    (w / "foreign" / "keep.txt").write_text("not vitprune's")
    (w / "a_file").write_text("x")
    rng = np.random.default_rng(0)

    def folder(name, channels=3, size=(32, 32), classes=("a", "b")):
        for split, k in (("train", 6), ("val", 2)):
            for c in classes:
                d = w / name / split / c
                d.mkdir(parents=True)
                for i in range(k):
                    shape = (*size, 3) if channels == 3 else size
                    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.png")
        return w / name

    folder("folder")
    shutil.rmtree(folder("empty_class") / "train" / "b")
    (w / "empty_class" / "train" / "b").mkdir()
    png = folder("truncated") / "train" / "a" / "0.png"
    png.write_bytes(png.read_bytes()[:60])
    (folder("not_image") / "train" / "a" / "x.png").write_text("text")
    folder("many", channels=1, size=(28, 28), classes=tuple("abcdefghijkl"))
    (w / "no_val" / "train" / "a").mkdir(parents=True)
    table = build_table(build_model("fmnist_vit_tiny").eval(), batch=2, threads=1, repeats=1,
                        warmup=1, passes=1, neuron_points=4, calibration_plans=4,
                        progress=False).to_dict()
    (w / "table.json").write_text(json.dumps(table))
    bad = json.loads(json.dumps(table))
    bad["meta"]["batch"] = "two"
    (w / "table_str.json").write_text(json.dumps(bad))
    bf16 = json.loads(json.dumps(table))
    bf16["meta"]["dtype"] = "bfloat16"
    (w / "table_bf16.json").write_text(json.dumps(bf16))
    d12 = build_table(build_model("fmnist_vit_d12").eval(), batch=2, threads=1, repeats=1,
                      warmup=1, passes=1, neuron_points=4, calibration_plans=4, progress=False)
    (w / "table_d12.json").write_text(json.dumps(d12.to_dict()))
    from vitprune.plan import BlockPlan, PrunePlan

    plan = PrunePlan(tuple(BlockPlan(list(range(2)), list(range(32))) for _ in range(4)), ())
    (w / "plan.json").write_text(json.dumps(plan.to_dict()))
    d12plan = PrunePlan(tuple(BlockPlan([0], list(range(32))) for _ in range(12)), ())
    (w / "plan_d12.json").write_text(json.dumps(d12plan.to_dict()))
    oob = PrunePlan(tuple(BlockPlan([0, 7], list(range(32))) for _ in range(4)), ())
    (w / "plan_oob.json").write_text(json.dumps(oob.to_dict()))
    (w / "done").write_text("")


def cases(w: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (argv after ``vitprune``, extra environment)."""
    out = "{out}"
    model_mistakes = {
        "unknown model": ["--model", "no_such_vit"],
        "missing model dir": ["--model", str(w / "nowhere")],
        "model is a file": ["--model", str(w / "a_file")],
        "unknown model arg": [*TINY, "--model-args", "bogus_kw=3"],
        "model arg type": [*TINY, "--model-args", "depth=abc"],
        "negative depth": [*TINY, "--model-args", "depth=-1"],
        "heads do not divide": [*TINY, "--model-args", "num_heads=5"],
        "bad global pool": [*TINY, "--model-args", "global_pool=bogus"],
        "zero classes": [*TINY, "--model-args", "num_classes=0"],
        "zero width": [*TINY, "--model-args", "embed_dim=0"],
        "model args malformed": [*TINY, "--model-args", "depth"],
        "checkpoint missing": [*TINY, "--checkpoint", str(w / "none.pt")],
        "checkpoint a directory": [*TINY, "--checkpoint", str(w / "folder")],
        "checkpoint garbage": [*TINY, "--checkpoint", str(w / "garbage.pt")],
        "checkpoint of another model": [*TINY, "--checkpoint", str(w / "d12.pt")],
        "pretrained small config": [*TINY, "--pretrained"],
    }
    data_mistakes = {
        "imagefolder without dir": ["--data", "imagefolder"],
        "imagefolder missing dir": ["--data", "imagefolder", "--data-dir", str(w / "nowhere")],
        "no val split": ["--data", "imagefolder", "--data-dir", str(w / "no_val")],
        "empty class": ["--data", "imagefolder", "--data-dir", str(w / "empty_class")],
        "truncated image": ["--data", "imagefolder", "--data-dir", str(w / "truncated")],
        "not an image": ["--data", "imagefolder", "--data-dir", str(w / "not_image")],
        "unknown dataset": ["--data", "mnist-ish"],
        "fmnist missing": ["--data", "fashion-mnist", "--data-dir", str(w / "nowhere")],
        "calib size 0": [*SYN, "--calib-size", "0"],
        "calib size text": [*SYN, "--calib-size", "abc"],
        "workers -1": [*SYN, "--workers", "-1"],
        "img size 0": ["--data", "imagefolder", "--data-dir", str(w / "folder"), "--img-size", "0"],
        "img size absurd": ["--data", "imagefolder", "--data-dir", str(w / "folder"),
                            "--img-size", "100000"],
        "img size for fixed data": [*SYN, "--img-size", "32"],
        "more classes than the head": ["--data", "imagefolder", "--data-dir", str(w / "many")],
    }
    device_mistakes = {
        "device banana": ["--device", "banana"], "device mps": ["--device", "mps"],
        "device cuda": ["--device", "cuda"], "device cuda:9": ["--device", "cuda:9"],
        "device cuda:x": ["--device", "cuda:x"], "threads 0": ["--threads", "0"],
        "threads -1": ["--threads", "-1"], "threads text": ["--threads", "abc"],
    }
    train_mistakes = {
        "epochs 0": ["--epochs", "0"], "epochs -1": ["--epochs", "-1"],
        "batch 0": ["--batch-size", "0"], "batch above split": ["--batch-size", "100000"],
        "lr negative": ["--lr", "-1"], "lr nan": ["--lr", "nan"],
        "weight decay negative": ["--weight-decay", "-1"],
        "warmup negative": ["--warmup-epochs", "-1"],
        "smoothing 1.5": ["--label-smoothing", "1.5"], "grad clip -1": ["--grad-clip", "-1"],
        "mixup -1": ["--mixup", "-1"], "mixup odd batch": ["--mixup", "0.8", "--batch-size", "63"],
        "rand augment bogus": ["--rand-augment", "rand-zzz-qqq"],
        "rand augment in memory": ["--rand-augment", "rand-m9"],
        "erasing 2": ["--random-erasing", "2"], "erasing in memory": ["--random-erasing", "0.2"],
        "ema 1": ["--ema-decay", "1"], "max steps 0": ["--max-steps-per-epoch", "0"],
        "recipe bogus": ["--recipe", "bogus"],
    }
    search_mistakes = {
        "budget 0": ["--budget", "0"], "budget 1.5": ["--budget", "1.5"],
        "budget text": ["--budget", "abc"], "budget unreachable": ["--budget", "0.001"],
        "budget ms with macs": ["--budget", "2ms"], "trials 0": ["--trials", "0"],
        "init above trials": ["--trials", "3", "--init", "5"], "calib images 0": ["--calib-images", "0"],
        "max ratio 1": ["--max-ratio", "1"], "token block 99": ["--token-blocks", "99"],
        "neuron multiple 0": ["--neuron-multiple", "0"],
        "neuron multiple above MLP": ["--neuron-multiple", "4096"],
        "latency without table": ["--budget-metric", "latency"],
        "table missing": ["--budget-metric", "latency", "--latency-table", str(w / "none.json")],
        "table not json": ["--budget-metric", "latency", "--latency-table", str(w / "notjson.json")],
        "table meta type": ["--budget-metric", "latency", "--latency-table", str(w / "table_str.json")],
        "table bf16": ["--budget-metric", "latency", "--latency-table", str(w / "table_bf16.json")],
        "table of another model": ["--budget-metric", "latency", "--latency-table",
                                   str(w / "table_d12.json")],
        "score images 0": ["--score-images", "0"], "criterion bogus": ["--criterion", "bogus"],
    }
    out_mistakes = {
        "out foreign dir": ["--out", str(w / "foreign")],
        "out under a file": ["--out", str(w / "a_file" / "run")],
    }
    quick_train = ["--epochs", "1", "--max-steps-per-epoch", "1", "--quiet"]
    quick_search = ["--trials", "3", "--init", "2", "--calib-images", "16", "--score-images", "16"]
    base = {
        "train": ["train", *TINY, *SYN, *quick_train, "--out", out],
        "eval": ["eval", *TINY, *SYN],
        "score": ["score", *TINY, *SYN, "--score-images", "16", "--out", out],
        "search": ["search", *TINY, *SYN, "--budget", "0.6", *quick_search, "--quiet",
                   "--out", out],
        "compress": ["compress", *TINY, *SYN, "--budget", "0.6", *quick_search, *quick_train,
                     "--out", out],
        "finetune": ["finetune", "--student", str(w / "saved"), "--teacher", str(w / "saved"),
                     *SYN, *quick_train, "--out", out],
        "prune": ["prune", *TINY, "--plan", str(w / "plan.json"), "--out", out],
        "cost": ["cost", *TINY], "info": ["info", *TINY],
        "bench": ["bench", *TINY, "--repeats", "1", "--warmup", "1"],
        "export": ["export", "--model", str(w / "saved"), "--out", out + ".onnx"],
        "latency-table": ["latency-table", *TINY, "--repeats", "1", "--token-points", "2",
                          "--neuron-points", "2", "--out", out + ".json", "--quiet"],
    }
    groups = {
        "train": [model_mistakes, data_mistakes, device_mistakes, train_mistakes, out_mistakes],
        "eval": [model_mistakes, data_mistakes, device_mistakes],
        "score": [model_mistakes, data_mistakes, device_mistakes, out_mistakes,
                  {k: v for k, v in search_mistakes.items() if k.startswith(("score", "crit"))}],
        "search": [model_mistakes, data_mistakes, device_mistakes, search_mistakes, out_mistakes],
        "compress": [model_mistakes, data_mistakes, device_mistakes, train_mistakes,
                     search_mistakes, out_mistakes],
        "finetune": [data_mistakes, device_mistakes, train_mistakes, out_mistakes],
        "prune": [model_mistakes, out_mistakes],
        "cost": [model_mistakes], "info": [model_mistakes],
        "bench": [model_mistakes, device_mistakes],
        "export": [model_mistakes], "latency-table": [model_mistakes, device_mistakes],
    }
    table: dict[str, tuple[list[str], dict]] = {}
    for cmd, gs in groups.items():
        for g in gs:
            for name, extra in g.items():
                argv = list(base[cmd])
                if "--model" in extra and "--model" in argv:  # the mistake replaces the model
                    i = argv.index("--model")
                    del argv[i:i + 2]
                if "--data" in extra and "--data" in argv:
                    i = argv.index("--data")
                    del argv[i:i + 2]
                if "--out" in extra:
                    i = argv.index("--out")
                    del argv[i:i + 2]
                table[f"{cmd}: {name}"] = ([*argv, *extra], {})
    specific = {
        "prune: plan missing": ["prune", *TINY, "--plan", str(w / "none.json"), "--out", out],
        "prune: plan not json": ["prune", *TINY, "--plan", str(w / "notjson.json"), "--out", out],
        "prune: plan of another model": ["prune", *TINY, "--plan", str(w / "plan_d12.json"),
                                         "--out", out],
        "prune: head out of range": ["prune", *TINY, "--plan", str(w / "plan_oob.json"),
                                     "--out", out],
        "prune: out is the input": ["prune", "--model", str(w / "saved"), "--plan",
                                    str(w / "plan.json"), "--out", str(w / "saved")],
        "cost: plan of another model": ["cost", *TINY, "--plan", str(w / "plan_d12.json")],
        "cost: table meta type": ["cost", *TINY, "--latency-table", str(w / "table_str.json")],
        "cost: img size 0": ["cost", *TINY, "--img-size", "0"],
        "info: img size absurd": ["info", *TINY, "--img-size", "100000"],
        "bench: runtime bogus": ["bench", *TINY, "--runtime", "bogus"],
        "bench: batch 0": ["bench", *TINY, "--batch", "0"],
        "bench: batch absurd": ["bench", *TINY, "--batch", "100000000"],
        "bench: repeats 0": ["bench", *TINY, "--repeats", "0"],
        "bench: int8 on compile": ["bench", *TINY, "--runtime", "compile", "--int8"],
        "export: format bogus": ["export", *TINY, "--format", "bogus", "--out", out],
        "export: opset 12": ["export", *TINY, "--opset", "12", "--out", out],
        "export: batch 0": ["export", *TINY, "--batch", "0", "--out", out],
        "export: out exists": ["export", *TINY, "--out", str(w / "a_file")],
        "search: scores missing": ["search", *TINY, *SYN, "--budget", "0.6", "--scores",
                                   str(w / "none.safetensors"), "--out", out],
        "search: scores garbage": ["search", *TINY, *SYN, "--budget", "0.6", "--scores",
                                   str(w / "garbage.pt"), "--out", out],
        "search: resume nothing": ["search", *TINY, *SYN, "--budget", "0.6", "--resume",
                                   "--out", out],
        "finetune: student missing": ["finetune", "--student", str(w / "nowhere"), "--teacher",
                                      str(w / "saved"), *SYN, "--out", out],
        "finetune: kd alpha 0": ["finetune", "--student", str(w / "saved"), "--teacher",
                                 str(w / "saved"), *SYN, "--kd-alpha", "0", "--out", out],
        "finetune: kd temperature 0": ["finetune", "--student", str(w / "saved"), "--teacher",
                                       str(w / "saved"), *SYN, "--kd-temperature", "0",
                                       "--out", out],
        "latency-table: batch 0": ["latency-table", *TINY, "--batch", "0", "--out", out],
        "latency-table: dtype bf16 on cpu": ["latency-table", *TINY, "--dtype", "bfloat16",
                                             "--device", "cpu", "--out", out],
    }
    for k, v in specific.items():
        table[k] = (v, {})
    for k, env in {"WORLD_SIZE without rendezvous": {"WORLD_SIZE": "2", "RANK": "0"},
                   "WORLD_SIZE text": {"WORLD_SIZE": "abc"}}.items():
        table[f"score: {k}"] = (base["score"], env)
        table[f"compress: {k}"] = (base["compress"], env)
    return table


def classify(rc: int, err: str, wrote: bool) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    if "Traceback" in err or rc == 1:
        return "traceback"
    if rc == 0:
        return "accepted"
    if rc in (124, 137) or rc < 0:
        return "timeout"
    if rc == 2 and wrote:
        return "wrote"
    if rc == 2 and lines and lines[0].startswith("usage:"):
        return "usage"
    if rc == 2 and len(lines) == 1 and lines[0].startswith("vitprune: error:"):
        return "one line"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/user_errors"))
    ap.add_argument("--out", type=Path, default=Path("docs/user_errors"))
    ap.add_argument("--timeout", type=int, default=180)
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    a = ap.parse_args()
    make_inputs(a.work)
    path = a.out.with_suffix(".json")
    results = json.loads(path.read_text())["cases"] if path.exists() else {}
    todo = {k: v for k, v in cases(a.work).items() if a.only in k and k not in results}
    env0 = {k: v for k, v in os.environ.items()
            if k not in ("VITPRUNE_DEBUG", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    for i, (name, (argv, env)) in enumerate(todo.items()):
        out = a.work / "outs" / hashlib.sha1(name.encode()).hexdigest()[:12]
        shutil.rmtree(out, ignore_errors=True)
        for leftover in (Path(str(out) + ".json"), Path(str(out) + ".onnx")):
            leftover.unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [x.replace("{out}", str(out)) for x in argv]
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "vitprune", *argv], capture_output=True,
                               text=True, timeout=a.timeout, env={**env0, **env})
            rc, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired:
            rc, err = 124, ""
        wrote = any(Path(str(out) + s).exists() for s in ("", ".json", ".onnx"))
        kind = classify(rc, err, wrote)
        line = next((x for x in reversed(err.splitlines()) if x.strip()), "")
        results[name] = {"argv": argv, "env": env, "rc": rc, "class": kind,
                         "seconds": round(time.perf_counter() - t0, 1), "last_line": line[:400]}
        print(f"[{i + 1}/{len(todo)}] {kind:9s} {name}: {line[:120]}", flush=True)
        write(path, results)
    write(path, results)


def write(path: Path, results: dict) -> None:
    from vitprune import fsutil

    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["class"]] = counts.get(r["class"], 0) + 1
    record = {"command": "python benchmarks/user_errors.py --work runs/user_errors "
                         f"--out {path.with_suffix('')}",
              "counts": counts, "cases": results}
    fsutil.write_json(path, record)
    pages.write(path.with_suffix(".md"), page(record), after="## Reading")


def page(record: dict) -> str:
    """The page's generated text, from ``docs/user_errors.json`` alone."""
    results, counts = record["cases"], record["counts"]
    argv = record["command"].split()
    name = Path(argv[argv.index("--out") + 1]).name + ".json"
    md = [f"# A careless user's sweep: {len(results)} cases", "",
          f"Command: `{record['command']}` (results: {name}). Each case runs "
          "`python -m vitprune ...` in a fresh process.",
          "", "| class | cases |", "|---|---|",
          *(f"| {k} | {v} |" for k, v in sorted(counts.items())), "",
          "Cases not refused with one line.",
          "", "| case | class | exit | last line |", "|---|---|---|---|"]
    for case, r in results.items():
        if r["class"] != "one line":
            md.append(f"| {case} | {r['class']} | {r['rc']} | "
                      f"{r['last_line'][:160].replace('|', '/')} |")
    return "\n".join([*md, "", "## Reading"])


if __name__ == "__main__":
    main()
