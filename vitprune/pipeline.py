"""The stages a job is made of, each a function that takes and returns typed values:
load the dense model -> score -> search -> (prune) -> fine-tune -> evaluate.

Nothing here knows file names of a run directory or the command line: ``compression.py`` and
``jobs.py`` compose these stages, ``rundir.py`` persists their values.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import dist
from .adapters import adapter_for, input_shape, logits_module, vit_shape
from .choice import check_choice, choose_distilled
from .config import DataConfig, SearchSettings, parse_budget
from .cost import macs
from .data import Splits, make_loader
from .data.base import TensorImageSet, image_range
from .devices import autocast, device_of
from .errors import ConfigError, DataError, ModelError, PlanError, VitpruneError, require
from .io import resolve_for_data, resolve_model
from .io.model_dir import dir_checksum, read_config
from .models import ArchSpec, ModelSource
from .plan import PrunePlan, planned_shape
from .records import EpochRecord
from .scoring import (
    SCORE_IMAGES,
    BlockScores,
    check_scores,
    get_criterion,
    load_scores,
    rankings,
    save_scores,
)
from .search import Ratios, SearchError
from .search.config import OBJECTIVES, Budget
from .search.loop import search
from .search.result import SearchResult
from .search.sampler import resolve_band
from .search.space import SearchSpace
from .speed import compare, timing
from .surgery import Masker, count_params
from .train import EVAL_BATCH, TrainConfig, evaluate, fit
from .train.features import evaluate_fidelity, knn_top1


def model_id(model: str | Path | ModelSource, checkpoint: str | Path | None = None) -> str:
    """What identifies an input model in a run's record: a saved directory by its weights'
    SHA-256 (moving it does not matter, replacing its weights does), a name by the name, the
    checkpoint's file name, ``pretrained`` and its constructor arguments."""
    src = ModelSource.of(model, checkpoint)
    if src.is_vitprune_dir:
        return "sha256:" + str(read_config(src.name)["weights"].get("sha256"))
    if src.is_dir:
        return "sha256:" + dir_checksum(src.name)
    return src.id()


def lineage(model: str | Path | ModelSource) -> list[dict]:
    """How a saved model directory was made (its training records, oldest first); [] for a name."""
    src = ModelSource.of(model)
    if not src.is_vitprune_dir:
        return []
    prior = read_config(src.name).get("meta", {})
    return prior.get("lineage", []) + ([prior["trained"]] if "trained" in prior else [])


def source_data_config(model: str | Path | ModelSource) -> dict | None:
    """The preprocessing the model at ``model`` expects (see :func:`vitprune.adapters.data_config`),
    found without loading weights: a saved directory's record, or a timm name's configuration
    (built on the meta device); for a model that names no preprocessing (the small registered
    configurations), only its input size (channels and image size)."""
    from .adapters import data_config
    from .models import build_model

    src = ModelSource.of(model)
    if src.is_dir and not src.is_vitprune_dir:  # a family's own layout: read from the model
        net = resolve_model(src)[0]
    else:
        if src.is_dir:
            cfg = read_config(src.name)
            if cfg.get("data_config"):
                return cfg["data_config"]
            arch = ArchSpec.from_dict(cfg["arch"])
        else:
            arch = ArchSpec(src.name, src.args)
        with torch.device("meta"):  # no memory, no initialisation: only the configuration
            net = build_model(arch)
    # a model that names no preprocessing (the small configurations, an HF directory without
    # preprocessor_config.json): its input size only
    return data_config(net) or {"input_size": list(input_shape(net))}


def load_data(cfg: DataConfig, model: str | Path | ModelSource | None = None) -> Splits:
    """The splits ``cfg`` describes, ImageFolder images prepared as ``model`` expects (its own
    interpolation, crop, mean and std: :func:`source_data_config`). The one data path of the
    command line and the Python API, so both feed a model the same tensors."""
    from .data import load_splits

    dc = source_data_config(model) if model is not None and cfg.data == "imagefolder" else None
    size = cfg.size
    if size is None:  # the model's own input size, from its data config
        h, w = (dc or {}).get("input_size", (3, 224, 224))[1:]
        size = h if h == w else (h, w)
    return load_splits(cfg.data, cfg.data_dir, calib_size=cfg.calib_size, img_size=size,
                       seed=cfg.split_seed, data_config=dc, workers=cfg.workers)


