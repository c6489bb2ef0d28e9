"""Importance criteria for heads and MLP neurons, behind one interface.

A :class:`Criterion` maps (model, calibration loader) to one :class:`BlockScores` per block:
a score per head and per neuron, higher = keep. :func:`rankings` turns scores into the per-block
orders the search space consumes. Criteria (by name, :func:`get_criterion`):

* ``hsic``: the method's dependence criterion (docs/method.md): head = relevance
  - 0.1 * redundancy, neuron = 0.1 * minmax(relevance) + 0.9 * minmax(mean |activation|).
* ``magnitude``: L1 (or L2) norm of the component's weights.
* ``activation``: mean |activation| (heads: mean |head output|).
* ``taylor``: first-order Taylor, |activation x gradient of the CE loss|.
* ``group-taylor``: first-order Taylor on the weights, summed over the component's group:
  sum of |w x dCE/dw| over its qkv rows and proj columns (a head) or its fc1 row and fc2 column
  (a neuron), the gradient taken over all calibration images at once (Torch-Pruning's
  ``GroupTaylorImportance``).
* ``random``: seeded uniform noise (the floor any criterion must beat).

Scores become a plan in the pipeline (scoring may not import search)::

    from vitprune.search.space import Ratios, ratios_to_plan
    scores = get_criterion("hsic")(model, loader)
    plan = ratios_to_plan(vit_shape(model), ratios, rankings=rankings(scores))

Tokens have no HSIC score here: HSIC measures dependence across the n calibration images, so a
token score from it is a statistic of a token *position* over a dataset (the authors smoothed it
with an EMA over batches), not something computable for one image at inference time. Token
selection stays per image, by class-token attention (``vitprune.adapters.tokens``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import fsutil
from ..adapters import BlockParts, adapter_for, check_prunable, vit_shape
from ..cost import VitShape
from ..errors import ScoringError
from .collect import SCORE_IMAGES, Collected, collect, collect_taylor, collect_weight_taylor, feature_groups
from .hsic import DEFAULT_SIGMAS, hsic_pairwise, hsic_to_target, linear_gram

SCORES_VERSION = 1
FEATURE_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True, eq=False)
class BlockScores:
    """Importance of one block's components (higher = keep).

    Attributes:
        heads: (H,) float64 CPU scores, one per head.
        neurons: (D,) float64 CPU scores, one per MLP neuron.
    """

    heads: torch.Tensor
    neurons: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("heads", "neurons"):
            t = torch.as_tensor(getattr(self, name)).detach().to("cpu", torch.float64)
            if t.ndim != 1 or t.numel() == 0:
                raise ScoringError(
                    f"{name} scores must be a non-empty 1-D tensor, got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ScoringError(f"{name} scores contain NaN or inf; the criterion failed")
            object.__setattr__(self, name, t)


def rankings(scores: Sequence[BlockScores]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per block, (head ids, neuron ids) most important first; ties keep the lower id first.

    The format of ``rankings=`` in ``vitprune.search.space.ratios_to_plan``.
    """
    def order(t: torch.Tensor) -> tuple[int, ...]:
        return tuple(torch.sort(t, descending=True, stable=True).indices.tolist())
    return [(order(s.heads), order(s.neurons)) for s in scores]


def check_scores(scores: Sequence[BlockScores], shape: VitShape) -> None:
    """Raise :class:`ScoringError` unless ``scores`` scores each head and neuron of ``shape``."""
    if len(scores) != len(shape.blocks):
        raise ScoringError(
            f"scores are for {len(scores)} blocks but the model has {len(shape.blocks)}; "
            "score this model again"
        )
    for i, (s, b) in enumerate(zip(scores, shape.blocks)):
        if s.heads.numel() != b.heads or s.neurons.numel() != b.mlp_hidden:
            raise ScoringError(
                f"block {i}: scores for {s.heads.numel()} heads / {s.neurons.numel()} neurons, "
                f"the model has {b.heads} / {b.mlp_hidden}; score this model again"
            )


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Rescale (D,) to [0, 1] (min -> 0, max -> 1); all zeros when constant."""
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


class Criterion(ABC):
    """Scores every head and neuron of a ViT. Subclasses are frozen dataclasses of options."""

    name: ClassVar[str] = ""

    @abstractmethod
    def __call__(self, model: nn.Module, loader: Iterable | None = None) -> list[BlockScores]:
        """Score ``model`` (not modified) on calibration batches from ``loader``.

        Returns:
            one :class:`BlockScores` per block.
        """

    def meta(self) -> dict[str, Any]:
        """The criterion's name and options, JSON-ready (to save beside the scores)."""
        opts = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        return {"criterion": self.name, "options": _jsonable(opts)}


