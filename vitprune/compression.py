"""The end-to-end job: score -> search -> prune -> fine-tune -> evaluate -> report.

Every stage leaves its output in the run directory, written atomically, and a stage whose output
is there is not run again: re-running the same command after an interruption resumes at the first
unfinished stage (and inside the search and the fine-tuning, at the last finished evaluation or
epoch). ``compress.json`` records what the run is; a directory holding another run, or other
files, is refused rather than overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import dist, fsutil
from .adapters import vit_shape
from .cost import macs, params
from .data import Splits, load_splits, make_loader
from .errors import OutputError
from .io import load, resolve_for_data, save
from .io.model_dir import read_config
from .models import ArchSpec
from .pipeline import check_budget, finetune, parse_budget, policy_search, score
from .plan import PrunePlan
from .scoring import load_scores
from .search.config import DIMS
from .speed import compare
from .surgery import prune
from .train import TrainConfig, evaluate

MANIFEST = "compress.json"
FORMAT = "vitprune.compress"


@dataclass(frozen=True)
class CompressConfig:
    """Settings of a compression run (saved in ``compress.json``; a re-run must match).

    Attributes:
        budget: ``"0.6"`` keeps 60% of the dense MACs; ``"2.7G"`` is 2.7 GMACs per image.
        criterion: ranks heads and neurons (``hsic``, ``magnitude``, ``activation``, ``taylor``,
            ``random``).
        score_images: calibration images for scoring.
        method, trials, init: the policy search (``gp-ei``, ``random``, ``uniform``).
        calib_images: calibration images per search evaluation.
        max_ratio: upper bound of every prune ratio in the search.
        dims: the dimensions pruned (``heads``, ``neurons``, ``tokens``); the others stay whole.
        seed: seeds the search and the fine-tuning.
        epochs, batch_size, lr, warmup_epochs, weight_decay, augment: the fine-tuning recipe
            (no augmentation by default: on the Fashion-MNIST baseline, distillation without it
            recovered more accuracy per epoch; docs/compress.md).
        kd_alpha, kd_temperature, kd_hard: distillation from the dense model.
        max_steps_per_epoch: cap on fine-tuning steps per epoch (smoke tests).
        bench_batches: batch sizes of the CPU speed measurement (latency at the first).
    """

    budget: str = "0.6"
    criterion: str = "hsic"
    score_images: int = 256
    method: str = "gp-ei"
    trials: int = 50
    init: int = 20
    calib_images: int = 2000
    max_ratio: float = 0.5
    dims: tuple[str, ...] = DIMS
    seed: int = 0
    epochs: int = 8
    batch_size: int = 128
    lr: float = 5e-4
    warmup_epochs: float = 0.5
    weight_decay: float = 0.05
    augment: bool = False
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    kd_hard: bool = False
    max_steps_per_epoch: int | None = None
    bench_batches: tuple[int, ...] = (1, 64)

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           warmup_epochs=self.warmup_epochs, weight_decay=self.weight_decay,
                           augment=self.augment, seed=self.seed, kd_alpha=self.kd_alpha,
                           kd_temperature=self.kd_temperature, kd_hard=self.kd_hard,
                           max_steps_per_epoch=self.max_steps_per_epoch)


@dataclass(frozen=True)
class CompressResult:
    """What a finished run produced.

    Attributes:
        out: the run directory.
        model_dir: the compressed, fine-tuned model (``vitprune.load(model_dir)``).
        plan: the searched plan.
        metrics: the evaluation (``eval.json``): accuracy, MACs, params and speed, dense vs pruned.
        report: the Markdown report.
        model: the compressed model, loaded from ``model_dir`` (eval mode, CPU).
    """

    out: Path
    model_dir: Path
    plan: PrunePlan
    metrics: dict[str, Any]
    report: Path
    model: torch.nn.Module


def compress(model: str | Path, data: str | Splits = "fashion-mnist", budget: str | float = 0.6,
             out: str | Path = "runs/compress", *, checkpoint: str | Path | None = None,
             data_dir: str | Path | None = None, device: str = "cpu", progress: bool = True,
             **settings: Any) -> CompressResult:
    """Compress a ViT to ``budget`` and fine-tune it by distillation from the dense model.

    Args:
        model: a registered name, a timm ViT name (with ``checkpoint``) or a saved model directory.
        data: a dataset name (``fashion-mnist``, ``imagefolder``, ``synthetic``) or ready splits.
        budget: fraction of the dense MACs to keep, or a string like ``"2.7G"`` (GMACs).
        out: the run directory; re-running with the same arguments resumes it.
        checkpoint: weights for a model given by name.
        data_dir: where the dataset is.
        device: ``cpu`` or ``cuda``; under torchrun each rank takes its own GPU.
        settings: any :class:`CompressConfig` field (``trials=30``, ``epochs=4``, ...).
    Returns:
        The :class:`CompressResult`.
    Raises:
        BudgetError: no plan in the search space meets the budget (nothing is written).
        OutputError: ``out`` holds another run or other files.
    """
    cfg = CompressConfig(budget=str(budget), **settings)
    device = dist.init(device)
    splits = data if isinstance(data, Splits) else load_splits(data, data_dir)
    dense, arch = _dense(model, checkpoint, splits)
    check_budget(dense, parse_budget(cfg.budget), cfg.max_ratio, cfg.dims)  # before any write
    out = Path(out)
    manifest = {"format": FORMAT, "version": 1, "model": _model_id(model, checkpoint),
                "data": splits.name, "config": json.loads(json.dumps(dataclasses.asdict(cfg)))}
    _claim(out, manifest, {"model_path": str(model), "checkpoint": checkpoint and str(checkpoint)})
    run = _Run(out, cfg, splits, dense, arch, device, progress)
    plan = run.search()
    run.prune(plan)
    run.finetune()
    metrics = run.evaluate()
    report = run.report(metrics, plan)
    return CompressResult(out, out / "model", plan, metrics, report, load(out / "model"))


def _dense(model: str | Path, checkpoint, splits: Splits) -> tuple[torch.nn.Module, ArchSpec]:
    from .errors import PlanError

    net, arch, plan = resolve_for_data(str(model), splits, checkpoint)
    if plan is not None:
        raise PlanError(f"{model} is already pruned; compress its dense base model instead")
    return net, arch


def _model_id(model: str | Path, checkpoint: str | Path | None) -> str:
    """What identifies the input model: a saved directory by its weights' SHA-256 (so moving it
    does not matter and replacing its weights does), a name by the name and checkpoint file."""
    if Path(model).is_dir():
        return "sha256:" + str(read_config(model)["weights"].get("sha256"))
    return f"{model}+{Path(checkpoint).name}" if checkpoint else str(model)


def _claim(out: Path, manifest: dict, info: dict) -> None:
    """Make ``out`` this run's directory, or refuse if it holds something else.

    ``info`` is recorded beside the manifest but not compared (paths may move).
    """
    path = out / MANIFEST
    if path.exists():
        try:
            prior = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise OutputError(f"{path} is damaged ({exc}); choose another --out") from exc
        prior.pop("info", None)
        # a setting added after the run was made is at its default there
        defaults = json.loads(json.dumps(dataclasses.asdict(CompressConfig())))
        if isinstance(prior.get("config"), dict):
            prior["config"] = {**{k: v for k, v in defaults.items() if k != "budget"},
                               **prior["config"]}
        if prior != manifest:
            diff = sorted(k for k in set(prior) | set(manifest) if prior.get(k) != manifest.get(k))
            if "config" in diff:
                pc, mc = prior.get("config", {}), manifest["config"]
                diff += [f"config.{k}" for k in mc if pc.get(k) != mc[k]]
            raise OutputError(
                f"{out} holds another compression run (differs in: {', '.join(diff)}). Re-run with "
                "that run's arguments to resume it, or choose another --out. Nothing was changed.")
        return
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out} is not empty and is not a vitprune compress run; choose an "
                          "empty or new --out. Nothing was changed.")
    if dist.is_main():
        fsutil.write_json(path, {**manifest, "info": info})
    dist.barrier()


class _Run:
    """The stages of one run, each skipped when its output exists."""

    def __init__(self, out: Path, cfg: CompressConfig, splits: Splits, dense: torch.nn.Module,
                 arch: ArchSpec, device: str, progress: bool):
        self.out, self.cfg, self.splits, self.dense, self.arch = out, cfg, splits, dense, arch
        self.device, self.progress = device, progress

    def _say(self, text: str) -> None:
        if self.progress and dist.is_main():
            print(f"[compress] {text}", flush=True)

    def search(self) -> PrunePlan:
        scores_path, sdir = self.out / "scores.json", self.out / "search"
        if (sdir / "search.json").exists():
            self._say("search: done")
            return PrunePlan.load(sdir / "best_plan.json")
        if scores_path.exists():
            scores, _ = load_scores(scores_path)
        else:
            self._say(f"scoring heads and neurons ({self.cfg.criterion}, "
                      f"{self.cfg.score_images} images)")
            scores = score(self.dense, self.splits, self.cfg.criterion,
                           n_images=self.cfg.score_images,
                           out=scores_path if dist.is_main() else None)
        self._say(f"searching ({self.cfg.method}, {self.cfg.trials} evaluations)")
        res = policy_search(self.dense, self.splits, parse_budget(self.cfg.budget), sdir,
                            method=self.cfg.method, n_trials=self.cfg.trials, n_init=self.cfg.init,
                            seed=self.cfg.seed, scores=scores, calib_images=self.cfg.calib_images,
                            bounds=(0.0, self.cfg.max_ratio), dims=self.cfg.dims,
                            resume=(sdir / "trials.jsonl").exists(), progress=self.progress)
        return res.best_plan

    def prune(self, plan: PrunePlan) -> None:
        if (self.out / "pruned" / "model.json").exists():
            return
        if dist.is_main():
            save(self.out / "pruned", prune(self.dense, plan), self.arch, plan=plan.to_dict(),
                 meta={"stage": "pruned, before fine-tuning"})
        dist.barrier()

    def finetune(self) -> None:
        if (self.out / "model" / "model.json").exists():
            self._say("fine-tuning: done")
            return
        self._say(f"fine-tuning {self.cfg.epochs} epochs with distillation from the dense model")
        student = load(self.out / "pruned")
        t0 = time.perf_counter()
        history = finetune(student, self.dense, self.splits, self.cfg.train_config(),
                           self.out / "finetune", resume=True, device=self.device,
                           progress=self.progress)
        if dist.is_main():
            plan = read_config(self.out / "pruned")["plan"]
            save(self.out / "model", student.cpu(), self.arch, plan=plan,
                 meta={"finetuned": {"history": history, "config": dataclasses.asdict(
                     self.cfg.train_config()), "wall_seconds_this_run":
                     round(time.perf_counter() - t0, 1)}})
        dist.barrier()

    def evaluate(self) -> dict[str, Any]:
        path = self.out / "eval.json"
        if path.exists():
            return json.loads(path.read_text())
        self._say("evaluating on the test split and measuring CPU speed")
        models = {"dense": self.dense, "pruned": load(self.out / "pruned"),
                  "finetuned": load(self.out / "model")}
        loader = make_loader(self.splits.test, 256, rank=dist.rank(), world=dist.world())
        rows = {}
        for name, m in models.items():
            shape = vit_shape(m)
            acc = evaluate(m.to(self.device), loader, self.device)
            rows[name] = {"test_top1": acc["top1"], "test_loss": acc["loss"],
                          "macs": macs(shape).total, "params": params(shape)}
        if dist.is_main():
            pe = self.dense.patch_embed
            img = (pe.proj.in_channels, *pe.img_size)
            pair = {name: models[name].cpu() for name in ("dense", "finetuned")}
            for b in self.cfg.bench_batches:  # timed in turn: the speed-up is a fair ratio
                for name, r in compare(pair, img, b, rounds=15, reps=10 if b == 1 else 2).items():
                    rows[name].setdefault("cpu", {})[f"batch{b}"] = r
            history = read_config(self.out / "model")["meta"]["finetuned"]["history"]
            metrics = {"rows": rows, "threads": torch.get_num_threads(),
                       "finetune_history": history, "test_images": acc["n"]}
            fsutil.write_json(path, metrics)
        dist.barrier()
        return json.loads(path.read_text())

    def report(self, metrics: dict[str, Any], plan: PrunePlan) -> Path:
        from .report import write_report

        path = self.out / "report.md"
        if dist.is_main():
            search = json.loads((self.out / "search" / "search.json").read_text())
            write_report(self.out, metrics, plan, vit_shape(self.dense), search,
                         dataclasses.asdict(self.cfg))
        dist.barrier()
        return path
