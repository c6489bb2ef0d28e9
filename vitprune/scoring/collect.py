"""Forward hooks that gather, over a calibration loader, what the criteria score components by.

Per image, for each block ``l`` with ``H`` heads of width ``d``, ``D`` MLP neurons and ``N``
tokens:

* head features: the input of ``attn.proj`` (B, N, H*d), split per head and averaged over ``d``
  -> a vector of ``N`` per head and image, stored as (H, n, N);
* neuron features: the input of the MLP's output layer (after GELU), (B, N, D) -> stored as (D, n, N);
* the dense model's softmax prediction (n, classes) and the labels (n,);
* running sums of |head output| and |neuron activation| (for magnitude-of-activation scores).

Memory strategy. HSIC needs the Gram matrix over all ``n`` images, so the features of all ``n``
images must exist at once; Gram matrices of all neurons (D * n * n) would be larger than the
features (D * n * N, N = 197 < n = 256 for DeiT-S), so features are what is kept, in float16 by
default (half the memory; each scoring chunk is upcast to float32). ``n`` is capped
(``max_images``) and features are collected only for the blocks asked for: a criterion asks for
as many blocks per pass over the loader as fit a byte budget (:func:`feature_groups`), scores
them, frees them and streams the loader again for the next group. A pass that needs no
predictions stops the forward after its last block. Running sums are O(H + D) per block.

Hooks live only for the call (removed in ``finally``); the model's train/eval flags are restored;
no parameter or ``.grad`` is touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import BlockParts, adapter_for, logits_module
from ..cost import VitShape
from ..devices import autocast
from ..errors import DataError, ScoringError

#: calibration images scored by default: every criterion and the ``score`` command start here
SCORE_IMAGES = 256


@dataclass
class BlockFeatures:
    """Gram-ready features of one block's components.

    Attributes:
        heads: (H, n, N): per head, per image, the head's output averaged over its width.
        neurons: (D, n, N): per neuron, per image, its activation at each token.
    """

    heads: torch.Tensor
    neurons: torch.Tensor


@dataclass
class Collected:
    """What one pass over the calibration data gathered.

    Attributes:
        n: images seen.
        features: block index -> :class:`BlockFeatures`, for the blocks asked for.
        probs: (n, classes) float32 dense softmax predictions, or with ``output="features"``
            the (n, D) flattened output features (None when the pass stopped early).
        labels: (n,) int64 labels (None when the loader yields no labels or the pass stopped early).
        head_abs: per block, (H,) mean |head output| over images, tokens and the head's channels.
        neuron_abs: per block, (D,) mean |activation| over images and tokens.
        fingerprint: an order-sensitive checksum of the images, to check that a later pass over
            the loader saw the same images in the same order.
    """

    n: int
    features: dict[int, BlockFeatures] = field(default_factory=dict)
    probs: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    head_abs: list[torch.Tensor] | None = None
    neuron_abs: list[torch.Tensor] | None = None
    fingerprint: float = 0.0


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the last needed block has run."""


def tokens_per_block(shape: VitShape) -> int:
    """Tokens a dense block sees (prefix + patches): an upper bound for pruned models too."""
    return shape.num_prefix + shape.num_patches


def block_feature_bytes(shape: VitShape, block: int, n: int, dtype: torch.dtype) -> int:
    """Bytes of one block's :class:`BlockFeatures` for ``n`` images."""
    b = shape.blocks[block]
    item = torch.empty((), dtype=dtype).element_size()
    return n * tokens_per_block(shape) * (b.heads + b.mlp_hidden) * item


def feature_groups(shape: VitShape, n: int, dtype: torch.dtype,
                   max_bytes: int) -> list[tuple[int, ...]]:
    """Consecutive blocks whose features together fit ``max_bytes``: one loader pass per group.

    A block larger than the budget on its own still gets a group (one block is the least a
    block's scores need); lower ``n`` to go below that.
    """
    groups: list[list[int]] = [[]]
    used = 0
    for i in range(len(shape.blocks)):
        size = block_feature_bytes(shape, i, n, dtype)
        if groups[-1] and used + size > max_bytes:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += size
    return [tuple(g) for g in groups]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in eval mode (no dropout / drop-path); restore every module's own flag afterwards."""
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def split_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images, labels or None) from a loader batch: a tensor or an (images, labels, ...) tuple."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        labels = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], labels
    raise DataError(
        f"a calibration batch must be an image tensor or an (images, labels) pair, got "
        f"{type(batch).__name__}; use vitprune.data.make_loader"
    )


