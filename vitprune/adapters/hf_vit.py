"""Hugging Face ``transformers`` ViT and DeiT: ``ViTForImageClassification``,
``DeiTForImageClassification`` and ``DeiTForImageClassificationWithTeacher`` (transformers 5.23
layout: ``<base>.layers[i]`` with ``attention.{q,k,v,o}_proj`` and ``mlp.{fc1,fc2}``).

transformers is optional (``pip install 'vitprune[hf]'``): it is imported only when a model of
this family is built, loaded from a directory or handed over, never to answer :meth:`handles`
for a model of another family.

Per-layer widths: transformers' attention reshapes q, k and v to ``(B, N, -1, head_dim)`` and
merges heads with ``reshape(B, N, -1)``, so the head count comes from the weights alone. A layer
whose projections :meth:`Adapter.prune_block` sliced in place runs with transformers' own,
unchanged forward; :meth:`HFAdapter.set_heads` keeps the attention's ``num_attention_heads`` in
step for readers. The shared ``config`` keeps the dense sizes: it is the architecture record
that a pruned model is rebuilt from (dense model from the config, then vitprune's plan), so a
pruned model must be saved by vitprune, not by ``save_pretrained`` (whose config.json would not
fit the weights).
"""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from .. import fsutil
from ..cost import BlockShape, VitShape
from ..errors import DependencyError, ModelError
from ..plan import TokenStage, apply_token_stages
from . import hf_remote
from .base import MODEL_CONFIG, Adapter, ArchSpec, BlockParts, token_stage
from .tokens import TokenSelecting, attend

#: :attr:`ArchSpec.name` of every model of this family; the config travels in its kwargs
ARCH_NAME = "transformers"
#: the model classes vitprune prunes, as ``architectures`` in a config.json names them
SUPPORTED = ("ViTForImageClassification", "DeiTForImageClassification",
             "DeiTForImageClassificationWithTeacher")
EXTRA = "vitprune[hf]"
#: weights of a save_pretrained directory, one file or sharded (transformers reads either)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
#: model instance attribute holding the preprocessing read from preprocessor_config.json
# The parts of a ViTLayer / DeiTLayer, adopted under the same names so state_dict keys stay.
LAYER_PARTS = ("attention", "layernorm_before", "layernorm_after", "mlp", "dropout")
# timm-style constructor arguments (what vitprune passes to fit a dataset) -> config fields
_CONFIG_ALIASES = {"num_classes": "num_labels", "img_size": "image_size",
                   "in_chans": "num_channels"}
# prefix of the mask-free twins of transformers' attention implementations (after_token_stages)
MASKLESS = "vitprune_"
# PIL resampling filters as image processors save them (``"resample": 3``)
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _supported_text() -> str:
    return ", ".join(SUPPORTED)


def _transformers() -> Any:
    """The ``transformers`` module, or :class:`DependencyError` saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise DependencyError(
            f"Hugging Face models ({_supported_text()}) need transformers: pip install "
            f"'{EXTRA}'") from None
    return transformers


def _classes() -> dict[str, tuple[type[nn.Module], type]]:
    """Supported class name -> (model class, config class)."""
    t = _transformers()
    return {
        "ViTForImageClassification": (t.ViTForImageClassification, t.ViTConfig),
        "DeiTForImageClassification": (t.DeiTForImageClassification, t.DeiTConfig),
        "DeiTForImageClassificationWithTeacher": (t.DeiTForImageClassificationWithTeacher,
                                                  t.DeiTConfig),
    }


def _block_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(layer, attention, MLP) classes of ViT and DeiT, as transformers 5.23 builds them."""
    from transformers.models.deit import modeling_deit as deit
    from transformers.models.vit import modeling_vit as vit

    return ((vit.ViTLayer, deit.DeiTLayer), (vit.ViTAttention, deit.DeiTAttention),
            (vit.ViTMLP, deit.DeiTMLP))


