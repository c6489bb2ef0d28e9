"""The adapter interface: what vitprune needs from a family of ViT models.

Scoring, masking, surgery, token stages, cost and save/load work on any model through the
:class:`Adapter` registered for its family (:func:`vitprune.adapters.adapter_for`). An adapter is
the only code that reads the family's attributes; everything above it sees

* the model's :class:`~vitprune.cost.VitShape` (:meth:`Adapter.shape`);
* its transformer blocks, in order (:meth:`Adapter.blocks`, :meth:`Adapter.set_block`);
* in each block, the linear layers that pruning slices (:class:`BlockParts`);
* a token-selecting replacement for a block (:meth:`Adapter.token_block`);
* how to build a model of the family from a JSON-ready :class:`ArchSpec` record.

A new family is one module under ``vitprune/adapters/`` holding an :class:`Adapter` subclass
plus one :func:`vitprune.adapters.register` call in ``vitprune/adapters/__init__.py``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..cost import VitShape
from ..errors import ModelError
from ..plan import TokenStage

#: the record of a model directory saved by vitprune (its architecture, plan and checksum)
MODEL_CONFIG = "model.json"
#: the attribute a saved data config is attached to, on a model of any family
DATA_CONFIG_ATTR = "vitprune_data_config"


@dataclass(frozen=True)
class ArchSpec:
    """A buildable architecture, JSON-ready: a family's model name plus keyword arguments.

    ``name`` is what a family's :meth:`Adapter.knows` accepts (a timm name, ``t2t_vit_14``,
    ``transformers`` ...); ``kwargs`` are constructor arguments (for Hugging Face: the config).
    It is what vitprune saves beside weights, so that a model is rebuilt from JSON alone.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ModelError(f"architecture record {d!r} has no model name; the model.json is "
                             "corrupt")
        kwargs = d.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ModelError(f"architecture kwargs must be a JSON object, got {kwargs!r}")
        return cls(d["name"], kwargs)


@dataclass(frozen=True)
class BlockParts:
    """The layers of one block that head and neuron pruning slice.

    Attributes:
        qkv: the layers that compute queries, keys and values: one fused layer whose outputs
            are laid out (3, heads, head_dim) (timm), or three layers (q, k, v) whose outputs
            are each (heads, head_dim) (Hugging Face).
        proj: the attention's output projection; its inputs are (heads, head_dim).
        mlp_in: the MLP's layers whose outputs are its hidden units, pruned by rows together:
            one (``fc1``), or two for a gated MLP (SwiGLU's gate and value).
        mlp_out: the MLP's output layer; its inputs are the hidden units (what masking and the
            neuron features see).
        mlp_in_chunks: how many runs of the hidden units each ``mlp_in`` layer's outputs hold,
            one after the other: 1, or 2 for a packed gated MLP (timm's ``GluMlp``: gate and
            value rows in one ``fc1``, unit ``j`` at rows ``j`` and ``H + j``).
        head_vectors: (module, attribute) of further tensors along the (heads, head_dim) axis,
            sliced with the heads (EVA's separate q, k and v biases beside a bias-free ``qkv``).
        attn_norm: a LayerNorm over the (heads, head_dim) axis before ``proj`` (EVA's
            ``scale_attn_inner``), or None.
        mlp_norm: a LayerNorm over the hidden units before ``mlp_out`` (EVA-02's SwiGLU
            ``scale_mlp``), or None. Pruning slices a norm's weight and bias; masked execution
            computes its statistics over the kept units only, as the pruned norm does.
    """

    qkv: tuple[nn.Linear, ...]
    proj: nn.Linear
    mlp_in: tuple[nn.Linear, ...]
    mlp_out: nn.Linear
    mlp_in_chunks: int = 1
    head_vectors: tuple[tuple[nn.Module, str], ...] = ()
    attn_norm: nn.LayerNorm | None = None
    mlp_norm: nn.LayerNorm | None = None

    def mlp_in_weights(self) -> list[torch.Tensor]:
        """The (hidden, C) weight of each matrix that computes the hidden units (a packed
        gated layer gives two)."""
        return [w for lin in self.mlp_in for w in lin.weight.chunk(self.mlp_in_chunks, dim=0)]