_REGISTRY: dict[str, type[Criterion]] = {}


def register(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator: make a criterion available to :func:`get_criterion` as ``name``."""
    def deco(cls: type[Criterion]) -> type[Criterion]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def available_criteria() -> list[str]:
    """Names :func:`get_criterion` accepts."""
    return sorted(_REGISTRY)


def get_criterion(name: str, **options: Any) -> Criterion:
    """The criterion registered as ``name``, built with ``options``.

    Raises:
        ScoringError: unknown name or option.
    """
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ScoringError(
            f"unknown criterion '{name}'; choose one of {', '.join(available_criteria())}")
    try:
        return cls(**options)
    except TypeError as exc:
        fields = [f.name for f in dataclasses.fields(cls)]
        raise ScoringError(f"criterion '{name}' takes options {fields}: {exc}") from None


def _need_loader(loader: Iterable | None, name: str) -> Iterable:
    if loader is None:
        raise ScoringError(f"the '{name}' criterion needs a calibration loader")
    return loader


@register("hsic")
@dataclass(frozen=True)
class HSICCriterion(Criterion):
    """The dependence criterion (docs/method.md), all components of a block batched.

    Attributes:
        normalized: use normalised HSIC (CKA) for relevance and redundancy. Default True: raw
            HSIC scales with each component's kernel spread, so heads of one block would be
            compared by how spread their outputs are, and the 0.1 redundancy weight would mean
            something different in every block; normalised values are in [0, 1] everywhere.
        target: ``"softmax"`` (the dense model's prediction, the authors' choice),
            ``"labels"`` (one-hot) or ``"features"`` (the dense model's output features: a
            backbone's embedding); a linear kernel in each case. A model without a classifier
            (``num_classes=0``) is scored against its features whatever this says: it has no
            prediction.
        redundancy_weight: weight of the mean head-head HSIC subtracted from head relevance.
        hsic_weight: weight of minmax(HSIC) in a neuron's score; the rest goes to
            minmax(mean |activation|).
        sigmas: Gaussian bandwidths of ``bandwidth="fixed"`` (see
            :func:`~vitprune.scoring.hsic.gaussian_gram`).
        bandwidth: ``"median"`` (default: the median heuristic, per component) or ``"fixed"``
            (the authors' average over ``sigmas``). On the Fashion-MNIST baseline the fixed
            bandwidths are too narrow for 50-token features (squared distances ~100 between
            standardised features), and the median ranks heads better: +1.8 / +0.9 points with 1 / 2
            of 4 heads removed, +1.0 / +0.3 points test top-1 of the GP-EI plan at 60% / 40% MACs
            (docs/hsic_variants.md).
        unbiased: use the unbiased HSIC estimator.
        max_images: calibration images used (n); memory and time grow as n * N and n^2.
        chunk: components per batched Gram step; memory per step ~ chunk * n * (n + N) floats.
            32 is fastest on CPU (the step stays in cache); on a GPU, larger is better.
        feature_dtype: storage of collected features (``float16``, ``float32``, ``float64``).
        max_feature_bytes: features collected per pass over the loader; more blocks than fit
            are collected in further passes (the loader must yield the same images each time).
        amp: the model's forward in bf16 autocast (default: on CUDA only); the Gram matrices
            and HSIC are computed in float32 (float64 for float64 features) either way.
    """

    normalized: bool = True
    target: str = "softmax"
    redundancy_weight: float = 0.1
    hsic_weight: float = 0.1
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    bandwidth: str = "median"
    unbiased: bool = False
    max_images: int = SCORE_IMAGES
    chunk: int = 32
    feature_dtype: str = "float16"
    max_feature_bytes: int = 1 << 30
    amp: bool | None = None

    def __post_init__(self) -> None:
        if self.target not in ("softmax", "labels", "features"):
            raise ScoringError("HSIC target must be 'softmax', 'labels' or 'features', got "
                               f"'{self.target}'")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ScoringError(f"feature_dtype must be one of {sorted(FEATURE_DTYPES)}")
        object.__setattr__(self, "sigmas", tuple(float(s) for s in self.sigmas))

    def __call__(self, model: nn.Module, loader: Iterable | None = None) -> list[BlockScores]:
        loader = _need_loader(loader, self.name)
        check_prunable(model)
        shape = vit_shape(model)
        dtype = FEATURE_DTYPES[self.feature_dtype]
        groups = feature_groups(shape, self.max_images, dtype, self.max_feature_bytes)
        # the arithmetic is never autocast (even when a caller runs this under autocast): only
        # collect's forward is, as self.amp says
        features = self.target == "features" or shape.num_classes == 0
        with _no_autocast(model):
            first = collect(model, loader, shape, blocks=groups[0], max_images=self.max_images,
                            feature_dtype=dtype, statistics=True, amp=self.amp,
                            output="features" if features else "softmax")
            target = self.target_gram(first, shape.num_classes)
            scores: list[BlockScores] = []
            for g, group in enumerate(groups):
                got = first if g == 0 else collect(model, loader, shape, blocks=group,
                                                   max_images=self.max_images,
                                                   feature_dtype=dtype, statistics=False,
                                                   amp=self.amp)
                _check_same_images(first, got)
                for i in group:
                    feats = got.features.pop(i)  # freed once scored
                    scores.append(self.score_block(feats.heads, feats.neurons, target,
                                                   first.neuron_abs[i]))
        return scores

    def target_gram(self, got: Collected, num_classes: int) -> torch.Tensor:
        """(n, n) float64 linear Gram matrix of the softmax predictions, the output features or
        one-hot labels.

        Built from mean-centred targets (HSIC is the same): a random or uncertain model's
        softmax is nearly uniform, and the Gram of the raw probabilities would be a constant
        matrix whose centring leaves nothing but rounding error.
        """
        if self.target in ("softmax", "features") or num_classes == 0:
            y = got.probs.double()  # what collect gathered: predictions or features
        elif got.labels is None:
            raise ScoringError("target='labels' needs a loader that yields (images, labels)")
        else:
            y = F.one_hot(got.labels, max(num_classes, int(got.labels.max()) + 1)).double()
        return linear_gram(y - y.mean(dim=0))

    def score_block(self, heads: torch.Tensor, neurons: torch.Tensor, target: torch.Tensor,
                    neuron_abs: torch.Tensor) -> BlockScores:
        """Scores of one block from its features.

        Args:
            heads: (H, n, N) head features.
            neurons: (D, n, N) neuron features.
            target: (n, n) target Gram matrix.
            neuron_abs: (D,) mean |activation| of the neurons.
        """
        opts = dict(normalized=self.normalized, unbiased=self.unbiased, sigmas=self.sigmas,
                    bandwidth=self.bandwidth)
        relevance = hsic_to_target(heads, target, chunk=self.chunk, **opts)  # (H,)
        pair = hsic_pairwise(heads, **opts)  # (H, H)
        h = pair.shape[0]
        redundancy = ((pair.sum(dim=1) - pair.diagonal()) / (h - 1) if h > 1
                      else torch.zeros_like(relevance))
        head_scores = relevance - self.redundancy_weight * redundancy
        dep = hsic_to_target(neurons, target, chunk=self.chunk, **opts)  # (D,)
        neuron_scores = (self.hsic_weight * minmax(dep.cpu().double())
                         + (1.0 - self.hsic_weight) * minmax(neuron_abs.cpu().double()))
        return BlockScores(head_scores, neuron_scores)


def _no_autocast(model: nn.Module):
    """Autocast off on the model's device type."""
    kind = next(model.parameters()).device.type
    return torch.autocast(kind, enabled=False) if kind in ("cpu", "cuda") else \
        contextlib.nullcontext()


def _check_same_images(first: Collected, got: Collected) -> None:
    if got.n != first.n or not math.isclose(got.fingerprint, first.fingerprint, rel_tol=1e-9):
        raise ScoringError(
            "the calibration loader yielded other images on a later pass; scoring streams it once "
            "per group of blocks, so it must be deterministic (shuffle=False, fixed epoch), or "
            "raise max_feature_bytes so that one pass collects every block"
        )


@register("magnitude")
@dataclass(frozen=True)
class MagnitudeCriterion(Criterion):
    """Norm of each component's weights; needs no data.

    A head owns its q, k and v rows of ``qkv`` and its input columns of ``proj``; a neuron its
    row of ``fc1`` and its column of ``fc2``. Biases are left out (they do not scale with use).

    Attributes:
        p: 1 for the L1 norm, 2 for L2.
    """

    p: int = 1

    def __post_init__(self) -> None:
        if self.p not in (1, 2):
            raise ScoringError(f"magnitude criterion takes p=1 or p=2, got {self.p}")

    def __call__(self, model: nn.Module, loader: Iterable | None = None) -> list[BlockScores]:
        adapter = adapter_for(model)
        shape = adapter.shape(model)
        return [self.block(adapter.parts(b), s.heads, s.head_dim)
                for b, s in zip(adapter.blocks(model), shape.blocks)]

    def _per_weight(self, lin: nn.Linear) -> torch.Tensor:
        w = lin.weight.detach().double()
        return w.abs() if self.p == 1 else w.pow(2)

    def block(self, parts: BlockParts, h: int, d: int) -> BlockScores:
        heads, neurons = component_sums(parts, h, d, self._per_weight)
        if self.p == 2:  # one norm over all the component's weights, not a sum of norms
            heads, neurons = heads.sqrt(), neurons.sqrt()
        return BlockScores(heads, neurons)


def component_sums(parts: BlockParts, h: int, d: int,
                   value: Callable[[nn.Linear], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head and per neuron, the sum of ``value(layer)`` (one number per weight, the
    layer's weight shape) over the weights the component owns: a head its q, k and v rows of
    ``qkv`` and its input columns of ``proj``; a neuron its row of each ``mlp_in`` matrix and
    its column of ``mlp_out``. Biases are left out."""
    if len(parts.qkv) == 1:  # (q|k|v, head, channel, input)
        qkv = value(parts.qkv[0]).reshape(3, h, d, -1)
    else:
        qkv = torch.stack([value(lin).reshape(h, d, -1) for lin in parts.qkv])
    heads = qkv.sum(dim=(0, 2, 3)) + value(parts.proj).reshape(-1, h, d).sum(dim=(0, 2))
    neurons = sum(w.sum(dim=1) for lin in parts.mlp_in
                  for w in value(lin).chunk(parts.mlp_in_chunks, dim=0))
    return heads, neurons + value(parts.mlp_out).sum(dim=0)


@register("activation")
@dataclass(frozen=True)
class ActivationCriterion(Criterion):
    """Mean |activation| over images and tokens (heads: over their output channels too).

    Attributes:
        max_images: calibration images used.
    """

    max_images: int = SCORE_IMAGES

    def __call__(self, model: nn.Module, loader: Iterable | None = None) -> list[BlockScores]:
        loader = _need_loader(loader, self.name)
        check_prunable(model)
        got = collect(model, loader, vit_shape(model), max_images=self.max_images)
        return [BlockScores(h, d) for h, d in zip(got.head_abs, got.neuron_abs)]


@register("taylor")
@dataclass(frozen=True)
class TaylorCriterion(Criterion):
    """First-order Taylor: per image |sum over tokens of activation x dCE/dactivation|, averaged
    over images (the estimated loss change when the component is removed). Needs labels.

    Attributes:
        max_images: calibration images used (each costs a forward and a backward pass).
    """

    max_images: int = SCORE_IMAGES

    def __call__(self, model: nn.Module, loader: Iterable | None = None) -> list[BlockScores]:
        loader = _need_loader(loader, self.name)
        check_prunable(model)
        heads, neurons = collect_taylor(model, loader, vit_shape(model),
                                        max_images=self.max_images)
        return [BlockScores(h, d) for h, d in zip(heads, neurons)]


@register("group-taylor")
@dataclass(frozen=True)
class GroupTaylorCriterion(Criterion):
    """First-order Taylor on the weights, summed over each component's group of weights:
    ``sum |w * dCE/dw|`` (the loss's change when the weight is zeroed, to first order), the
    gradient of the cross-entropy summed over the calibration images (Torch-Pruning's
    ``GroupTaylorImportance``: weights only, a group's layers summed). Needs labels.

    Attributes:
        max_images: calibration images used (each costs a forward and a backward pass).
    """

    max_images: int = SCORE_IMAGES

    def __call__(self, model: nn.Module, loader: Iterable | None = None) -> list[BlockScores]:
        loader = _need_loader(loader, self.name)
        check_prunable(model)
        adapter = adapter_for(model)
        got = collect_weight_taylor(model, loader, max_images=self.max_images)
        return [BlockScores(*component_sums(adapter.parts(b), s.heads, s.head_dim, got.__getitem__))
                for b, s in zip(adapter.blocks(model), adapter.shape(model).blocks)]


@register("random")
@dataclass(frozen=True)
class RandomCriterion(Criterion):
    """Uniform random scores from a seeded generator; needs no data.

    Attributes:
        seed: same seed, same scores.
    """

    seed: int = 0

    def __call__(self, model: nn.Module, loader: Iterable | None = None) -> list[BlockScores]:
        shape = vit_shape(model)
        gen = torch.Generator().manual_seed(self.seed)
        return [BlockScores(torch.rand(b.heads, generator=gen, dtype=torch.float64),
                            torch.rand(b.mlp_hidden, generator=gen, dtype=torch.float64))
                for b in shape.blocks]


def save_scores(path: str | Path, scores: Sequence[BlockScores],
                meta: dict[str, Any] | None = None, *, exclusive: bool = False) -> None:
    """Write scores (and e.g. :meth:`Criterion.meta`) as JSON to ``path`` atomically
    (``exclusive``: never replace an existing file)."""
    fsutil.write_json(path, exclusive=exclusive, obj={
        "version": SCORES_VERSION,
        "meta": _jsonable(meta or {}),
        "blocks": [{"heads": s.heads.tolist(), "neurons": s.neurons.tolist()} for s in scores],
    })


def load_scores(path: str | Path) -> tuple[list[BlockScores], dict[str, Any]]:
    """Read :func:`save_scores`'s file: (scores, meta).

    Raises:
        ScoringError: missing, malformed or from a newer vitprune.
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise ScoringError(f"scores file {path} does not exist; run the scoring step first")
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict) or d.get("version", 0) > SCORES_VERSION:
            raise ScoringError("not a scores record of a supported version")
        scores = [BlockScores(torch.tensor(b["heads"], dtype=torch.float64),
                              torch.tensor(b["neurons"], dtype=torch.float64))
                  for b in d["blocks"]]
    except (ValueError, KeyError, TypeError, ScoringError) as exc:
        raise ScoringError(
            f"{path} is not a valid scores file ({exc}); score the model again") from None
    return scores, d.get("meta", {})


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, torch.dtype):
        return str(x).removeprefix("torch.")
    return x