def fit_data(model: torch.nn.Module, splits: Splits, *, source: str = "") -> Splits:
    """``splits`` as ``model`` takes them, checked before any work: grey in-memory images
    become three equal channels for an RGB model (the obvious conversion); other channel counts,
    another image size, or more classes than the classifier has are refused with one line.

    Raises:
        DataError: what does not fit, and what to do.
    """
    c, h, w = input_shape(model)
    size = splits.img_size if isinstance(splits.img_size, tuple) else (splits.img_size,) * 2
    name = source or "the model"
    if splits.in_chans == 1 and c == 3 and isinstance(splits.train, TensorImageSet):
        splits = dataclasses.replace(splits, train=splits.train.to_rgb(),
                                     calib=splits.calib.to_rgb(), test=splits.test.to_rgb(),
                                     in_chans=3)
    if splits.in_chans != c:
        raise DataError(f"{name} takes {c}-channel images but {splits.name} has "
                        f"{splits.in_chans}-channel ones; use a model built for "
                        f"{splits.in_chans} channels (--model-args in_chans={splits.in_chans} for "
                        "a model given by name)")
    if tuple(size) != (h, w):
        fix = ("--img-size " + (f"{h}" if h == w else f"{h} {w}")
               if splits.data_config is not None else
               f"--model-args img_size={list(size) if size[0] != size[1] else size[0]} for a "
               "model given by name")
        raise DataError(f"{name} takes {h}x{w} images but {splits.name} is read at "
                        f"{size[0]}x{size[1]}; use {fix}")
    classes = vit_shape(model).num_classes
    if splits.num_classes == 0 and classes:
        raise DataError(f"{splits.name} has no labels, and {name} is a classifier "
                        f"({classes} classes), which is trained and measured on labels; put the "
                        "images in class folders (train/<class>/...), or use a model without a "
                        "classifier (--model-args num_classes=0), which is fine-tuned by feature "
                        "distillation")
    if splits.num_classes > classes and classes:
        raise DataError(f"{splits.name} has {splits.num_classes} classes but {name}'s classifier "
                        f"predicts {classes}; for a model given by name pass --model-args "
                        f"num_classes={splits.num_classes}, or train a model on this data")
    return splits


