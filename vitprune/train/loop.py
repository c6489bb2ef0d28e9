"""Supervised training with checkpoints every epoch and exact resume; evaluation."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import dist, fsutil
from ..adapters import logits_module, vit_shape
from ..data import Splits, make_loader, training_set
from ..data.base import epoch_seed
from ..devices import autocast, device_of
from ..errors import ConfigError, ModelError, OutputError, is_int, is_number, require
from ..progress import min_interval
from ..records import EpochRecord
from .distill import Distiller
from .features import evaluate_fidelity
from .schedule import warmup_cosine

CKPT = "checkpoint.pt"
#: what a student matches: the teacher's predictions (kl), or its outputs (feature distillation)
KD_LOSSES = ("kl", "cosine", "mse")
FEATURE_LOSSES = ("cosine", "mse")
LOG = "train_log.jsonl"

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a training run (saved in the checkpoint; a resume must match).

    The defaults are the recipe that trained the shipped baseline; :data:`FINETUNE` is the
    fine-tuning recipe of a pruned model. Each field's ``help`` is its command-line help.
    """

    epochs: int = field(default=20, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=128, metadata={"help": "global batch (all processes)"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay"})
    warmup_epochs: float = field(default=1.0, metadata={
        "help": "linear warm-up, in epochs, before the cosine decay"})
    label_smoothing: float = field(default=0.1, metadata={"help": "of the label cross-entropy",
                                                           "recipe": True})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip (0: none)"})
    augment: bool = field(default=True, metadata={
        "help": "random augmentation: shifts and flips for in-memory sets; for imagefolder "
                "data timm's training transform (random resized crop, flip, and --rand-augment "
                "/ --random-erasing when set)", "recipe": True})
    recipe: str = field(default="small", metadata={
        "help": "named settings the other options start from: small (this tool's recipe for "
                "small data such as Fashion-MNIST) or deit (DeiT's: RandAugment, random "
                "erasing, Mixup 0.8 / CutMix 1.0 with soft targets, label smoothing 0.1)",
        "choices": ("small", "deit")})
    # None: the recipe's (set in construction, so a config never names a recipe it lacks)
    mixup: float | None = field(default=None, metadata={
        "help": "Mixup alpha (0: off); soft targets", "recipe": True})
    cutmix: float | None = field(default=None, metadata={
        "help": "CutMix alpha (0: off); soft targets", "recipe": True})
    rand_augment: str | None = field(default=None, metadata={
        "help": "timm RandAugment policy for imagefolder data, e.g. rand-m9-mstd0.5-inc1 "
                "('': none)", "recipe": True})
    random_erasing: float | None = field(default=None, metadata={
        "help": "random erasing probability for imagefolder data", "recipe": True})
    ema_decay: float = field(default=0.0, metadata={
        "help": "keep an exponential moving average of the weights with this decay (e.g. "
                "0.9998; 0: off); the saved model is the average"})
    seed: int = field(default=0, metadata={
        "help": "seeds the data order, augmentation, dropout and a model built by name"})
    max_steps_per_epoch: int | None = field(default=None, metadata={
        "help": "cap on steps per epoch (smoke tests, quick demos)"})
    # distillation from a teacher (fine-tuning): loss = (1 - a) CE + a T^2 KL; a = 0: no teacher
    kd_alpha: float = field(default=0.0, metadata={
        "help": "weight of distillation from the teacher against the labels, in [0, 1]"})
    kd_temperature: float = field(default=1.0, metadata={"help": "distillation temperature T"})
    kd_hard: bool = field(default=False, metadata={
        "help": "hard distillation: cross-entropy against the teacher's arg-max"})
    kd_loss: str = field(default="kl", metadata={
        "help": "what the student matches: the teacher's softened predictions (kl), or its "
                "outputs by cosine similarity (cosine) or squared error (mse): feature "
                "distillation, for backbones without a classifier, whose outputs are their "
                "embeddings; needs no labels with --kd-alpha 1", "choices": KD_LOSSES})
    kd_features: float = field(default=0.0, metadata={
        "help": "weight of a feature term added to the distillation loss: 1 - cos between the "
                "student's and the teacher's pooled features (the classifier's input), which "
                "carry more of the teacher than its 10-class predictions; 0: off"})

    def __post_init__(self):
        require(self.recipe in RECIPES, "recipe", f"must be one of {', '.join(RECIPES)}, got "
                f"{self.recipe!r}")
        for name in MIXING:  # the recipe's value where none was given
            if getattr(self, name) is None:
                object.__setattr__(self, name, RECIPES[self.recipe][name])
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            require(is_int(v) and v >= 1, name, f"must be an integer >= 1, got {v!r}")
        require(is_int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        m = self.max_steps_per_epoch
        require(m is None or (is_int(m) and m >= 1), "max_steps_per_epoch",
                f"must be an integer >= 1 (or unset), got {m!r}")
        require(is_number(self.lr) and self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        for name in ("weight_decay", "warmup_epochs", "grad_clip"):
            v = getattr(self, name)
            require(is_number(v) and v >= 0, name, f"must be >= 0, got {v!r}")
        require(self.warmup_epochs <= self.epochs, "warmup_epochs",
                f"({self.warmup_epochs}) must not exceed epochs ({self.epochs})")
        require(is_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
                "label_smoothing", f"must be in [0, 1), got {self.label_smoothing!r}")
        require(is_number(self.kd_alpha) and 0.0 <= self.kd_alpha <= 1.0, "kd_alpha",
                f"must be in [0, 1], got {self.kd_alpha!r}")
        require(is_number(self.kd_temperature) and self.kd_temperature > 0, "kd_temperature",
                f"must be > 0, got {self.kd_temperature!r}")
        for name in ("augment", "kd_hard"):
            v = getattr(self, name)
            require(isinstance(v, bool), name, f"must be true or false, got {v!r}")
        require(is_number(self.kd_features) and self.kd_features >= 0, "kd_features",
                f"must be >= 0, got {self.kd_features!r}")
        require(not (self.kd_features and self.kd_alpha <= 0), "kd_features",
                "is a distillation term: it needs a teacher (--kd-alpha > 0)")
        require(self.kd_loss in KD_LOSSES, "kd_loss",
                f"must be one of {', '.join(KD_LOSSES)}, got {self.kd_loss!r}")
        require(not (self.kd_hard and self.kd_loss != "kl"), "kd_hard",
                "is a kind of kl distillation (the teacher's arg-max); drop it with --kd-loss "
                f"{self.kd_loss}")
        for name in ("mixup", "cutmix"):
            v = getattr(self, name)
            require(is_number(v) and v >= 0, name, f"must be >= 0, got {v!r}")
        require(is_number(self.random_erasing) and 0 <= self.random_erasing <= 1,
                "random_erasing", f"must be in [0, 1], got {self.random_erasing!r}")
        require(isinstance(self.rand_augment, str) and (not self.rand_augment or
                                                        RAND_AUGMENT.fullmatch(self.rand_augment)),
                "rand_augment", "must be '' or a timm RandAugment policy: 'rand' then sections "
                "m<magnitude>, n<ops>, mstd<std>, mmax<max>, inc<0|1>, p<prob>, w<weights> "
                f"(rand-m9-mstd0.5-inc1), got {self.rand_augment!r}")
        require(is_number(self.ema_decay) and 0 <= self.ema_decay < 1, "ema_decay",
                f"must be in [0, 1), got {self.ema_decay!r}")

    @property
    def mixes(self) -> bool:
        """Whether batches are mixed (Mixup or CutMix): the targets are then soft."""
        return self.mixup > 0 or self.cutmix > 0

    def with_recipe(self, name: str, **overrides) -> TrainConfig:
        """This configuration with recipe ``name``'s settings, then ``overrides``, applied (an
        override of a recipe's setting that is None leaves the recipe's value)."""
        require(name in RECIPES, "recipe", f"must be one of {', '.join(RECIPES)}, got {name!r}")
        given = {k: v for k, v in overrides.items() if v is not None or k not in RECIPE_FIELDS}
        return replace(self, **{**RECIPES[name], "recipe": name, **given})


# timm's RandAugment policy grammar (timm.data.auto_augment.rand_augment_transform), whose
# parser skips a section it does not know without a word
RAND_AUGMENT = re.compile(r"rand(-(mstd|mmax|inc|m|n|p|w)\d+(\.\d+)?)*")

# Named recipes: what --recipe sets before the other options. "small" is this tool's own for
# small data held in memory (Fashion-MNIST): its settings are TrainConfig's defaults and FINETUNE.
# "deit" is DeiT's (Touvron et al. 2021) regularisation for ImageNet-scale fine-tuning.
RECIPES: dict[str, dict] = {
    "small": {"mixup": 0.0, "cutmix": 0.0, "rand_augment": "", "random_erasing": 0.0},
    "deit": {"augment": True, "mixup": 0.8, "cutmix": 1.0, "rand_augment": "rand-m9-mstd0.5-inc1",
             "random_erasing": 0.25, "label_smoothing": 0.1},
}
# what every recipe sets (TrainConfig takes them from its recipe when given None) ...
MIXING = ("mixup", "cutmix", "rand_augment", "random_erasing")
# ... and every setting some recipe sets (the command line leaves these to --recipe)
RECIPE_FIELDS = tuple(sorted({k for r in RECIPES.values() for k in r}))


# The fine-tuning recipe of a pruned model (finetune, compress and the benchmarks): no
# augmentation (on the Fashion-MNIST baseline, distillation without it recovered more accuracy
# per epoch), half the baseline's learning rate, soft distillation with alpha 0.5 and T = 2.
FINETUNE = replace(TrainConfig(), epochs=8, lr=5e-4, warmup_epochs=0.5, augment=False,
                   kd_alpha=0.5, kd_temperature=2.0)

# images per forward pass when only evaluating (no gradients: larger batches fit)
EVAL_BATCH = 256


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: str | torch.device | None = None,
             max_batches: int | None = None, amp: bool = False) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy of ``model`` over ``loader``, on ``device``
    (default: where the model is); in float32 unless ``amp`` (bf16 autocast), so a reported
    accuracy is the float32 model's.

    Under torchrun each rank passes its part of the data; the sums are added over ranks.
    """
    device = device or device_of(model)
    model = logits_module(model).eval()
    with torch.inference_mode(), autocast(device, amp):
        # (correct, images, loss) summed on the device: no transfer per batch, and the tensor
        # the collective takes
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        for i, (x, y) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            logits = model(x)  # (B, classes)
            sums[0] += (logits.argmax(-1) == y).sum()
            sums[1] += y.numel()
            sums[2] += F.cross_entropy(logits.float(), y, reduction="sum")
        correct, total, loss_sum = dist.all_sum(sums).tolist()
    total = int(total)
    return {"top1": 100.0 * correct / max(total, 1), "loss": loss_sum / max(total, 1), "n": total}


def _record(model: torch.nn.Module, reference: torch.nn.Module | None, calib, device: str, *,
            epoch: int, train_loss: float, t0: float) -> EpochRecord:
    """The epoch's record: calibration top-1 and loss, or with a ``reference`` (a backbone's
    teacher) the calibration feature fidelity to it."""
    if reference is not None:  # no prediction: how close its features are to the teacher's
        fid = evaluate_fidelity(model, reference, calib, device)["fidelity"]
        return EpochRecord(epoch=epoch, train_loss=train_loss, calib_top1=None, calib_loss=None,
                           seconds=time.perf_counter() - t0, calib_fidelity=fid)
    val = evaluate(model, calib, device)
    return EpochRecord(epoch=epoch, train_loss=train_loss, calib_top1=val["top1"],
                       calib_loss=val["loss"], seconds=time.perf_counter() - t0)


def check_backbone_training(cfg: TrainConfig, has_teacher: bool) -> None:
    """A model without a classifier trains by feature distillation alone: from a teacher, with
    ``kd_loss`` ``"cosine"`` or ``"mse"`` and ``kd_alpha=1`` (no label term) and no image mixing (which mixes
    labels).

    Raises:
        ConfigError: the setting that does not fit, and what to use.
    """
    require(has_teacher, "kd_alpha", "a model without a classifier (num_classes=0) has no "
            "labels to learn: it is fine-tuned by feature distillation from its dense model "
            "(vitprune compress or finetune --teacher)")
    require(cfg.kd_loss in FEATURE_LOSSES, "kd_loss", f"is {cfg.kd_loss!r}, but a model without "
            "a classifier is distilled on its output features: use --kd-loss cosine (or mse)")
    require(cfg.kd_alpha == 1.0, "kd_alpha", f"is {cfg.kd_alpha}, but a model without a "
            "classifier has no label term: use --kd-alpha 1")
    require(not cfg.mixes, "mixup", "mixes labels, which a model without a classifier does not "
            "learn: pass --mixup 0 --cutmix 0")


def _check_out(out: Path, resume: bool) -> dict | None:
    ckpt = out / CKPT
    if resume:
        if not ckpt.exists():
            return None  # nothing to resume from: start fresh
        return fsutil.torch_load(ckpt, lambda why: OutputError(
            f"cannot resume from {ckpt}: {why}. Delete it to restart this training run from "
            "its first epoch, or choose another --out."))
    if ckpt.exists() or (out / LOG).exists():
        raise OutputError(
            f"{out} already holds a training run ({CKPT}); pass --resume to continue it, or "
            "choose another --out. Nothing was overwritten."
        )
    return None


def fit(model: torch.nn.Module, splits: Splits, cfg: TrainConfig, out: str | Path, *,
        resume: bool = False, loss_fn: LossFn | None = None,
        teacher: torch.nn.Module | None = None, device: str | None = None,
        amp: bool | None = None,
        progress: bool = True) -> list[EpochRecord]:
    """Train ``model`` in place with AdamW and a warm-up + cosine schedule.

    Every epoch ends with an evaluation on the calibration split and an atomic checkpoint in
    ``out``; ``resume=True`` continues from it and reproduces the uninterrupted run exactly (the
    data order, augmentation and dropout randomness are functions of (seed, epoch)).

    Under torchrun (``vitprune.dist.init`` called first) the model is wrapped in
    DistributedDataParallel, each rank takes its part of every global batch of
    ``cfg.batch_size``, and rank 0 alone writes.

    Args:
        loss_fn: ``loss_fn(logits, labels, images) -> loss``; default label-smoothed CE, or
            distillation from ``teacher`` when ``cfg.kd_alpha > 0``.
        teacher: the frozen model to distil from (fine-tuning a pruned model).
        amp: bf16 mixed precision; default on for CUDA, never on CPU.
    Returns:
        one record per epoch (train loss, calibration top-1, seconds).
    """
    out = Path(out)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError("nothing to train: every parameter of the model has requires_grad=False "
                         "(call model.requires_grad_(True) on the model to fine-tune)")
    backbone = vit_shape(model).num_classes == 0
    if backbone:
        check_backbone_training(cfg, teacher is not None or loss_fn is not None)
    main = dist.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    state = _check_out(out, resume)
    device = device or device_of(model)
    model.to(device)
    rank, world = dist.rank(), dist.world()
    if cfg.mixes and (cfg.batch_size // world) % 2:
        raise ConfigError("batch_size", f"must give each of the {world} process(es) an even "
                          f"batch when mixing images (Mixup/CutMix pair them), got {cfg.batch_size}")
    loader, calib = _loaders(splits, cfg, rank, world)
    steps = min(len(loader), cfg.max_steps_per_epoch or len(loader))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, steps * cfg.epochs, int(cfg.warmup_epochs * steps)))
    ema = _ema(model, cfg.ema_decay)  # copied before a feature distiller hooks the model
    step = _Step(model, opt, sched, loss_fn or _default_loss(cfg, teacher, device, model),
                 _mixer(cfg, vit_shape(model).num_classes),  # soft targets as wide as the logits
                 ema, cfg.grad_clip, device, amp)
    history, start = [], 0
    if state is not None:
        start, history = _restore(state, cfg, out, step)
    net = logits_module(model)  # shares model's parameters; its forward returns logits
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[torch.device(device).index] if str(device).startswith("cuda") else None)

    try:
        for epoch in range(start, cfg.epochs):
            torch.manual_seed(epoch_seed(cfg.seed, epoch, rank))  # dropout / drop-path
            np.random.seed(epoch_seed(cfg.seed, epoch, rank) % 2**32)  # timm's Mixup draws here
            loader.set_epoch(epoch)
            net.train()
            t0 = time.perf_counter()
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (progress and main),
                       mininterval=min_interval(),
                       leave=False, dynamic_ncols=True)
            loss_sum = step.epoch(net, loader, steps, epoch, bar)
            bar.close()
            loss_sum = dist.sum_([loss_sum], device)[0] / world
            rec = _record(model if step.ema is None else step.ema.module, teacher if backbone else None,
                          calib, device, epoch=epoch + 1, train_loss=loss_sum / steps, t0=t0)
            history.append(rec)
            if main:
                if progress:
                    print(json.dumps(rec.to_dict()), flush=True)
                _save(out, cfg, epoch + 1, step, history)
            dist.barrier()
    finally:
        getattr(step.loss_fn, "close", lambda: None)()  # a feature distiller's hook goes
    if step.ema is not None:  # the weights a run with weight averaging hands over are the average
        model.load_state_dict(step.ema.module.state_dict())
    return history


def _loaders(splits: Splits, cfg: TrainConfig, rank: int, world: int) -> tuple:
    """(training loader, calibration loader) of this process's part of the data."""
    train_ds = training_set(splits, augment=cfg.augment, rand_augment=cfg.rand_augment,
                            random_erasing=cfg.random_erasing)
    loader = make_loader(train_ds, cfg.batch_size, shuffle=True, seed=cfg.seed,
                         augment=cfg.augment, drop_last=True, rank=rank, world=world,
                         num_workers=splits.workers)
    calib = make_loader(splits.calib, EVAL_BATCH, rank=rank, world=world,
                        num_workers=splits.workers)
    return loader, calib


def _ema(model: torch.nn.Module, decay: float):
    """timm's weight average of ``model`` (None without one)."""
    if not decay:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay)


@dataclass
class _Step:
    """The optimisation step of a run: what one batch does to the model."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    loss_fn: LossFn
    mix: Any
    ema: Any
    grad_clip: float
    device: str
    amp: bool | None

    def epoch(self, net: torch.nn.Module, loader, steps: int, epoch: int, bar) -> float:
        """Train one epoch of ``steps`` batches through ``net``; the summed loss."""
        loss_sum = 0.0
        for i, (x, y) in enumerate(loader):
            if i >= steps:
                break
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.mix is not None:
                x, y = self.mix(x, y)  # mixed images, soft targets (B, classes), smoothing included
            with autocast(self.device, False if self.amp is False else None):
                loss = self.loss_fn(net(x), y, x)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.opt.step()
            self.sched.step()
            if self.ema is not None:
                self.ema.update(self.model, step=epoch * steps + i)
            loss_sum += loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / (i + 1):.4f}", refresh=False)
        return loss_sum


def _restore(state: dict, cfg: TrainConfig, out: Path, step: _Step
             ) -> tuple[int, list[EpochRecord]]:
    """Load a checkpoint's model, optimiser, schedule and average; (next epoch, history)."""
    saved = TrainConfig(**state["config"])
    if saved != cfg:
        raise OutputError(
            f"{out} holds a run with another configuration ({saved}); resume it with the same "
            "arguments, or choose another --out."
        )
    step.model.load_state_dict(state["model"])
    step.opt.load_state_dict(state["optimizer"])
    step.sched.load_state_dict(state["scheduler"])
    if step.ema is not None:
        step.ema.module.load_state_dict(state["ema"])
    return state["epoch"], [EpochRecord.from_dict(h) for h in json.loads(state["history"])]


def _save(out: Path, cfg: TrainConfig, epoch: int, step: _Step,
          history: list[EpochRecord]) -> None:
    """The checkpoint after ``epoch`` epochs (atomic), and the log of every epoch so far."""
    fsutil.torch_save(out / CKPT, {
        "config": dataclasses.asdict(cfg), "epoch": epoch,
        "model": step.model.state_dict(), "optimizer": step.opt.state_dict(),
        "scheduler": step.sched.state_dict(),
        "history": json.dumps([r.to_dict() for r in history]),
        **({"ema": step.ema.module.state_dict()} if step.ema is not None else {}),
    })
    fsutil.write_text(out / LOG, "".join(json.dumps(r.to_dict()) + "\n" for r in history))


def _default_loss(cfg: TrainConfig, teacher: torch.nn.Module | None, device: str,
                  student: torch.nn.Module) -> LossFn:
    if cfg.kd_alpha > 0:
        if teacher is None:
            raise ConfigError("kd_alpha", "> 0 distils from a teacher: pass the teacher model, "
                              "or set kd_alpha to 0")
        return Distiller(teacher.to(device), alpha=cfg.kd_alpha, temperature=cfg.kd_temperature,
                         hard=cfg.kd_hard, label_smoothing=cfg.label_smoothing,
                         kind=cfg.kd_loss, features=cfg.kd_features, student=student)
    # soft targets (mixed batches) already carry the smoothing
    return lambda logits, y, x: F.cross_entropy(  # noqa: E731
        logits.float(), y, label_smoothing=0.0 if y.ndim == 2 else cfg.label_smoothing)


def _mixer(cfg: TrainConfig, num_classes: int):
    """timm's ``Mixup`` (Mixup and/or CutMix, per batch, label smoothing in the soft targets), or
    None when the recipe does not mix."""
    if not cfg.mixes:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix,
                 label_smoothing=cfg.label_smoothing, num_classes=num_classes)
