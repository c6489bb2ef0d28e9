"""Evidence for the method on the Fashion-MNIST baseline: ablations and a pruning peer.

Every cell is one (method, budget, seed): a plan at the budget, physical pruning, the same
fine-tuning recipe (distillation from the dense model), test top-1. The methods:

1. dimensions: all three jointly (ours, vitprune's defaults) vs heads only, neurons only, tokens
   only, and heads + neurons (no tokens); the restricted variants search ratios up to
   ``--wide-ratio`` (0.9), since with the default 0.5 most of them cannot reach the budget at all,
   and so does a joint variant ("ours, ratios to 0.9") for a like-for-like comparison;
2. criterion: HSIC (ours) vs weight magnitude, first-order Taylor, random scores, same search;
3. search: GP-EI (ours) vs random search vs uniform ratios, same HSIC ranking;
4. peer: Torch-Pruning's ViT recipe (benchmarks/peer_torch_pruning.py) bisected to the budget;
5. token merging: ToMe (benchmarks/peer_tome.py; r per block, one more in the first blocks than
   in the rest, landing just under the budget), training-free on the dense model and fine-tuned
   with the same recipe;
6. reference: the dense model given exactly the same fine-tuning (self-distillation from its own
   copy, same epochs, recipe and seeds), so every change is measured against equal training.

Every finished cell keeps its per-image test predictions (``test_pred.npy``, one byte per image)
beside its ``result.json``, for paired intervals (benchmarks/stats.py).

Run in the background; resumable (each cell keeps its stages under ``--runs`` and a re-run
continues where it stopped). Several processes may run the same command: each takes the next cell
no other process holds (a file lock per cell), so two one-thread processes use two cores well:

    nohup python benchmarks/results.py run --threads 1 > runs/results_0.log 2>&1 &
    nohup python benchmarks/results.py run --threads 1 > runs/results_1.log 2>&1 &

The defaults (seed 0, one fine-tuning epoch) fit this 2-core machine in about two hours;
``--seeds 0 1 --epochs 2`` is the fuller study.

Then, on quiet cores, time every finished model against the dense one and write the report:

    python benchmarks/results.py report --speed --out docs/results
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vitprune import fsutil, load
from vitprune.adapters import vit_shape
from vitprune.config import SearchSettings
from vitprune.data import load_splits
from vitprune.errors import BudgetError
from vitprune.io import save
from vitprune.pipeline import (
    calibration_batches,
    check_budget,
    finetune,
    load_dense,
    policy_search,
    score,
    test_metrics,
)
from vitprune.plan import PrunePlan
from vitprune.search.config import DIMS
from vitprune.surgery import prune
from vitprune.train import FINETUNE

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "vitprune" / "assets" / "fmnist_vit_d12"


@dataclass(frozen=True)
class Method:
    name: str
    group: str
    criterion: str = "hsic"
    search: str = "gp-ei"
    dims: tuple[str, ...] = DIMS
    wide: bool = False  # searches ratios up to --wide-ratio
    extra: bool = False  # beyond the list: runs after the others of its seed


METHODS = (
    Method("ours", "ours"),
    Method("ours, ratios to 0.9", "dimensions", wide=True),
    Method("heads only", "dimensions", dims=("heads",), wide=True),
    Method("neurons only", "dimensions", dims=("neurons",), wide=True),
    Method("tokens only", "dimensions", dims=("tokens",), wide=True),
    Method("heads + neurons", "dimensions", dims=("heads", "neurons"), wide=True, extra=True),
    Method("magnitude", "criterion", criterion="magnitude"),
    Method("taylor", "criterion", criterion="taylor"),
    Method("random scores", "criterion", criterion="random"),
    Method("random search", "search", search="random"),
    Method("uniform", "search", search="uniform"),
    Method("torch-pruning", "peer", criterion="torch-pruning", search="torch-pruning",
           dims=("heads", "neurons")),
    Method("tome, training-free", "peer", criterion="none", search="tome", dims=("tokens",)),
    Method("tome, fine-tuned", "peer", criterion="none", search="tome-ft", dims=("tokens",)),
    Method("dense, same fine-tuning", "reference", criterion="none", search="dense", dims=()),
)


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def cells(args) -> list[tuple[Method, float, int]]:
    """All cells: per seed, the issue's methods at every budget, then the extra ones."""
    picked = [m for m in METHODS if args.methods is None or m.name in args.methods]
    return [(m, b, s) for s in args.seeds for extra in (False, True) for b in args.budgets
            for m in picked if m.extra == extra
            and not (m.search == "uniform" and s != args.seeds[0])  # uniform has no randomness
            and not (m.search == "dense" and b != args.budgets[0])  # no budget: once a seed
            and not (m.search == "tome" and s != args.seeds[0])]  # training-free: no seed


