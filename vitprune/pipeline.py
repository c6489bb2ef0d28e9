"""The one place that composes the parts: score -> search -> prune (-> fine-tune, later).

Each function takes a model and data splits and returns plain results; the command line
(``cli.py``) only parses arguments and calls these.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import dist
from .adapters import vit_shape
from .data import Splits, make_loader
from .data.base import TensorImageSet
from .errors import ModelError, ScoringError, SearchError, VitpruneError, require
from .plan import PrunePlan
from .scoring import BlockScores, get_criterion, load_scores, rankings, save_scores
from .search import Ratios
from .search.config import DIMS, OBJECTIVES, Budget
from .search.loop import SearchResult, search
from .search.sampler import resolve_band
from .search.space import SearchSpace
from .surgery import Masker
from .train import TrainConfig, fit


def calibration_batches(splits: Splits, n_images: int | None, batch_size: int = 256,
                        device: str = "cpu", *, rank: int = 0,
                        world: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``n_images`` of the calibration split as in-memory batches, same order each time.

    The calibration split is carved from the training images (held out from training), so the
    search never sees the test set. With ``world > 1`` this rank's part of each batch.
    """
    ds = splits.calib
    n = len(ds) if n_images is None else min(n_images, len(ds))
    if isinstance(ds, TensorImageSet):
        ds = ds.subset(torch.arange(n))
    else:
        ds = torch.utils.data.Subset(ds, list(range(n)))
    return [(x.to(device), y.to(device))
            for x, y in make_loader(ds, batch_size, rank=rank, world=world)]


def score(model: torch.nn.Module, splits: Splits, criterion: str = "hsic", *,
          n_images: int = 256, out: str | Path | None = None,
          **options: Any) -> list[BlockScores]:
    """Score every head and neuron of ``model`` on calibration images; optionally save them."""
    crit = get_criterion(criterion, **options)
    batches = calibration_batches(splits, n_images, batch_size=min(64, n_images))
    scores = crit(model, batches)
    if out is not None:
        save_scores(out, scores, {**crit.meta(), "images": n_images, "data": splits.name})
    return scores


class MaskedAccuracy:
    """The search objective: top-1 (%) of the dense weights under a plan, on calibration batches,
    or with ``metric="kl"`` minus the mean KL divergence from the dense model's predictions
    (higher is better either way; KL is smoother than top-1 on a few thousand images).

    Applies plans as masks in place (fast to change between evaluations); :meth:`close`
    restores the model.

    Under torchrun each rank holds its part of the calibration batches: rank 0 calls the
    objective (it runs the search), which sends the plan to the other ranks, waiting in
    :meth:`serve`; the sums are added over ranks, so the value is that of all the batches.
    """

    def __init__(self, model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 metric: str = "top1"):
        require(metric in OBJECTIVES, "objective", f"must be one of {OBJECTIVES}, got {metric!r}")
        self.model = model.eval()
        self.batches = batches
        self.metric = metric
        self.dense = None
        if metric == "kl":  # the dense model's log-probabilities, computed once
            with torch.inference_mode():
                self.dense = [model(x).float().log_softmax(-1) for x, _ in batches]
        self.masker = Masker(model)

    def _counts(self, plan: PrunePlan) -> list[float]:
        # masks are made outside inference mode: inference tensors would break later autograd
        # use of the same model (e.g. a Taylor criterion) while the masks are installed
        self.masker.set(plan)
        good = total = 0.0
        with torch.inference_mode():
            for i, (x, y) in enumerate(self.batches):
                logits = self.model(x)
                if self.dense is None:
                    good += (logits.argmax(-1) == y).sum().item()
                else:
                    good -= F.kl_div(logits.float().log_softmax(-1), self.dense[i],
                                     reduction="sum", log_target=True).item()
                total += y.numel()
        return dist.sum_([good, total])

    def __call__(self, plan: PrunePlan, ratios: Ratios | None = None) -> float:
        if dist.active():
            dist.broadcast(plan.to_dict())
        good, total = self._counts(plan)
        return (100.0 if self.metric == "top1" else 1.0) * good / total

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


def parse_budget(text: str | float) -> Budget:
    """``0.6`` keeps 60% of the dense MACs; ``2.7G`` is an absolute 2.7 GMACs per image."""
    if isinstance(text, str) and text.strip().lower().endswith("g"):
        return Budget(float(text.strip()[:-1]), unit="gmacs")
    return Budget(float(text))