class Adapter(ABC):
    """One family of ViT models (timm ``VisionTransformer``, T2T-ViT, Hugging Face ViT/DeiT).

    Subclasses implement the abstract methods; the block-level slicing is shared
    (:meth:`prune_block`) and needs only :meth:`parts` and :meth:`set_heads`.
    """

    #: short family name used in messages and records ("timm", "t2t", "hf")
    family: str = ""
    #: what the family accepts, for error messages ("timm VisionTransformer names ...")
    describes: str = ""
    #: the timm modules whose registered names this family builds (``("vision_transformer",
    #: "deit")``); timm says which module defines a name, so a family registered for ``eva``
    #: gets ``eva02_*`` whatever was registered before it
    timm_modules: tuple[str, ...] = ()

    # ---- recognising and building models -------------------------------------------------
    @abstractmethod
    def handles(self, model: nn.Module) -> bool:
        """Whether ``model`` belongs to this family (an ``isinstance`` test, never a name)."""

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a model name (an :attr:`ArchSpec.name`) this family builds: by
        default, a timm name defined in one of :attr:`timm_modules`."""
        return bool(self.timm_modules) and timm_module(name) in self.timm_modules

    @abstractmethod
    def build(self, arch: ArchSpec, pretrained: bool = False) -> nn.Module:
        """A dense model of ``arch`` with random weights (or published ones with
        ``pretrained``, where the family offers them).

        Raises:
            ModelError: the arguments do not fit, or published weights cannot be had.
        """

    def names(self) -> list[str]:
        """Names to suggest in an 'unknown model' message (by default every timm name of
        :attr:`timm_modules`)."""
        if not self.timm_modules:
            return []
        import timm

        return timm.list_models(module=list(self.timm_modules))

    def arch(self, model: nn.Module) -> ArchSpec | None:
        """The architecture record of ``model`` read from the model alone (a Hugging Face model
        carries its config); None where only the name it was built from says it."""
        return None

    def from_directory(self, path: Path) -> tuple[nn.Module, ArchSpec] | None:
        """A model saved in the family's own directory layout (e.g. a Hugging Face
        ``save_pretrained`` directory), with its architecture record; None: not this family's.
        """
        return None

    def checkpoint_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]
                              ) -> dict[str, torch.Tensor]:
        """``state_dict`` from a checkpoint file, with keys as ``model`` names them (a family
        whose published checkpoints use other names maps them here)."""
        return state_dict

    # ---- reading a model -----------------------------------------------------------------
    @abstractmethod
    def check(self, model: nn.Module) -> None:
        """Raise :class:`~vitprune.errors.ModelError` unless every block can be pruned."""

    @abstractmethod
    def shape(self, model: nn.Module) -> VitShape:
        """The model's shape as built (dense or pruned, token stages included)."""

    @abstractmethod
    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        """The transformer blocks, in order."""

    @abstractmethod
    def set_block(self, model: nn.Module, index: int, block: nn.Module) -> None:
        """Put ``block`` at position ``index`` (token stages swap blocks in and out)."""

    @abstractmethod
    def parts(self, block: nn.Module) -> BlockParts:
        """The linear layers of ``block`` that pruning slices."""

    @abstractmethod
    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""

    def logits_module(self, model: nn.Module) -> nn.Module:
        """A module whose ``forward(images)`` returns the (B, classes) logits tensor: ``model``
        itself where its forward does (timm), else a thin wrapper sharing its parameters (a
        Hugging Face model returns an output object). Used to run, train, time and export."""
        return model

    def classes(self, model: nn.Module) -> int:
        """Classes ``model`` predicts (0: a backbone without a classifier), read without
        walking its blocks (timm's ``num_classes``; else from :meth:`shape`)."""
        n = getattr(model, "num_classes", None)
        return n if isinstance(n, int) and not isinstance(n, bool) else self.shape(model).num_classes

    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The model's output features for ``images``: (B, D) pooled embeddings or (B, N, D)
        per-token features, what a backbone hands on (the search's feature objective compares
        them with the dense model's). By default timm's pooled pre-logits features
        (``forward_head(forward_features(x), pre_logits=True)``: DINOv2's, CLIP's and SigLIP's
        embeddings, a classifier's input).

        Raises:
            ModelError: the family does not expose features.
        """
        if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
            raise ModelError(f"the {self.family} family does not expose output features; use "
                             "the top1 or kl objective")
        return model.forward_head(model.forward_features(images), pre_logits=True)

    def data_config(self, model: nn.Module) -> dict | None:
        """How images must be prepared (mean, std, interpolation, crop_pct, crop_mode,
        input_size), JSON-ready; None: the model does not say. A config attached by
        :meth:`set_data_config` (a saved model's) wins over the family's own
        (:meth:`native_data_config`)."""
        saved = getattr(model, DATA_CONFIG_ATTR, None)
        return dict(saved) if saved is not None else self.native_data_config(model)

    def native_data_config(self, model: nn.Module) -> dict | None:
        """The preprocessing the family itself records for ``model`` (timm's
        ``pretrained_cfg``, a paper's evaluation recipe); None: it records none."""
        return None

    def set_data_config(self, model: nn.Module, config: dict) -> None:
        """Attach a saved data config to ``model`` so :meth:`data_config` returns it: one
        attribute, the same for every family."""
        setattr(model, DATA_CONFIG_ATTR, dict(config))

    def save_files(self, out: Path, model: nn.Module) -> None:
        """Write, into model directory ``out``, what the family's own library needs to load
        ``model`` without vitprune (called by :func:`vitprune.io.model_dir.save` before it
        writes ``model.json``). None by default: a timm model loads with ``vitprune.load``,
        or runs without vitprune as its ONNX export."""
        return None

    # ---- changing a model ----------------------------------------------------------------
    @abstractmethod
    def set_heads(self, block: nn.Module, heads: int) -> None:
        """Tell ``block``'s attention it now has ``heads`` heads (its layers are sliced)."""

    @abstractmethod
    def token_block(self, model: nn.Module, index: int, stage: TokenStage) -> nn.Module:
        """A block that runs block ``index`` of ``model`` (same submodules, same state_dict
        keys) and selects tokens after its attention as ``stage`` says.

        The returned module has a ``token_stage`` attribute (:func:`token_stage` reads it) and a
        non-persistent ``head_weights`` buffer (None, or (heads,) weights of the heads in the
        token score; masked execution sets it).
        """

    def halves(self, block: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor],
                                                Callable[[torch.Tensor], torch.Tensor]]:
        """``block``'s two residual halves as functions of the (B, N, C) tokens: attention
        (norm, attention, residual) and MLP (norm, MLP, residual). A latency table times them
        apart (:mod:`vitprune.profile`).

        Raises:
            ModelError: the family does not offer them (no latency table for it).
        """
        raise ModelError(f"the {self.family} family does not say how to time a block's halves; "
                         "no latency table can be built for it (use MACs budgets)")

    def after_token_stages(self, model: nn.Module, stages: Sequence[int]) -> None:
        """Adjust a model that selects tokens at blocks ``stages`` (e.g. refuse helpers that
        assume the patch grid). Called once by surgery; nothing to do by default."""
        return None

    #: the class a name of this family is built as (its constructor's arguments are what
    #: ``--model-args`` may set); None: the family takes no constructor arguments
    constructor: ClassVar[type | None] = None

    def check_args(self, name: str, args: dict[str, Any]) -> None:
        """Refuse ``--model-args`` the family's constructor cannot take, before anything is
        built: unknown names, values of the wrong type, sizes that are not positive.

        Raises:
            ModelError: naming the argument and what it takes.
        """
        if not args:
            return
        if self.constructor is None:
            raise ModelError(f"{name} takes no --model-args")
        check_constructor_args(self.constructor, name, args)

    @property
    def can_drop(self) -> bool:
        """Whether the family offers :meth:`drop_half` (depth pruning)."""
        return type(self).drop_half is not Adapter.drop_half

    def drop_half(self, block: nn.Module, half: str) -> None:
        """Drop ``block``'s attention (``half="attention"``) or MLP (``"mlp"``): its residual
        branch becomes its output projection's bias alone, which is what keeping no head or no
        neuron computes (depth pruning).

        Raises:
            ModelError: the family does not offer it.
        """
        raise ModelError(f"the {self.family} family cannot drop a block's {half}: keep at least "
                         "one head and one neuron per block (search without --depth)")

    def prune_block(self, block: nn.Module, heads: Sequence[int] | None,
                    neurons: Sequence[int] | None, head_dim: int) -> None:
        """Keep only ``heads`` and ``neurons`` of ``block``, in place (None: keep all; an empty
        list drops that half, see :meth:`drop_half`)."""
        drop = [half for half, ids in (("attention", heads), ("mlp", neurons))
                if ids is not None and len(ids) == 0]
        heads = None if "attention" in drop else heads
        neurons = None if "mlp" in drop else neurons
        if heads is not None or neurons is not None:
            p = self.parts(block)
            if heads is not None:
                ch = head_channels(heads, head_dim, p.proj.weight.device)
                if len(p.qkv) == 1:
                    per = p.qkv[0].out_features // 3
                    slice_linear(p.qkv[0],
                                 rows=torch.cat([ch + part * per for part in range(3)]))
                else:
                    for lin in p.qkv:
                        slice_linear(lin, rows=ch)
                for module, name in p.head_vectors:
                    slice_tensor(module, name, ch)
                if p.attn_norm is not None:
                    slice_norm(p.attn_norm, ch)
                slice_linear(p.proj, cols=ch)
                self.set_heads(block, len(heads))
            if neurons is not None:
                idx = torch.as_tensor(neurons, dtype=torch.long, device=p.mlp_out.weight.device)
                for lin in p.mlp_in:
                    per = lin.out_features // p.mlp_in_chunks
                    slice_linear(lin, rows=torch.cat([idx + k * per
                                                      for k in range(p.mlp_in_chunks)]))
                if p.mlp_norm is not None:
                    slice_norm(p.mlp_norm, idx)
                slice_linear(p.mlp_out, cols=idx)
        for half in drop:
            self.drop_half(block, half)


class DroppedHalf(nn.Module):
    """What is left of a dropped attention or MLP: its output projection's bias, added to every
    token (the branch's input is not read, so its norm goes too).

    Attributes:
        bias: (C,) the output projection's bias (zeros if it had none).
        head_dim: for a dropped attention, the width its heads had (the model's shape keeps it).
    """

    def __init__(self, bias: torch.Tensor, head_dim: int = 0) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """(B, N, C) -> (B, N, C): the bias on every token."""
        return self.bias.to(x.dtype).expand_as(x)


class Features(nn.Module):
    """A model without a classifier as a module whose forward returns its output features
    (:meth:`Adapter.features`: pooled (B, D) or per-token (B, N, D)). It holds the model itself:
    parameters, train/eval mode and devices are shared."""

    def __init__(self, model: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter  # not a module: a plain attribute

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> the model's output features."""
        return self.adapter.features(self.model, images)


def token_stage(block: nn.Module) -> TokenStage | None:
    """The token stage a block runs (its ``token_stage`` attribute), or None."""
    stage = getattr(block, "token_stage", None)
    return stage if isinstance(stage, TokenStage) else None


def head_channels(heads: Sequence[int], head_dim: int,
                  device: torch.device | None = None) -> torch.Tensor:
    """(len(heads) * head_dim,) channel ids of ``heads`` in a (heads * head_dim) feature axis."""
    h = torch.as_tensor(heads, dtype=torch.long, device=device)
    return (h[:, None] * head_dim + torch.arange(head_dim, device=device)).flatten()


def slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None,
                 cols: torch.Tensor | None = None) -> None:
    """Keep only ``rows`` (outputs) and ``cols`` (inputs) of ``lin``, in place: the module
    object stays, so every reference to it (a parent's attribute, a hook) still holds."""
    w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    if rows is not None:
        w = w.index_select(0, rows)
        b = None if b is None else b.index_select(0, rows)
    if cols is not None:
        w = w.index_select(1, cols)
    lin.weight = nn.Parameter(w.clone(), requires_grad=lin.weight.requires_grad)
    if b is not None:
        lin.bias = nn.Parameter(b.clone(), requires_grad=lin.bias.requires_grad)
    lin.out_features, lin.in_features = w.shape



def slice_tensor(module: nn.Module, name: str, idx: torch.Tensor, dim: int = 0) -> None:
    """Keep entries ``idx`` along ``dim`` of ``module``'s parameter or buffer ``name`` (None:
    nothing to keep)."""
    t = getattr(module, name)
    if t is None:
        return
    kept = t.detach().index_select(dim, idx).clone()
    setattr(module, name, nn.Parameter(kept, requires_grad=t.requires_grad)
            if isinstance(t, nn.Parameter) else kept)


def slice_norm(norm: nn.LayerNorm, idx: torch.Tensor) -> None:
    """Keep units ``idx`` of a LayerNorm over one axis: its weight, bias and width."""
    for name in ("weight", "bias"):
        slice_tensor(norm, name, idx)
    norm.normalized_shape = (len(idx),)


# constructor arguments that are sizes or counts: they must be positive (num_classes may be 0:
# a backbone without a classifier, e.g. DINOv2's or CLIP's image encoder)
POSITIVE_ARGS = ("depth", "num_heads", "embed_dim", "patch_size", "img_size", "in_chans",
                 "mlp_ratio")
NON_NEGATIVE_ARGS = ("num_classes",)
CHOICES = {"global_pool": ("", "avg", "avgmax", "max", "token", "map")}


def check_constructor_args(cls: type, name: str, args: dict[str, Any]) -> None:
    """``args`` checked against ``cls.__init__``'s signature: known names, the type of each
    default (an int where an int is, a bool where a bool is, ...), positive sizes, choices."""
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
              if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    for key, value in args.items():
        if key not in params:
            close = difflib.get_close_matches(key, params, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ModelError(f"--model-args {key}={value!r}: {name} ({cls.__name__}) has no "
                             f"argument {key!r}{hint}")
        default = params[key].default
        if not _fits(value, default):
            raise ModelError(f"--model-args {key}={value!r}: {cls.__name__} takes "
                             f"{type(default).__name__} values for {key} (its default is "
                             f"{default!r})")
        sizes = value if isinstance(value, (list, tuple)) else [value]
        low = 0 if key in NON_NEGATIVE_ARGS else 1e-12 if key in POSITIVE_ARGS else None
        if low is not None and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       and v >= low for v in sizes):
            raise ModelError(f"--model-args {key}={value!r}: must be "
                             + ("0 (no classifier) or more" if low == 0 else "positive"))
        if key in CHOICES and value not in CHOICES[key]:
            raise ModelError(f"--model-args {key}={value!r}: must be one of "
                             f"{', '.join(map(repr, CHOICES[key]))}")


def _fits(value: Any, default: Any) -> bool:
    """Whether ``value`` is of the kind ``default`` is (None and callables accept anything)."""
    if default is None or default is inspect.Parameter.empty or callable(default):
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value))
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list, int))
    if isinstance(default, str):
        return isinstance(value, str)
    return True


@functools.lru_cache(maxsize=256)
def timm_module(name: str) -> str | None:
    """The timm module that registers the model ``name`` (``"vision_transformer"``,
    ``"eva"``, ``"swin_transformer"`` ...); None: timm has no such model."""
    import timm
    from timm.models import get_arch_name

    arch = get_arch_name(name)  # "vit_small_patch16_224.augreg_in21k" -> its architecture
    if not timm.is_model(arch):
        return None
    for module in timm.list_modules():
        if timm.models.is_model_in_modules(arch, [module]):
            return module
    return None