class Runner:
    def __init__(self, args):
        self.args = args
        self.splits = load_splits("fashion-mnist", args.data_dir)
        self.dense, self.arch = load_dense(args.model, self.splits, device="cpu", verb="benchmark")
        # vitprune's fine-tuning recipe, with this study's epochs and distillation weight
        self.recipe = replace(FINETUNE, epochs=args.epochs, augment=args.augment,
                              kd_alpha=args.kd_alpha, max_steps_per_epoch=args.max_steps)

    def scores(self, criterion: str, seed: int):
        path = self.args.runs / "scores" / f"{criterion}_s{seed}.json"
        if path.exists():
            from vitprune.scoring import load_scores
            return load_scores(path)[0]
        opts = {"seed": seed} if criterion == "random" else {}
        return score(self.dense, self.splits, criterion, n_images=256, out=path, **opts)

    def plan(self, m: Method, budget: float, seed: int, cell: Path) -> tuple[PrunePlan, dict]:
        path = cell / "plan.json"
        if path.exists():
            info = json.loads((cell / "plan_info.json").read_text())
            return PrunePlan.load(path), info
        t0 = time.perf_counter()
        if m.search == "dense":  # the reference: nothing pruned, the same fine-tuning
            plan, info = PrunePlan.dense(vit_shape(self.dense)), {}
        elif m.search == "torch-pruning":
            from peer_torch_pruning import tp_plan

            torch.manual_seed(seed)
            batches = calibration_batches(self.splits, 640, batch_size=64)  # 10 batches, as theirs
            plan, info = tp_plan(self.dense, budget, batches)
            info = {"how": info}
        else:
            settings = self.settings(m)
            res = policy_search(self.dense, self.splits, budget, cell / "search",
                                scores=self.scores(m.criterion, seed), settings=settings,
                                seed=seed, progress=False,
                                resume=True)
            plan, info = res.best_plan, {"calib_top1": res.best.value,
                                         "bounds": [0.0, settings.max_ratio]}
        info["plan_seconds"] = round(time.perf_counter() - t0, 1)
        plan.save(path)
        fsutil.write_json(cell / "plan_info.json", info)
        return plan, info

    def settings(self, m: Method) -> SearchSettings:
        """vitprune's search settings, with the method's and this study's changes."""
        return replace(SearchSettings(), method=m.search, trials=self.args.trials,
                       init=self.args.init, dims=m.dims, anchors=False,
                       max_ratio=self.args.wide_ratio if m.wide else self.args.narrow_ratio)

    def run(self, m: Method, budget: float, seed: int) -> None:
        cell = self.args.runs / slug(m.name) / f"b{budget}" / f"s{seed}"
        if (cell / "result.json").exists():
            return
        cell.mkdir(parents=True, exist_ok=True)
        with open(cell / ".lock", "w") as lock:
            try:  # another process works on this cell; the lock dies with its holder
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            if not (cell / "result.json").exists():
                print(f"[{time.strftime('%H:%M:%S')}] {m.name} b{budget} s{seed}", flush=True)
                self._run(m, budget, seed, cell)

    def _run(self, m: Method, budget: float, seed: int, cell: Path) -> None:
        if m.search.startswith("tome"):
            return self._run_tome(m, budget, seed, cell)
        try:
            if m.search not in ("torch-pruning", "dense"):
                check_budget(self.dense, budget, self.settings(m))
            plan, info = self.plan(m, budget, seed, cell)
        except BudgetError as exc:
            fsutil.write_json(cell / "result.json", {**self.key(m, budget, seed),
                                                     "unreachable": str(exc)})
            print(f"{m.name} at {budget}: unreachable ({exc})", flush=True)
            return
        student = prune(self.dense, plan)
        before = test_metrics(student, self.splits)["test_top1"]
        t0 = time.perf_counter()
        cfg = replace(self.recipe, seed=seed)
        history = finetune(student, self.dense, self.splits, cfg, cell / "finetune", resume=True,
                           progress=False)
        wall = time.perf_counter() - t0
        save(cell / "model", student.eval(), self.arch, plan=plan,
             meta={"method": m.name, "budget": budget, "seed": seed})
        after, dense = test_metrics(student, self.splits), test_metrics(self.dense, self.splits)
        np.save(cell / "test_pred.npy", test_predictions(student, self.splits))
        result = {**self.key(m, budget, seed), **info,
                  "macs": after["macs"], "macs_kept": after["macs"] / dense["macs"],
                  "params": after["params"], "test_top1_before": before,
                  "test_top1": after["test_top1"],
                  "finetune_seconds": round(sum(h.seconds for h in history), 1),
                  "finetune_wall_this_run": round(wall, 1),
                  "calib_top1_per_epoch": [h.calib_top1 for h in history]}
        fsutil.write_json(cell / "result.json", result)
        print(json.dumps(result), flush=True)

    def _run_tome(self, m: Method, budget: float, seed: int, cell: Path) -> None:
        """ToMe at the budget: training-free, or fine-tuned like every other method. Its model
        is not saved (vitprune's format holds plans, not merges): its result and per-image
        predictions are."""
        from peer_tome import apply_tome, r_schedule

        r = r_schedule(vit_shape(self.dense), budget)
        student = apply_tome(self.dense, r).eval()
        before = test_metrics(student, self.splits)["test_top1"]
        history = []
        if m.search == "tome-ft":
            history = finetune(student, self.dense, self.splits, replace(self.recipe, seed=seed),
                               cell / "finetune", resume=True, progress=False)
        after, dense = test_metrics(student, self.splits), test_metrics(self.dense, self.splits)
        np.save(cell / "test_pred.npy", test_predictions(student, self.splits))
        result = {**self.key(m, budget, seed), "r": r, "macs": after["macs"],
                  "macs_kept": after["macs"] / dense["macs"], "params": after["params"],
                  "test_top1_before": before, "test_top1": after["test_top1"],
                  "calib_top1_per_epoch": [h.calib_top1 for h in history]}
        fsutil.write_json(cell / "result.json", result)
        print(json.dumps(result), flush=True)

    def key(self, m: Method, budget: float, seed: int) -> dict:
        return {"method": m.name, "group": m.group, "budget": budget, "seed": seed,
                "epochs": self.args.epochs, "augment": self.args.augment,
                "kd_alpha": self.args.kd_alpha}