def _check_dims(dims: Sequence[str]) -> tuple[str, ...]:
    dims = tuple(dims)
    if not dims or any(d not in DIMS for d in dims) or len(set(dims)) != len(dims):
        raise SearchError(f"dims {dims!r} must be distinct names among {', '.join(DIMS)}")
    return dims


def _space(model: torch.nn.Module, bounds: tuple[float, float],
           scores: Sequence[BlockScores] | None = None,
           token_blocks: Sequence[int] | None = None,
           dims: Sequence[str] = DIMS) -> SearchSpace:
    dims, fixed = _check_dims(dims), (0.0, 0.0)
    if "tokens" not in dims:
        token_blocks = ()
    return SearchSpace(vit_shape(model), head_bounds=bounds if "heads" in dims else fixed,
                       neuron_bounds=bounds if "neurons" in dims else fixed,
                       token_bounds=bounds if "tokens" in dims else fixed,
                       token_blocks=None if token_blocks is None else tuple(token_blocks),
                       rankings=None if scores is None else tuple(rankings(scores)))


def check_budget(model: torch.nn.Module, budget: Budget | float,
                 bounds: tuple[float, float] | float = (0.0, 0.5),
                 dims: Sequence[str] = DIMS) -> None:
    """Raise :class:`BudgetError` (with the reachable range) if no plan can meet ``budget``."""
    if isinstance(bounds, (int, float)):
        bounds = (0.0, float(bounds))
    resolve_band(_space(model, bounds, dims=dims),
                 budget if isinstance(budget, Budget) else Budget(budget))


def policy_search(model: torch.nn.Module, splits: Splits, budget: Budget | float, out: str | Path,
                  *, method: str = "gp-ei", n_trials: int = 50, n_init: int = 20, seed: int = 0,
                  scores: Sequence[BlockScores] | str | Path | None = None,
                  criterion: str = "hsic", calib_images: int | None = 2000,
                  bounds: tuple[float, float] = (0.0, 0.5), resume: bool = False,
                  progress: bool = True, metric: str = "top1",
                  token_blocks: Sequence[int] | None = None,
                  dims: Sequence[str] = DIMS) -> SearchResult:
    """Search per-block head/neuron ratios and a token ratio maximising masked calibration top-1
    (``metric="kl"``: minimising the KL divergence from the dense model's predictions).

    Components are kept in the order of ``scores`` (a criterion's, computed here when not given),
    so the search decides how many to keep per block, not which. ``token_blocks``: the blocks
    with a token-selection stage (default: a quarter, half and three quarters of the way; empty:
    none). ``dims``: the dimensions pruned (any of ``heads``, ``neurons``, ``tokens``; the others
    are kept whole).
    """
    if isinstance(scores, (str, Path)):
        scores, _ = load_scores(scores)
    if scores is None:
        scores = score(model, splits, criterion, n_images=min(256, calib_images or 256))
    depth = len(vit_shape(model).blocks)
    if len(scores) != depth:
        raise ScoringError(f"scores are for {len(scores)} blocks, the model has {depth}")
    space = _space(model, bounds, scores, token_blocks, dims)
    objective = MaskedAccuracy(model, calibration_batches(splits, calib_images, rank=dist.rank(),
                                                          world=dist.world()), metric=metric)
    try:
        if dist.is_main():
            try:
                result = search(objective, space, budget, method=method, n_trials=n_trials,
                                n_init=n_init, seed=seed, out_dir=out, resume=resume,
                                progress=progress, metric=metric)
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
    return result


def _io(model: torch.nn.Module) -> tuple[int, int, tuple[int, int]]:
    pe = model.patch_embed
    return model.num_classes, pe.proj.in_channels, tuple(pe.img_size)


def finetune(student: torch.nn.Module, teacher: torch.nn.Module, splits: Splits,
             cfg: TrainConfig, out: str | Path, *, resume: bool = False, device: str = "cpu",
             progress: bool = True) -> list[dict]:
    """Fine-tune ``student`` (in place) by distillation from ``teacher`` (see :func:`fit`).

    Raises:
        ModelError: the two models do not take the same images or predict the same classes.
    """
    s, t = _io(student), _io(teacher)
    if s != t:
        raise ModelError(
            f"teacher and student are incompatible: (classes, channels, image size) {t} vs {s}. "
            "Distil from the dense model the student was pruned from, or one trained on the same "
            "data at the same image size.")
    require(cfg.kd_alpha > 0, "kd_alpha", "must be > 0: fine-tuning distils from the teacher")
    return fit(student, splits, cfg, out, resume=resume, teacher=teacher, device=device,
               progress=progress)