def check_training(cfg: TrainConfig, splits: Splits) -> None:
    """The training settings against the data, before any directory is claimed.

    Raises:
        ConfigError: a batch larger than the training split (an epoch would have no step), or
            an odd batch per process when Mixup/CutMix pair images.
    """
    world, n = dist.world(), len(splits.train)
    require(cfg.batch_size <= n, "batch_size", f"is {cfg.batch_size} but the training split "
            f"has {n} images; lower it (an epoch takes whole batches only)")
    if isinstance(splits.train, TensorImageSet):  # augmented by the loader: flips and shifts
        for name, value, off in (("rand_augment", cfg.rand_augment, "''"),
                                 ("random_erasing", cfg.random_erasing, "0")):
            require(not value, name, f"is {value!r}, but it applies to image files (--data "
                    f"imagefolder) and {splits.name} is held in memory; pass "
                    f"--{name.replace('_', '-')} {off} (with --recipe deit too)")
    require(not cfg.mixes or (cfg.batch_size // world) % 2 == 0, "batch_size",
            f"must give each of the {world} process(es) an even batch when mixing images "
            f"(Mixup/CutMix pair them), got {cfg.batch_size}")


def load_dense(model: str | Path | ModelSource, splits: Splits | None,
               checkpoint: str | Path | None = None, *, device: str,
               verb: str = "prune") -> tuple[torch.nn.Module, ArchSpec]:
    """The dense model ``model`` names (a timm name built to fit ``splits`` when given), on
    ``device`` (the run's, from :func:`vitprune.devices.setup`), refusing a pruned one.

    Raises:
        PlanError: ``model`` is a pruned model directory: ``verb`` its dense base model instead.
    """
    src = ModelSource.of(model, checkpoint)
    if splits is None:
        net, arch, plan = resolve_model(src, device=device)
    else:
        net, arch, plan = resolve_for_data(src, splits, device=device)
    if plan is not None:
        raise PlanError(f"{src.name} is already pruned; {verb} its dense base model instead")
    return net, arch


def calibration_batches(splits: Splits, n_images: int | None, batch_size: int = 256,
                        device: str = "cpu", *, rank: int = 0,
                        world: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_images`` of the calibration split as in-memory batches on ``device`` (held
    there for every evaluation of a search), same order each time.

    The calibration split is carved from the training images (held out from training), so the
    search never sees the test set. With ``world > 1`` this rank's part of each batch.
    """
    ds = splits.calib
    n = len(ds) if n_images is None else min(n_images, len(ds))
    ds = image_range(ds, 0, n)
    return [(x.to(device), y.to(device))
            for x, y in make_loader(ds, batch_size, rank=rank, world=world,
                                    num_workers=splits.workers)]


def scored(model: torch.nn.Module, splits: Splits, criterion: str = "hsic", *,
           n_images: int = SCORE_IMAGES, **options: Any) -> tuple[list[BlockScores], dict[str, Any]]:
    """Score every head and neuron of ``model`` on calibration images, on the device the model
    is on (features, Gram matrices and scores alike).

    Returns:
        (scores, meta): one :class:`BlockScores` per block, and the criterion's settings.
    """
    crit = get_criterion(criterion, **options)
    if hasattr(crit, "max_images") and "max_images" not in options:
        crit = dataclasses.replace(crit, max_images=n_images)
    batches = calibration_batches(splits, n_images, batch_size=min(64, n_images),
                                  device=device_of(model))
    used = min(n_images, len(splits.calib))  # the split may hold fewer: say what was used
    asked = {} if used == n_images else {"images_requested": n_images}
    return crit(model, batches), {**crit.meta(), "images": used, **asked, "data": splits.name,
                                  "device": device_of(model)}


def score(model: torch.nn.Module, splits: Splits, criterion: str = "hsic", *,
          n_images: int = SCORE_IMAGES, out: str | Path | None = None,
          **options: Any) -> list[BlockScores]:
    """:func:`scored`'s scores; with ``out``, also saved there (never over an existing file)."""
    scores, meta = scored(model, splits, criterion, n_images=n_images, **options)
    if out is not None:
        save_scores(out, scores, meta, exclusive=True)
    return scores


class MaskedAccuracy:
    """The search objective: top-1 (%) of the dense weights under a plan, on calibration batches,
    or with ``objective="kl"`` minus the mean KL divergence from the dense model's predictions
    (KL is smoother than top-1 on a few thousand images), or with ``objective="features"`` 100
    times the mean cosine similarity of the output features to the dense model's (per image,
    averaged over tokens for per-token features; no labels needed). Higher is better.

    Applies plans as masks in place (fast to change between evaluations); :meth:`close`
    restores the model.

    Under torchrun each rank holds its part of the calibration batches: rank 0 calls the
    objective (it runs the search), which sends the plan to the other ranks, waiting in
    :meth:`serve`; the sums are added over ranks, so the value is that of all the batches.
    """

    def __init__(self, model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 objective: str = "top1"):
        require(objective in OBJECTIVES, "objective", f"must be one of {OBJECTIVES}, got "
                f"{objective!r}")
        self.model = logits_module(model).eval()
        self.batches = batches
        self.objective = objective
        self.device = device_of(model)  # the batches were put there by calibration_batches
        self.dense = None
        adapter = adapter_for(model)
        self.run = ((lambda x: adapter.features(model, x)) if objective == "features"
                    else self.model)
        if objective != "top1":  # the dense model's log-probabilities or features, once
            with torch.inference_mode(), autocast(self.device):
                self.dense = [self._target(self.run(x)) for x, _ in batches]
        self._masked = model
        self.masker = Masker(model)

    @contextlib.contextmanager
    def unmasked(self) -> Iterator[torch.nn.Module]:
        """The model as it was, without the mask hooks (to time or prune it); the hooks are
        installed again afterwards, inactive."""
        self.masker.remove()
        try:
            yield self._masked
        finally:
            self.masker = Masker(self._masked)

    def _counts(self, plan: PrunePlan) -> list[float]:
        # masks are made outside inference mode: inference tensors would break later autograd
        # use of the same model (e.g. a Taylor criterion) while the masks are installed
        self.masker.set(plan)
        # (good, total) summed on the device: one transfer per evaluation, not one per batch,
        # and the tensor a collective needs (NCCL takes CUDA tensors only)
        with torch.inference_mode(), autocast(self.device):
            sums = torch.zeros(2, dtype=torch.float64, device=self.device)
            for i, (x, y) in enumerate(self.batches):
                out = self.run(x)
                if self.objective == "top1":
                    sums[0] += (out.argmax(-1) == y).sum()
                elif self.objective == "kl":
                    sums[0] -= F.kl_div(self._target(out), self.dense[i], reduction="sum",
                                        log_target=True)
                else:  # cosine per image (per token, averaged, for per-token features)
                    cos = F.cosine_similarity(out.float(), self.dense[i], dim=-1)
                    sums[0] += cos.reshape(len(x), -1).mean(dim=1).sum()
                sums[1] += len(x)
        return dist.all_sum(sums).tolist()

    def _target(self, out: torch.Tensor) -> torch.Tensor:
        return out.float().log_softmax(-1) if self.objective == "kl" else out.float()

    def __call__(self, plan: PrunePlan, ratios: Ratios | None = None) -> float:
        if dist.active():
            dist.broadcast(plan.to_dict())
        good, total = self._counts(plan)
        return (1.0 if self.objective == "kl" else 100.0) * good / total

    def serve(self) -> None:
        """On ranks other than 0: evaluate the plans rank 0 sends until it sends ``None``."""
        while (d := dist.broadcast(None)) is not None:
            self._counts(PrunePlan.from_dict(d))

    def stop(self) -> None:
        """On rank 0: release the ranks waiting in :meth:`serve`."""
        if dist.active():
            dist.broadcast(None)

    def close(self) -> None:
        self.masker.remove()


def search_space(model: torch.nn.Module, settings: SearchSettings | None = None,
                 scores: Sequence[BlockScores] | None = None) -> SearchSpace:
    """The ratios searched for ``model`` under ``settings``: every chosen dimension's ratio in
    [0, max_ratio], the others fixed at 0; components ranked by ``scores`` if given.

    Raises:
        ScoringError: ``scores`` do not score each head and neuron of ``model``.
    """
    settings = settings or SearchSettings()
    shape = vit_shape(model)
    if scores is not None:
        check_scores(scores, shape)
    span, fixed, dims = (0.0, settings.max_ratio), (0.0, 0.0), settings.dims
    if shape.windowed:  # Swin: no token stages; none is its default
        if settings.token_blocks or dims == ("tokens",):
            raise SearchError("token stages do not apply to windowed attention (Swin, SAM): its "
                              "windows need the whole token grid; give --token-blocks no value "
                              "(the default for this model) and search heads and neurons")
        dims = tuple(d for d in dims if d != "tokens")
    return SearchSpace(shape, head_bounds=span if "heads" in dims else fixed,
                       neuron_bounds=span if "neurons" in dims else fixed,
                       token_bounds=span if "tokens" in dims else fixed,
                       token_blocks=settings.token_blocks if "tokens" in dims else (),
                       rankings=None if scores is None else tuple(rankings(scores)),
                       neuron_multiple=settings.neuron_multiple, latency=settings.latency(),
                       drop=settings.depth)


def for_model(settings: SearchSettings, model: torch.nn.Module) -> SearchSettings:
    """``settings`` as they apply to ``model``: a model without a classifier (``num_classes=0``:
    a DINOv2, CLIP or SAM encoder) has no prediction, so the top-1 objective becomes the feature
    objective; the KL objective is refused for it."""
    if vit_shape(model).num_classes:
        return settings
    if settings.objective == "kl":
        raise ConfigError("objective", "kl compares predictions, and this model has no "
                          "classifier (num_classes=0); use --objective features")
    return dataclasses.replace(settings, objective="features")


def finetune_for_model(cfg: TrainConfig, model: torch.nn.Module) -> TrainConfig:
    """``cfg`` as it applies to ``model``: a model without a classifier is fine-tuned by
    feature distillation alone (``kd_loss="cosine"``, or ``"mse"`` where asked; ``kd_alpha=1``;
    no image mixing), the
    only training it has without a prediction; a classifier's settings are kept."""
    if vit_shape(model).num_classes:
        return cfg
    loss = cfg.kd_loss if cfg.kd_loss != "kl" else "cosine"  # mse where asked
    return dataclasses.replace(cfg, kd_loss=loss, kd_alpha=1.0, kd_hard=False, mixup=0.0,
                               cutmix=0.0)


def check_budget(model: torch.nn.Module, budget: Budget | str | float,
                 settings: SearchSettings | None = None, **fields: Any) -> Budget:
    """The budget, parsed; :class:`BudgetError` (with the reachable range) if no plan of the
    search space (``settings`` with ``fields`` replaced) can meet it."""
    settings = dataclasses.replace(settings or SearchSettings(), **fields)
    budget = parse_budget(budget)
    if settings.depth and not adapter_for(model).can_drop:
        raise ModelError(f"--depth drops whole attention or MLP halves, which the "
                         f"{adapter_for(model).family} family does not offer; search without "
                         "--depth")
    narrowest = min(b.mlp_hidden for b in vit_shape(model).blocks)
    require(settings.neuron_multiple <= narrowest, "neuron_multiple",
            f"is {settings.neuron_multiple} but the model's narrowest MLP has {narrowest} "
            "neurons; choose a divisor of the width (8 or 16 for GPU tiles)")
    space = search_space(model, settings)
    _check_table_run(space, model)
    resolve_band(space, budget)
    return budget


def _check_table_run(space: SearchSpace, model: torch.nn.Module) -> None:
    """A latency table measured elsewhere is refused (another batch or dtype) or warned about
    (another device or thread count): its predictions would not hold here."""
    if space.latency is None:
        return
    kind = torch.device(device_of(model)).type
    # on the CPU the search and the model run in float32: a bf16 table's times do not hold
    space.latency.check_run(device=kind, threads=torch.get_num_threads(),
                            dtype="float32" if kind == "cpu" else None)


def policy_search(model: torch.nn.Module, splits: Splits, budget: Budget | str | float,
                  out: str | Path, *, scores: Sequence[BlockScores] | str | Path | None = None,
                  settings: SearchSettings | None = None, seed: int = 0, resume: bool = False,
                  progress: bool = True, **fields: Any) -> SearchResult:
    """Search per-block prune ratios that maximise the masked calibration objective.

    Components are kept in the order of ``scores`` (HSIC's, computed here when not given), so
    the search decides how many to keep per block, not which. The trials go to ``out`` as they
    are evaluated (``resume`` continues them), then the best plan, a summary and a plot.

    Args:
        settings: the search's settings; ``fields`` replace some of them (``trials=30``,
            ``method="random"``, ``max_ratio=0.9``, ``dims=("heads",)`` ...).
        seed: seeds the search (trial ``i`` depends on (seed, i) alone).
    Raises:
        ConfigError, BudgetError, ScoringError, OutputError: see the messages.
    """
    settings = for_model(dataclasses.replace(settings or SearchSettings(), **fields), model)
    check_choice(model, splits, settings)
    if isinstance(scores, (str, Path)):
        scores, _ = load_scores(scores)
    if scores is None:
        scores, _ = scored(model, splits, n_images=min(SCORE_IMAGES, settings.calib_images))
    space = search_space(model, settings, scores)
    _check_table_run(space, model)
    budget = parse_budget(budget)
    objective = MaskedAccuracy(model, calibration_batches(splits, settings.calib_images,
                                                          device=device_of(model),
                                                          rank=dist.rank(), world=dist.world()),
                               objective=settings.objective)
    cfg = settings.loop_config(seed)
    try:
        if dist.is_main():
            try:
                result = _search_to_time(model, objective, space, budget, cfg, Path(out),
                                         resume=resume, progress=progress,
                                         rounds=settings.latency_rounds)
            except VitpruneError as exc:  # every rank raises it, none is left waiting
                result = exc
            objective.stop()
        else:  # under torchrun: evaluate rank 0's plans on this rank's images
            objective.serve()
            result = None
        result = dist.broadcast(result)
    finally:
        objective.close()
    if isinstance(result, VitpruneError):
        raise result
    if settings.choice == "distilled":  # one process (check_choice): the hooks are gone now
        timed = {}
        if settings.latency_rounds > 1 and _closes_loop(space, model, budget):
            timed = {"measure": lambda plan: measured_fraction(space.latency, model, plan),
                     "target": _target_fraction(space, budget), "miss": LATENCY_MISS}
        result = choose_distilled(model, splits, result, settings, Path(out), seed=seed,
                                  resume=resume, **timed)
    return result


LATENCY_MISS = 0.05  # a latency budget holds when the measured time is within 5% of it
LATENCY_ROUNDS = "latency_rounds.json"  # the closed loop's record, in the search directory


def _closes_loop(space: SearchSpace, model: torch.nn.Module, budget: Budget) -> bool:
    """Whether the search can time its plan where its latency table was measured: a table
    measured on this kind of device (with the dense model's measured time), a time budget."""
    table = space.latency
    return (table is not None and budget.unit in ("fraction", "ms")
            and table.meta.get("dense_ms_measured") is not None
            and table.meta.get("device", "cpu") == torch.device(device_of(model)).type)


def _target_fraction(space: SearchSpace, budget: Budget) -> float:
    """A time budget as a fraction of the dense model's time (the latency table's)."""
    if budget.unit == "fraction":
        return budget.value
    return budget.value / space.latency.dense_ms(space.shape)


def measured_fraction(table: Any, dense: torch.nn.Module, plan: PrunePlan,
                      rounds: int = 5) -> float:
    """The time ``plan``'s model takes as a fraction of ``dense``'s, measured here at the
    table's batch and threads: the median of ``rounds`` interleaved rounds (fastest calls)."""
    import statistics

    from .surgery import prune

    pruned = prune(dense, plan).eval()
    return statistics.median(latency_check(table, dense, pruned)["measured_fraction"]
                             for _ in range(rounds))


def _search_to_time(model: torch.nn.Module, objective: MaskedAccuracy, space: SearchSpace,
                    budget: Budget, cfg: Any, out: Path, *, resume: bool, progress: bool,
                    rounds: int) -> SearchResult:
    """The search, closed on measured time: under a latency budget the chosen plan is timed
    against the dense model; where it misses the budget by more than :data:`LATENCY_MISS`,
    the search runs again (in ``out/round<k>``) at the budget scaled by the miss, up to
    ``rounds`` searches. The round that holds (else the closest) is the result. Each round is
    recorded in ``out/latency_rounds.json`` as soon as it is timed (read back on a resume, so a
    search stopped in any round resumes it at the budget it had, and makes the same choice)."""
    result = search(objective, space, budget, config=cfg, out_dir=out, resume=resume,
                    progress=progress)
    if rounds <= 1 or not _closes_loop(space, model, budget):
        return result
    import json

    from .fsutil import write_json
    from .search.report import write_outputs

    table, shape = space.latency, space.shape
    target = _target_fraction(space, budget)
    record = out / LATENCY_ROUNDS
    before = json.loads(record.read_text())["rounds"] if resume and record.exists() else []
    rows: list[dict[str, Any]] = []
    results = [result]
    asked = budget
    for k in range(rounds):
        if k:
            sub = out / f"round{k + 1}"
            results.append(search(objective, space, asked, config=cfg, out_dir=sub,
                                  resume=resume and sub.exists(), progress=progress))
        old = before[k] if k < len(before) and before[k]["budget"] == asked.value else None
        if old:
            got = old["measured_fraction"]
        else:  # the dense model is timed as it is, without the search's (inactive) hooks
            with objective.unmasked() as dense:
                got = measured_fraction(table, dense, results[-1].best_plan)
        predicted = table.predict(planned_shape(shape, results[-1].best_plan))
        rows.append({"round": k + 1, "budget": asked.value, "unit": asked.unit,
                     "predicted_fraction": predicted / table.dense_ms(shape),
                     "measured_fraction": got})
        if not old:  # recorded before the next round starts: that round's budget rests on it
            write_json(record, {"target_fraction": target, "tolerance": LATENCY_MISS,
                                "rounds": rows, "chosen": None})
        miss = got / target
        if abs(miss - 1) <= LATENCY_MISS:
            break
        value = asked.value / miss
        if asked.unit == "fraction":
            value = min(value, 1.0)
        try:
            nxt = Budget(value, unit=asked.unit, tolerance=asked.tolerance)
            resolve_band(space, nxt)
        except VitpruneError as exc:  # the scaled budget is out of the space's reach
            rows[-1]["stopped"] = str(exc)
            break
        asked = nxt
    held = [i for i, r in enumerate(rows) if abs(r["measured_fraction"] / target - 1)
            <= LATENCY_MISS]
    pick = held[-1] if held else min(range(len(rows)), key=lambda i: abs(
        rows[i]["measured_fraction"] / target - 1))
    write_json(record, {"target_fraction": target, "tolerance": LATENCY_MISS, "rounds": rows,
                        "chosen": pick + 1, "held": bool(held)})
    if pick:  # the directory's best plan and summary are the chosen round's
        write_outputs(results[pick], out)
    return results[pick]


def latency_check(table: Any, dense: torch.nn.Module, pruned: torch.nn.Module) -> dict[str, Any]:
    """The latency table's prediction for ``pruned`` and ``dense`` beside their measured time on
    this machine, at the table's batch, threads and device (the CPU where that device is
    missing), timed in turn, fastest of the rounds. The models are moved to that device."""
    from .speed import Timer

    batch, threads = table.meta.get("batch", 1), table.meta.get("threads")
    device = table.meta.get("device", "cpu")  # timed where the table was measured, if here
    device = device if device == "cpu" or torch.cuda.is_available() else "cpu"
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, *input_shape(dense), device=device)
        dense_ms, pruned_ms = Timer(device, 2, 7, "min").interleaved(
            [logits_module(m).to(device).eval() for m in (dense, pruned)], x)
    finally:
        torch.set_num_threads(old)
    dense_shape = vit_shape(dense)
    return {"table": table.describe(), "batch": batch, "threads": threads, "device": device,
            "predicted_ms": table.predict(vit_shape(pruned)),
            "dense_ms_reference": table.dense_ms(dense_shape), "measured_ms": pruned_ms,
            "dense_measured_ms": dense_ms,
            "predicted_fraction": table.predict(vit_shape(pruned)) / table.dense_ms(dense_shape),
            "measured_fraction": pruned_ms / dense_ms}


def _io(model: torch.nn.Module) -> tuple[int, tuple[int, int, int]]:
    return vit_shape(model).num_classes, input_shape(model)


def check_pair(student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """Raise :class:`ModelError` unless ``teacher`` takes the images and predicts the classes
    ``student`` does (a teacher to distil from)."""
    s, t = _io(student), _io(teacher)
    if s != t:
        raise ModelError(
            f"teacher and student are incompatible: (classes, (channels, height, width)) {t} vs {s}. "
            "Distil from the dense model the student was pruned from, or one trained on the same "
            "data at the same image size.")


def finetune(student: torch.nn.Module, teacher: torch.nn.Module, splits: Splits,
             cfg: TrainConfig, out: str | Path, *, resume: bool = False, device: str = "cpu",
             progress: bool = True) -> list[EpochRecord]:
    """Fine-tune ``student`` (in place) by distillation from ``teacher`` (see :func:`fit`).

    Raises:
        ModelError: the two models do not take the same images or predict the same classes.
    """
    check_pair(student, teacher)
    require(cfg.kd_alpha > 0, "kd_alpha", "must be > 0: fine-tuning distils from the teacher")
    return fit(student, splits, cfg, out, resume=resume, teacher=teacher, device=device,
               progress=progress)


def test_metrics(model: torch.nn.Module, splits: Splits, device: str | None = None, *,
                 reference: torch.nn.Module | None = None) -> dict[str, Any]:
    """Test top-1 and loss (all processes' parts of the test split), MACs and parameters, on
    ``device`` (default: where the model is).

    A model without a classifier has no top-1: its feature fidelity to ``reference`` (the dense
    model; None: no fidelity) on the test and calibration splits and, where the images have
    labels, its k-NN top-1 on the test split against the calibration images
    (:mod:`vitprune.train.features`).
    """
    device = device or device_of(model)
    loader = make_loader(splits.test, EVAL_BATCH, rank=dist.rank(), world=dist.world(),
                         num_workers=splits.workers)
    model = model.to(device)
    shape = vit_shape(model)
    row: dict[str, Any] = {"macs": macs(shape).total, "params": count_params(model)}
    if shape.num_classes:
        acc = evaluate(model, loader, device)
        return {"test_top1": acc["top1"], "test_loss": acc["loss"], "test_images": acc["n"], **row}
    calib = make_loader(splits.calib, EVAL_BATCH, rank=dist.rank(), world=dist.world(),
                        num_workers=splits.workers)
    row["test_images"] = len(splits.test)
    if reference is not None:
        reference = reference.to(device)
        row["test_fidelity"] = evaluate_fidelity(model, reference, loader, device)["fidelity"]
        row["calib_fidelity"] = evaluate_fidelity(model, reference, calib, device)["fidelity"]
    if splits.num_classes:
        row["test_knn_top1"] = knn_top1(model, calib, loader, device)
    return row


def evaluate_models(models: dict[str, torch.nn.Module], splits: Splits, *,
                    timed: Sequence[str] = (), bench_batches: Sequence[int] = (1, 64),
                    device: str) -> dict[str, dict[str, Any]]:
    """Per model: test and calibration top-1, MACs, parameters; for the ``timed`` ones also
    latency and throughput on ``device`` at each of ``bench_batches`` (bf16 autocast on CUDA,
    as the search ran), timed in turn so ratios are fair, under the device's type
    (``rows[name]["cpu"]`` or ``["cuda"]``).

    The calibration top-1 is there to compare like with like with the fine-tuning curve, which
    is measured on the calibration split.
    """
    calib = make_loader(splits.calib, EVAL_BATCH, rank=dist.rank(), world=dist.world(),
                        num_workers=splits.workers)
    rows = {}
    for name, m in models.items():
        if vit_shape(m).num_classes:
            rows[name] = {**test_metrics(m, splits, device),
                          "calib_top1": evaluate(m.to(device), calib, device)["top1"]}
        else:  # a backbone: measured against the dense model's features
            rows[name] = test_metrics(m, splits, device, reference=models["dense"])
    if timed and dist.is_main():
        img = input_shape(next(iter(models.values())))
        pair = {name: models[name] for name in timed}
        kind = torch.device(device).type
        for b in bench_batches:
            for name, r in compare(pair, img, b, device=device, **timing(b)).items():
                rows[name].setdefault(kind, {})[f"batch{b}"] = r
    return rows
