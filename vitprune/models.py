"""Build supported Vision Transformers by name, with random weights or from a checkpoint.

Two kinds of names are accepted:

* any timm model name whose class is a ``timm.models.vision_transformer.VisionTransformer``
  (``deit_small_patch16_224``, ``vit_base_patch16_224``, distilled DeiTs, register-token ViTs ...);
* the small configurations registered here for 28x28 one-channel input (Fashion-MNIST), used by
  the demo, the tests and the benchmarks.

A model is described by an :class:`ArchSpec` (name + keyword overrides), which is what vitprune
saves beside weights so that a model can be rebuilt from JSON alone.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from . import fsutil
from .errors import ModelError

# Small ViTs for 28x28 grey images. Patch 4 gives 7x7 = 49 patches + 1 class token = 50 tokens.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    # The demo / benchmark baseline: DeiT-style, depth 12, width 64, four heads of 16, MLP 256.
    # Width 64 rather than 96 because training on 2 CPU cores is 1.6x faster (246 vs 150 img/s)
    # and every later stage (search, fine-tuning, ablations) is paid for many times over.
    "fmnist_vit_d12": dict(
        img_size=28, patch_size=4, in_chans=1, num_classes=10,
        embed_dim=64, depth=12, num_heads=4, mlp_ratio=4.0, qkv_bias=True,
    ),
    # A very small model for fast tests and the smoke-test demo.
    "fmnist_vit_tiny": dict(
        img_size=28, patch_size=7, in_chans=1, num_classes=10,
        embed_dim=32, depth=4, num_heads=4, mlp_ratio=2.0, qkv_bias=True,
    ),
}


@dataclass(frozen=True)
class ArchSpec:
    """A buildable architecture: a registered or timm model name plus keyword overrides."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise ModelError(f"architecture record {d!r} has no model name; the model.json is corrupt")
        kwargs = d.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise ModelError(f"architecture kwargs must be a JSON object, got {kwargs!r}")
        return cls(d["name"], kwargs)


def available_models() -> list[str]:
    """Names of the registered small configurations (any timm ViT name is accepted too)."""
    return sorted(SMALL_CONFIGS)


def _unknown(name: str) -> ModelError:
    pool = available_models() + timm.list_models(["vit_*", "deit*"])
    close = difflib.get_close_matches(name, pool, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ModelError(
        f"unknown model '{name}'.{hint} Use one of {', '.join(available_models())}, a timm "
        "VisionTransformer name (see timm.list_models('deit*')), or a directory saved by vitprune."
    )


def build_model(arch: ArchSpec | str, **overrides: Any) -> VisionTransformer:
    """Build a model with random weights.

    Args:
        arch: an :class:`ArchSpec` or a model name.
        **overrides: keyword arguments for the model constructor (``num_classes``, ``img_size``,
            ``in_chans`` ...), added to the spec's own.

    Raises:
        ModelError: the name is unknown, or names a timm model that is not a VisionTransformer.
    """
    spec = ArchSpec(arch) if isinstance(arch, str) else arch
    kwargs = {**spec.kwargs, **overrides}
    if spec.name in SMALL_CONFIGS:
        model = VisionTransformer(**{**SMALL_CONFIGS[spec.name], **kwargs})
    elif timm.is_model(spec.name):
        model = _create_timm(spec.name, kwargs)
    else:
        raise _unknown(spec.name)
    check_supported(model, spec.name)
    return model


def _create_timm(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """``timm.create_model(name, **kwargs)``; a model that does not take the options is told
    apart from one that is not a ViT (a ResNet has no ``img_size``) by building it bare."""
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        with torch.device("meta"):  # no memory, no initialisation: only the class matters
            bare = timm.create_model(name, pretrained=False)
        check_supported(bare, name)
        raise ModelError(f"model {name} does not accept the options {sorted(kwargs)}: {exc}; "
                         "drop or correct them") from None


def check_supported(model: torch.nn.Module, name: str = "") -> None:
    """Raise :class:`ModelError` unless ``model`` is a timm VisionTransformer vitprune can prune."""
    if not isinstance(model, VisionTransformer):
        raise ModelError(
            f"model {name or type(model).__name__} is a {type(model).__name__}, not a timm "
            "VisionTransformer; vitprune prunes ViT/DeiT-style models only (timm's "
            "VisionTransformer and its subclasses)."
        )


# Where training scripts keep the weights inside a checkpoint, in the order timm's own
# ``load_state_dict`` picks them: EMA weights first when the file holds them.
CHECKPOINT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from the checkpoint layouts users hold, without unpickling code.

    Accepted: a safetensors file; a ``torch.save``d state_dict; a training checkpoint holding it
    under ``state_dict_ema``, ``model_ema``, ``state_dict`` or ``model`` (DeiT's release files,
    timm's and T2T-ViT's training scripts), the EMA weights preferred as timm does. Keys wrapped
    by DDP or ``torch.compile`` (``module.``, ``_orig_mod.``) are unwrapped with timm's
    ``clean_state_dict``.
    """
    from timm.models import clean_state_dict

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")

    def error(reason: str) -> ModelError:
        return ModelError(f"could not read checkpoint {path}: {reason}. Re-save it as a "
                          "state_dict of tensors or a .safetensors file, or point to another one.")

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as exc:  # safetensors raises its own types for damaged files
            raise error(f"it is not a readable safetensors file ({exc})") from None
    else:
        sd = fsutil.torch_load(path, error)
    if isinstance(sd, dict):
        key = next((k for k in CHECKPOINT_KEYS if isinstance(sd.get(k), dict)), None)
        sd = sd[key] if key else sd
    tensors = isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values())
    if not tensors:
        found = sorted(sd)[:6] if isinstance(sd, dict) else type(sd).__name__
        raise ModelError(f"checkpoint {path} does not hold a state_dict of tensors (found "
                         f"{found}); vitprune reads a state_dict, or one under "
                         f"{', '.join(CHECKPOINT_KEYS)}")
    return clean_state_dict(sd)


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "") -> None:
    """Load ``state_dict`` strictly, explaining any architecture mismatch in one message."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})")
        raise ModelError(
            f"checkpoint {source} does not match the model architecture: "
            + ", ".join(parts)
            + ". It was made for another model: pass the --model it was trained with."
        )
    model.load_state_dict(state_dict, strict=True)