def test_predictions(model: torch.nn.Module, splits) -> np.ndarray:
    """The predicted class of every test image, in the split's order (uint8), computed on the
    device the model is on."""
    from vitprune.adapters import logits_module
    from vitprune.data import make_loader
    from vitprune.devices import device_of
    from vitprune.train import EVAL_BATCH

    run, out, device = logits_module(model.eval()), [], device_of(model)
    with torch.no_grad():
        for x, _ in make_loader(splits.test, EVAL_BATCH):
            out.append(run(x.to(device)).argmax(dim=1).to(torch.uint8).cpu())
    return torch.cat(out).numpy()


def cmd_run(args) -> int:
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    runner = Runner(args)
    for m, b, s in cells(args):
        runner.run(m, b, s)
    return 0


def cmd_report(args) -> int:
    rows = [json.loads(p.read_text()) for p in sorted(args.runs.glob("*/b*/s*/result.json"))]
    if not rows:
        print(f"no finished cells under {args.runs}; run `python {sys.argv[0]} run` first")
        return 1
    dense = load(args.model).eval()
    speed = measure(args, dense, rows) if args.speed else load_speed(args)
    from results_report import write

    write(args, rows, dense, speed, [m.name for m in METHODS])
    return 0


def measure(args, dense, rows) -> dict:
    """Latency at batch 1 and throughput at batch 64 of each finished model (first seed) and the
    dense one, timed in turn per budget, on quiet cores."""
    from vitprune.speed import THOROUGH, compare, timing

    torch.set_num_threads(args.threads)
    out = {}
    for budget in sorted({r["budget"] for r in rows}):
        models = {"dense": dense}
        for r in rows:
            if (r["budget"] == budget and r["seed"] == min(x["seed"] for x in rows)
                    and "macs" in r and not r["method"].startswith("tome")):  # ToMe: no model dir
                models[r["method"]] = load(args.runs / slug(r["method"]) / f"b{budget}" /
                                           f"s{r['seed']}" / "model")
        out[str(budget)] = {f"b{b}": {k: v["latency_ms"] for k, v in compare(
            models, (1, 28, 28), b, **timing(b, THOROUGH)).items()}
            for b in (1, 64)}
    out["threads"] = args.threads
    fsutil.write_json(args.runs / "speed.json", out)
    return out


def load_speed(args) -> dict | None:
    path = args.runs / "speed.json"
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "report"):
        p = sub.add_parser(name)
        p.add_argument("--model", default=str(BASELINE))
        p.add_argument("--data-dir", default=None)
        p.add_argument("--runs", type=Path, default=Path("runs/results"))
        p.add_argument("--budgets", type=float, nargs="+", default=[0.6, 0.4])
        p.add_argument("--seeds", type=int, nargs="+", default=[0])
        p.add_argument("--methods", nargs="+", choices=[m.name for m in METHODS])
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--epochs", type=int, default=1)
        p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False)
        p.add_argument("--kd-alpha", type=float, default=0.5)
        p.add_argument("--trials", type=int, default=50)
        p.add_argument("--init", type=int, default=20)
        p.add_argument("--wide-ratio", type=float, default=0.9)
        # "ours" in this study caps ratios at the method's 0.5 (vitprune's default when it ran)
        p.add_argument("--narrow-ratio", type=float, default=0.5)
        p.add_argument("--max-steps", type=int, default=None, help="steps per epoch (smoke runs)")
    run, report = sub.choices["run"], sub.choices["report"]
    run.set_defaults(func=cmd_run)
    report.add_argument("--speed", action="store_true", help="time the models (quiet cores)")
    report.add_argument("--out", type=Path, default=Path("docs/results"))
    report.set_defaults(func=cmd_report)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