def _architecture(config: dict[str, Any], where: str) -> str:
    """The supported class ``config`` (a config.json as a dict) names.

    Raises:
        ModelError: it names another architecture, none, or HF-pruned heads.
    """
    archs = config.get("architectures") or []
    archs = [archs] if isinstance(archs, str) else list(archs)
    kind = archs[0] if archs else f"model_type {config.get('model_type')!r}"
    if archs and archs[0] in {m for _, m in hf_remote.REMOTE_CLASS.values()}:
        raise ModelError(
            f"{where} describes a model pruned by vitprune, whose {MODEL_CONFIG} is missing: load "
            "it with transformers (from_pretrained(dir, trust_remote_code=True)), or restore "
            f"{MODEL_CONFIG} to load it with vitprune")
    if len(archs) != 1 or archs[0] not in SUPPORTED:
        raise ModelError(
            f"{where} describes {kind}, which vitprune cannot prune; supported Hugging Face "
            f"models are {_supported_text()} (its config.json must name one in 'architectures')")
    _refuse_pruned_heads(config.get("pruned_heads"), where)
    return archs[0]


def _refuse_pruned_heads(pruned: Any, where: str) -> None:
    # transformers 5 has no prune_heads and builds every layer at the config's width, so
    # weights pruned by transformers 4's prune_heads would not fit the model it builds
    if pruned:
        raise ModelError(
            f"{where} lists pruned_heads (pruned by transformers 4's prune_heads), which "
            "transformers 5 cannot rebuild; start from the dense model and prune with vitprune")


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' loading progress bars off for the call, as they were afterwards."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is not readable JSON ({exc}); re-save the model") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds no JSON object; re-save the model")
    return data


def config_record(model: nn.Module) -> dict[str, Any]:
    """``model.config`` as a JSON-ready dict naming the model's class in ``architectures``."""
    record = json.loads(model.config.to_json_string(use_diff=False))
    record["architectures"] = [type(model).__name__]
    record.pop("_name_or_path", None)  # where it was loaded from: not part of the architecture
    return record