def _limited(loader: Iterable, max_images: int,
             device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Batches from ``loader`` truncated to ``max_images`` images in all, on ``device``."""
    if max_images < 1:
        raise ScoringError(f"max_images must be at least 1, got {max_images}")
    seen = 0
    for batch in loader:
        images, labels = split_batch(batch)
        take = min(images.shape[0], max_images - seen)
        images = images[:take].to(device)
        labels = labels[:take].to(device) if labels is not None else None
        yield images, labels
        seen += take
        if seen >= max_images:
            return


class _Recorder:
    """The hook functions of one collection pass and what they gathered."""

    def __init__(self, shape: VitShape, blocks: Sequence[int], statistics: bool,
                 dtype: torch.dtype, stop_after: int | None) -> None:
        self.shape, self.blocks, self.statistics = shape, set(blocks), statistics
        self.dtype, self.stop_after = dtype, stop_after
        self.heads: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}
        self.neurons: dict[int, list[torch.Tensor]] = {i: [] for i in blocks}
        depth = len(shape.blocks)
        self.head_sum: list[torch.Tensor | float] = [0.0] * depth
        self.neuron_sum: list[torch.Tensor | float] = [0.0] * depth
        self.head_count, self.neuron_count = [0] * depth, [0] * depth
        self.batch = 0  # images in the forward being recorded (set before each one)

    def proj_hook(self, i: int):
        h, d = self.shape.blocks[i].heads, self.shape.blocks[i].head_dim

        def hook(_module: nn.Module, args: tuple) -> None:
            # (B, N, h*d), channel = head * d + j (timm's layout)
            x = per_image(args[0].detach(), self.batch)
            xh = x.reshape(x.shape[0], x.shape[1], h, d)  # (B, N, h, d)
            if self.statistics:
                self.head_sum[i] = self.head_sum[i] + xh.abs().sum(dim=(0, 1, 3)).float()
                self.head_count[i] += x.shape[0] * x.shape[1] * d
            if i in self.blocks:
                self.heads[i].append(xh.mean(dim=-1).permute(2, 0, 1).to(self.dtype))  # (h, B, N)
        return hook

    def hidden_hook(self, i: int):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = per_image(args[0].detach(), self.batch)  # (B, N, D), after GELU
            if self.statistics:
                self.neuron_sum[i] = self.neuron_sum[i] + x.abs().sum(dim=(0, 1)).float()
                self.neuron_count[i] += x.shape[0] * x.shape[1]
            if i in self.blocks:
                self.neurons[i].append(x.permute(2, 0, 1).to(self.dtype))  # (D, B, N)
            if i == self.stop_after:
                raise _StopForward
        return hook

    def features(self) -> dict[int, BlockFeatures]:
        out = {}
        for i in sorted(self.blocks):  # pop as we go: one block's chunks and its cat coexist
            out[i] = BlockFeatures(torch.cat(self.heads.pop(i), dim=1),
                                   torch.cat(self.neurons.pop(i), dim=1))
        return out

    def means(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        heads = [torch.as_tensor(s) / max(c, 1) for s, c in zip(self.head_sum, self.head_count)]
        neurons = [torch.as_tensor(s) / max(c, 1)
                   for s, c in zip(self.neuron_sum, self.neuron_count)]
        return heads, neurons


def collect(model: nn.Module, loader: Iterable, shape: VitShape, *, blocks: Sequence[int] = (),
            max_images: int = SCORE_IMAGES, feature_dtype: torch.dtype = torch.float16,
            amp: bool | None = None,
            statistics: bool = True, output: str = "softmax") -> Collected:
    """One pass over ``loader``: features of ``blocks`` and, with ``statistics``, predictions,
    labels and mean |activation| of every block.

    Args:
        model: a model of a supported family (:func:`vitprune.adapters.check_prunable`); not
            modified.
        loader: yields image batches (B, C, H, W) or (images, labels) pairs; re-iterable.
        shape: ``vit_shape(model)``.
        blocks: blocks whose Gram-ready features to keep.
        max_images: use at most this many images (the first ones the loader yields).
        feature_dtype: storage dtype of the features (float16 halves memory; scoring upcasts).
        amp: bf16 autocast of the forward (default: on CUDA only).
        statistics: also gather predictions, labels and running sums (needs the full forward);
            without it the forward stops after the last block in ``blocks``.

    Returns:
        :class:`Collected`.

    Raises:
        DataError: the loader yields no images or malformed batches.
    """
    parts, run = _parts(model), logits_module(model)  # once, not per batch
    if output == "features":
        adapter = adapter_for(model)
        run = lambda images: adapter.features(model, images).flatten(1)  # noqa: E731
    elif output != "softmax":
        raise ScoringError(f"output must be softmax or features, got {output!r}")
    blocks = tuple(sorted(set(blocks)))
    if not statistics and not blocks:
        raise ScoringError("collect() with statistics=False needs at least one block to record")
    stop = None if statistics else blocks[-1]
    rec = _Recorder(shape, blocks, statistics, feature_dtype, stop)
    device = next(model.parameters()).device
    probs, labels, n, handles, fingerprint = [], [], 0, [], 0.0
    try:
        for i, p in enumerate(parts):
            handles.append(p.proj.register_forward_pre_hook(rec.proj_hook(i)))
            handles.append(p.mlp_out.register_forward_pre_hook(rec.hidden_hook(i)))
        # bf16 autocast on CUDA (features are stored in feature_dtype and the HSIC arithmetic
        # upcasts to float32, so only the forward runs in bf16)
        with eval_mode(model), torch.no_grad(), autocast(device, amp):
            for images, y in _limited(loader, max_images, device):
                rec.batch = images.shape[0]
                try:
                    logits = run(images)
                except _StopForward:
                    logits = None
                if logits is not None:
                    probs.append(logits.float() if output == "features"
                                 else logits.float().softmax(dim=-1))
                    labels.append(y)
                fingerprint += _checksum(images, n)
                n += images.shape[0]
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise DataError("the calibration loader yielded no images; give it a non-empty dataset")
    out = Collected(n=n, features=rec.features(), fingerprint=fingerprint)
    if statistics:
        out.probs = torch.cat(probs)
        out.labels = None if any(y is None for y in labels) else torch.cat(labels).long()
        out.head_abs, out.neuron_abs = rec.means()
    return out


def _parts(model: nn.Module) -> list[BlockParts]:
    """Each block's attention output projection and second MLP layer, whose inputs carry the
    head and neuron features (the family's adapter says where they are)."""
    adapter = adapter_for(model)
    adapter.check(model)
    return [adapter.parts(b) for b in adapter.blocks(model)]


def per_image(x: torch.Tensor, batch: int) -> torch.Tensor:
    """A layer input as (images, tokens, channels): windowed attention (Swin) runs on
    (images * windows, window tokens, channels), windows of one image consecutive."""
    return x if x.shape[0] == batch else x.reshape(batch, -1, x.shape[-1])


def _checksum(images: torch.Tensor, offset: int) -> float:
    """Sum of each image's pixel sum times its position (1-based) in the stream."""
    pos = torch.arange(offset + 1, offset + 1 + images.shape[0], device=images.device)
    return float((images.double().flatten(1).sum(dim=1) * pos).sum())


def collect_taylor(model: nn.Module, loader: Iterable, shape: VitShape, *,
                   max_images: int = SCORE_IMAGES) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """First-order Taylor scores: per image ``|sum over tokens (and channels) of a * dCE/da|``,
    averaged over images, for each head (its ``proj`` input channels) and neuron (its output layer's input).

    That sum is the first-order change of the image's loss when the component is zeroed.
    Gradients come from ``torch.autograd.grad`` with respect to the captured activations only,
    so no parameter's ``.grad`` is written; the input is made to require grad so frozen
    parameters work too.

    Returns:
        (per block (H,) head scores, per block (D,) neuron scores), float32.

    Raises:
        DataError: the loader yields no labels, or no images.
    """
    parts, run = _parts(model), logits_module(model)  # once, not per batch
    captured: dict[tuple[str, int], torch.Tensor] = {}
    heads = [torch.zeros(b.heads) for b in shape.blocks]
    neurons = [torch.zeros(b.mlp_hidden) for b in shape.blocks]
    device, n, handles = next(model.parameters()).device, 0, []

    def keep(key: tuple[str, int]):
        def hook(_module: nn.Module, args: tuple) -> None:
            captured[key] = args[0]
        return hook

    try:
        for i, p in enumerate(parts):
            handles.append(p.proj.register_forward_pre_hook(keep(("head", i))))
            handles.append(p.mlp_out.register_forward_pre_hook(keep(("neuron", i))))
        with eval_mode(model), torch.enable_grad():
            for images, y in _limited(loader, max_images, device):
                if y is None:
                    raise DataError(
                        "the Taylor criterion needs labels: the loader yields images only")
                captured.clear()
                with autocast(device):
                    logits = run(images.detach().requires_grad_(True)).float()
                # sum, not mean: each image's activations get that image's own loss gradient
                loss = F.cross_entropy(logits, y.long(), reduction="sum")
                keys = list(captured)
                grads = dict(zip(keys, torch.autograd.grad(loss, [captured[k] for k in keys])))
                _add_taylor(shape, captured, grads, heads, neurons, images.shape[0])
                n += images.shape[0]
    finally:
        for h in handles:
            h.remove()
        captured.clear()
    if n == 0:
        raise DataError("the calibration loader yielded no images; give it a non-empty dataset")
    return [s / n for s in heads], [s / n for s in neurons]


def collect_weight_taylor(model: nn.Module, loader: Iterable, *,
                          max_images: int = SCORE_IMAGES) -> dict[nn.Linear, torch.Tensor]:
    """``|w * dCE/dw|`` for every weight of the layers head and neuron pruning slice: the
    gradient is the summed cross-entropy's over the calibration images (one gradient for the
    whole set, as group-level Taylor pruning takes it), so a weight whose contributions cancel
    across images scores low.

    Gradients come from ``torch.autograd.grad`` (no parameter's ``.grad`` is written), summed
    batch by batch.

    Returns:
        per layer, (out, in) float64 CPU scores.

    Raises:
        DataError: the loader yields no labels, or no images.
    """
    parts, run = _parts(model), logits_module(model)
    layers = list(dict.fromkeys(lin for p in parts for lin in (*p.qkv, p.proj, *p.mlp_in,
                                                               p.mlp_out)))
    grads = [torch.zeros_like(lin.weight, dtype=torch.float64) for lin in layers]
    device, n = next(model.parameters()).device, 0
    with eval_mode(model), torch.enable_grad():
        for images, y in _limited(loader, max_images, device):
            if y is None:
                raise DataError(
                    "the group-Taylor criterion needs labels: the loader yields images only")
            with autocast(device):
                logits = run(images).float()
            loss = F.cross_entropy(logits, y.long(), reduction="sum")
            for total, g in zip(grads, torch.autograd.grad(loss, [lin.weight for lin in layers])):
                total += g.double()
            n += images.shape[0]
    if n == 0:
        raise DataError("the calibration loader yielded no images; give it a non-empty dataset")
    return {lin: (lin.weight.detach().double() * g).abs().cpu() for lin, g in zip(layers, grads)}


def _add_taylor(shape: VitShape, acts: dict, grads: dict, heads: list[torch.Tensor],
                neurons: list[torch.Tensor], batch: int) -> None:
    """Add one batch's per-image |sum a * g| to the running sums."""
    for i, b in enumerate(shape.blocks):
        a, g = acts[("head", i)].detach(), grads[("head", i)]
        prod = per_image(a * g, batch)  # (B, N, h*d)
        prod = prod.reshape(prod.shape[0], prod.shape[1], b.heads, b.head_dim)
        heads[i] += prod.sum(dim=(1, 3)).abs().sum(dim=0).float().cpu()  # (h,)
        a, g = acts[("neuron", i)].detach(), grads[("neuron", i)]
        neurons[i] += per_image(a * g, batch).sum(dim=1).abs().sum(dim=0).float().cpu()  # (D,)