def attention(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ViT/DeiT attention forward that also returns ``qkv``, which token
    selection scores tokens by.

    It computes what ``attn(x)[0]`` computes (a test holds it to transformers' own forward):
    the eager formula where the model's config asks for eager attention, else PyTorch's SDPA.

    Args:
        attn: a ``ViTAttention`` or ``DeiTAttention`` (any kept head count).
        x: (B, N, C) normalised tokens.

    Returns:
        ((B, N, C) attention output, (B, N, 3 * heads * head_dim) q, k and v outputs laid out
        (3, heads, head_dim) as :func:`~vitprune.adapters.tokens.cls_attention` reads them).
    """
    B, N, _ = x.shape
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)  # (B, N, h*d) each
    qkv = torch.cat([q, k, v], dim=-1)
    q, k, v = (t.view(B, N, -1, attn.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, h, N, d)
    drop = attn.attention_dropout if attn.training else 0.0
    y = attend(q, k, v, attn.scaling, drop, explicit=_is_eager(attn.config._attn_implementation),
               softmax_float32=True)
    return attn.o_proj(y.transpose(1, 2).reshape(B, N, -1)), qkv


def _is_eager(impl: str | None) -> bool:
    return (impl or "").removeprefix(MASKLESS) == "eager"


def maskless_attention(impl: str | None) -> str:
    """The name of an attention implementation that runs ``impl``'s function but for which
    transformers builds no attention mask, registered with transformers' ``AttentionInterface``.

    transformers builds masks only for implementations registered with its mask interface;
    this twin is registered for attention alone (process-wide, once per name).
    """
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.vit.modeling_vit import eager_attention_forward

    impl = impl or "eager"
    if impl.startswith(MASKLESS):
        return impl
    AttentionInterface.register(MASKLESS + impl,
                                ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager_attention_forward))
    return MASKLESS + impl


def _heads(attn: nn.Module) -> int:
    return attn.q_proj.out_features // attn.head_dim


class HFTokenBlock(TokenSelecting):
    """A ``ViTLayer`` / ``DeiTLayer`` that selects tokens between its attention and its MLP.

    It adopts the layer's submodules (same objects, same names: ``...layers.3.attention.q_proj``
    keeps its key) and runs the layer's two residual lines with :meth:`select` in between. Like
    the layer it returns a (B, N', C) tensor, N' = prefix + kept (+ 1 fused) tokens.

    Not seen by transformers' ``output_hidden_states`` / ``output_attentions`` capture, which
    hooks ``ViTLayer`` / ``ViTAttention`` instances: those tuples skip this layer.
    """

    def __init__(self, layer: nn.Module, stage: TokenStage, num_prefix: int) -> None:
        super().__init__(stage, num_prefix, has_class_token=True)
        self.adopt(layer, LAYER_PARTS)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_kwargs: Any) -> torch.Tensor:
        """(B, N, C) -> (B, N', C)."""
        if attention_mask is not None:
            raise ModelError(
                "a token-selecting layer cannot take an attention mask: the mask would no longer "
                "match the tokens; run the model without attention_mask")
        x = hidden_states
        y, qkv = attention(self.attention, self.layernorm_before(x))
        x = x + self.dropout(y)
        a = self.attention
        x = self.select(x, qkv, _heads(a), a.head_dim, a.scaling)
        return x + self.dropout(self.mlp(self.layernorm_after(x)))


class HFLogits(nn.Module):
    """A Hugging Face classifier whose forward returns the logits tensor instead of an output
    object (for DeiT with teacher, transformers' mean of the two heads). It holds the model
    itself: parameters, train/eval mode and devices are shared."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, classes) logits."""
        return self.model(pixel_values=images, return_dict=True).logits


class HFAdapter(Adapter):
    """Hugging Face ``ViTForImageClassification``, ``DeiTForImageClassification`` and
    ``DeiTForImageClassificationWithTeacher``, loaded from a ``save_pretrained`` directory.

    The architecture record is ``ArchSpec("transformers", {"config": <config.json dict>})``;
    :meth:`build` makes the dense model of that config with random weights.
    """

    family = "hf"
    describes = (f"a Hugging Face save_pretrained directory ({_supported_text()}; needs "
                 f"{EXTRA})")

    # ---- recognising and building models -------------------------------------------------
    def handles(self, model: nn.Module) -> bool:
        if sys.modules.get("transformers") is None:  # no model can be one: do not import it
            return False
        return isinstance(model, tuple(cls for cls, _ in _classes().values()))

    def knows(self, name: str) -> bool:
        return name == ARCH_NAME

    def arch(self, model: nn.Module) -> ArchSpec:
        """The architecture record of ``model`` (its config, class named)."""
        return ArchSpec(ARCH_NAME, {"config": config_record(model)})

    def build(self, arch: ArchSpec, pretrained: bool = False) -> nn.Module:
        """The dense model of ``arch.kwargs["config"]``, random weights.

        Other kwargs change the config: timm's ``num_classes``, ``img_size``, ``in_chans``
        (as ``num_labels``, ``image_size``, ``num_channels``) or any field the config has.
        """
        if pretrained:
            raise ModelError("Hugging Face weights are read from a save_pretrained directory: "
                             "pass the directory as --model DIR (vitprune downloads none)")
        config = arch.kwargs.get("config")
        if not isinstance(config, dict):
            raise ModelError(f"a '{ARCH_NAME}' model is described by its config, which this "
                             "record lacks; pass the save_pretrained directory as --model DIR")
        name = _architecture(config, "the architecture record")
        model_cls, config_cls = _classes()[name]
        cfg = config_cls.from_dict(config)
        for key, value in arch.kwargs.items():
            if key != "config":
                _override(cfg, _CONFIG_ALIASES.get(key, key), value)
        return model_cls(cfg)

    def from_directory(self, path: Path) -> tuple[nn.Module, ArchSpec] | None:
        """A model saved by transformers' ``save_pretrained`` (config.json and weights), in eval
        mode and float32, with the preprocessing of a ``preprocessor_config.json`` beside it.

        Returns:
            (model, its architecture record), or None: no config.json, or one that is not
            transformers' (no ``model_type`` nor ``architectures``, e.g. timm's hub layout).

        Raises:
            ModelError: an architecture other than the supported ones, missing or unfitting
                weights, unreadable files.
            DependencyError: transformers is not installed.
        """
        path = Path(path)
        cfg_path = path / "config.json"
        if not cfg_path.is_file():
            return None
        config = _read_json(cfg_path)
        if "model_type" not in config and "architectures" not in config:
            return None
        name = _architecture(config, str(cfg_path))  # before anything heavy is imported
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ModelError(f"{path} has a config.json but no weights ({', '.join(WEIGHT_FILES)})"
                             "; save the model with save_pretrained")
        model_cls, _ = _classes()[name]
        try:
            with _no_progress_bars():  # vitprune reports its own progress
                model, info = model_cls.from_pretrained(
                    path, local_files_only=True, dtype=torch.float32, output_loading_info=True)
        except pickle.UnpicklingError:  # torch's advice would be to run the file's code
            raise ModelError(f"{path / 'pytorch_model.bin'} holds Python objects besides "
                             "tensors, and vitprune never runs code found in a file; where you "
                             "trust it, re-save the model as model.safetensors "
                             "(save_pretrained(..., safe_serialization=True))") from None
        except SafetensorError as exc:
            raise ModelError(f"{path / WEIGHT_FILES[0]} is damaged or truncated "
                             f"({fsutil.first_line(exc)}); copy it again or re-save the model "
                             "with save_pretrained") from None
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"transformers could not load {path} ({fsutil.first_line(exc)}); "
                             "check that its config.json fits its weights, or re-save the model "
                             "with save_pretrained") from None
        bad = [*info.get("missing_keys", ()), *(k for k, *_ in info.get("mismatched_keys", ()))]
        if bad:
            raise ModelError(f"the weights in {path} do not fit its config.json: "
                             f"{', '.join(sorted(bad)[:5])} missing or of another shape; "
                             "re-save the model with save_pretrained")
        self.check(model)
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            self.set_data_config(model, data_config_of(_read_json(pre), self.input_shape(model)))
        return model.eval(), self.arch(model)

    def save_files(self, out: Path, model: nn.Module) -> None:
        """config.json, preprocessor_config.json and the modeling code that let plain
        transformers load the (pruned) model from ``out`` (:mod:`.hf_remote`)."""
        shape = self.shape(model)
        stages = [{"layer": i, "keep_rate": s.keep_rate, "fuse": s.fuse}
                  for i, b in enumerate(self.blocks(model)) if (s := token_stage(b)) is not None]
        config = hf_remote.remote_config(config_record(model), [b.heads for b in shape.blocks],
                                         [b.mlp_hidden for b in shape.blocks], stages)
        data = self.data_config(model) or default_data_config(self.input_shape(model))
        hf_remote.write(out, config, data)

    # ---- reading a model -----------------------------------------------------------------
    def check(self, model: nn.Module) -> None:
        """Raise :class:`ModelError` unless every layer is a plain ViT/DeiT layer (or vitprune's
        token-selecting one) whose q/k/v/o projections and MLP slice as heads and neurons.

        Refused: other classes (``ViTModel``, ``ViTForMaskedImageModeling``, Swin ...), layers,
        attentions or MLPs of subclasses (their forward may read sizes these slices do not
        update), and configs with transformers 4's ``pruned_heads``.
        """
        if not self.handles(model):
            raise ModelError(f"{type(model).__name__} is not a Hugging Face model vitprune can "
                             f"prune; supported are {_supported_text()}")
        _refuse_pruned_heads(getattr(model.config, "pruned_heads", None), "the model's config")
        layer_types, attn_types, mlp_types = _block_types()
        for i, b in enumerate(self.blocks(model)):
            if type(b) not in layer_types and not isinstance(b, HFTokenBlock):
                raise _unsupported(i, f"layer type {type(b).__name__}")
            attn, mlp = b.attention, b.mlp
            if type(attn) not in attn_types:
                raise _unsupported(i, f"attention type {type(attn).__name__}")
            if type(mlp) not in mlp_types:
                raise _unsupported(i, f"MLP type {type(mlp).__name__}")
            lins = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.fc1, mlp.fc2)
            if not all(type(lin) is nn.Linear for lin in lins):
                raise _unsupported(i, "projections that are not plain nn.Linear (quantized?)")
            width = attn.q_proj.out_features
            if (attn.k_proj.out_features != width or attn.v_proj.out_features != width
                    or attn.o_proj.in_features != width or width % attn.head_dim):
                raise _unsupported(i, "q/k/v/o projections of unequal widths")

    def shape(self, model: nn.Module) -> VitShape:
        self.check(model)  # reading and pruning accept and refuse the same models
        pe = model.base_model.embeddings.patch_embeddings.projection
        blocks = tuple(BlockShape(heads=_heads(b.attention), head_dim=b.attention.head_dim,
                                  mlp_hidden=b.mlp.fc1.out_features) for b in self.blocks(model))
        heads_out = self._classifiers(model)
        shape = VitShape(
            embed_dim=pe.out_channels,
            num_patches=model.base_model.embeddings.patch_embeddings.num_patches,
            num_prefix=self.num_prefix(model),
            patch_macs=pe.in_channels * math.prod(pe.kernel_size),
            num_classes=heads_out[0].out_features if isinstance(heads_out[0], nn.Linear) else 0,
            num_heads_out=len(heads_out),
            blocks=blocks,
            qkv_bias=self.blocks(model)[0].attention.q_proj.bias is not None if blocks else True,
        )
        stages = [s if s.block == i else TokenStage(i, s.keep_rate, s.fuse)
                  for i, b in enumerate(self.blocks(model)) if (s := token_stage(b))]
        return apply_token_stages(shape, stages) if stages else shape

    def _classifiers(self, model: nn.Module) -> tuple[nn.Module, ...]:
        """The classifier(s) on the class (and distillation) token."""
        if hasattr(model, "distillation_classifier"):
            return (model.cls_classifier, model.distillation_classifier)
        return (model.classifier,)

    def classes(self, model: nn.Module) -> int:
        return int(model.config.num_labels)

    def num_prefix(self, model: nn.Module) -> int:
        """1 (class token), or 2 for DeiT (class and distillation tokens, with or without the
        distillation classifier)."""
        dist = getattr(model.base_model.embeddings, "distillation_token", None)
        return 1 if dist is None else 2

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return model.base_model.layers

    def set_block(self, model: nn.Module, index: int, block: nn.Module) -> None:
        model.base_model.layers[index] = block

    def parts(self, block: nn.Module) -> BlockParts:
        a = block.attention
        return BlockParts((a.q_proj, a.k_proj, a.v_proj), a.o_proj, (block.mlp.fc1,), block.mlp.fc2)

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        pe = model.base_model.embeddings.patch_embeddings
        return (pe.num_channels, *pe.image_size)

    def logits_module(self, model: nn.Module) -> nn.Module:
        return HFLogits(model)


    # ---- changing a model ----------------------------------------------------------------
    def set_heads(self, block: nn.Module, heads: int) -> None:
        # the forward takes the head count from the sliced weights (view(..., -1, head_dim));
        # this attribute is only read by code that reports it
        block.attention.num_attention_heads = heads

    def halves(self, block: nn.Module) -> tuple[Any, Any]:
        def attn(x: torch.Tensor) -> torch.Tensor:
            return x + block.dropout(attention(block.attention, block.layernorm_before(x))[0])

        def mlp(x: torch.Tensor) -> torch.Tensor:
            return x + block.dropout(block.mlp(block.layernorm_after(x)))

        return attn, mlp

    def token_block(self, model: nn.Module, index: int, stage: TokenStage) -> nn.Module:
        old = self.blocks(model)[index]
        return HFTokenBlock(old, stage, self.num_prefix(model)).train(old.training)

    def after_token_stages(self, model: nn.Module, stages: Sequence[int]) -> None:
        """Switch ``model`` to the mask-free twin of its attention (:func:`maskless_attention`).

        Without a mask argument transformers builds none when it runs eagerly, but under
        ``torch.export`` (ONNX export) it builds an all-true (B, 1, N, N) mask and hands it to
        every layer, which no longer fits after a token stage shortened the sequence. A ViT
        classifying images has no padding to mask; an ``attention_mask`` passed to the pruned
        model is ignored.
        """
        impl = maskless_attention(model.config._attn_implementation)
        if impl != model.config._attn_implementation:
            model.set_attn_implementation(impl)


def _override(cfg: Any, key: str, value: Any) -> None:
    """Set config field ``key`` (an existing one) to ``value``."""
    if key != "num_labels" and key not in cfg.to_dict():  # fields only, never a method
        raise ModelError(f"a Hugging Face {type(cfg).__name__} has no field '{key}'; use one of "
                         f"its fields or {', '.join(_CONFIG_ALIASES)}")
    setattr(cfg, key, list(value) if isinstance(value, tuple) else value)


def default_data_config(input_size: tuple[int, int, int]) -> dict[str, Any]:
    """The preprocessing vitprune gives a model that records none (timm's defaults)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({"input_size": tuple(input_size)})
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def data_config_of(pre: dict[str, Any], input_size: tuple[int, int, int]) -> dict[str, Any]:
    """vitprune's data config (timm's ``create_transform`` arguments) reproducing a
    ``preprocessor_config.json`` of transformers' ViT/DeiT image processors.

    ``size: {height, width}`` (resize to that size, aspect ignored, then an optional center
    crop) is timm's ``crop_mode="squash"`` with ``crop_pct = crop / size``;
    ``size: {shortest_edge}`` is ``crop_mode="center"``. A rescale other than 1/255 is folded
    into mean and std, so that timm's 0..1 tensors are normalised to the same values. Missing
    fields take ViTImageProcessor's defaults (bilinear, mean and std 0.5).

    Args:
        pre: the parsed preprocessor_config.json.
        input_size: (C, H, W) the model takes.

    Raises:
        ModelError: a resize vitprune cannot reproduce (e.g. ``longest_edge``).
    """
    c = input_size[0]
    size = pre.get("size", {"height": input_size[1], "width": input_size[2]})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    crop = pre.get("crop_size") if pre.get("do_center_crop") else None
    crop_h = (crop if isinstance(crop, int) else (crop or {}).get("height")) if crop else None
    if not pre.get("do_resize", True):
        mode, crop_pct = "squash", 1.0
    elif isinstance(size, dict) and {"height", "width"} <= size.keys():
        mode, crop_pct = "squash", (crop_h / size["height"] if crop_h else 1.0)
    elif isinstance(size, dict) and "shortest_edge" in size:
        mode = "center"
        crop_pct = pre.get("crop_pct") or (crop_h / size["shortest_edge"] if crop_h else 1.0)
    else:
        raise ModelError(f"preprocessor_config.json resizes to {size!r}, which vitprune cannot "
                         "reproduce (it takes height/width or shortest_edge); edit or remove it")
    resample = pre.get("resample", 2)
    interpolation = (_RESAMPLE.get(resample, "bilinear") if isinstance(resample, int)
                     else str(resample).lower())
    # HF: (x * rescale - mean) / std on 0..255 values; timm: (x - mean) / std on 0..1 values
    factor = 255.0 * (pre.get("rescale_factor", 1 / 255) if pre.get("do_rescale", True) else 1.0)
    factor = 1.0 if math.isclose(factor, 1.0) else factor
    if pre.get("do_normalize", True):
        mean, std = _channels(pre.get("image_mean", 0.5), c), _channels(pre.get("image_std", 0.5), c)
    else:
        mean, std = [0.0] * c, [1.0] * c
    return {
        "input_size": list(input_size),
        "interpolation": interpolation,
        "mean": [m / factor for m in mean],
        "std": [s / factor for s in std],
        "crop_pct": float(crop_pct),
        "crop_mode": mode,
    }


def _channels(value: float | Sequence[float], c: int) -> list[float]:
    """A per-channel list from a scalar or a list (HF saves either)."""
    return [float(value)] * c if isinstance(value, (int, float)) else [float(v) for v in value]


def _unsupported(i: int, what: str) -> ModelError:
    return ModelError(
        f"layer {i} has {what}, which vitprune cannot prune; supported are transformers' "
        f"{_supported_text()} with their own ViT/DeiT layers"
    )
