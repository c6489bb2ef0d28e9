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
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from . import fsutil
from .errors import ConfigError, ModelError

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


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a name or a saved directory, and for a name its weights
    (``checkpoint`` file, or timm's published ``pretrained`` weights) and constructor
    arguments (``args``: timm keyword arguments such as ``qk_norm``, ``drop_path_rate``,
    ``img_size``; recorded in a saved model's ``model.json``)."""

    name: str
    checkpoint: str | None = None
    pretrained: bool = False
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: str | Path | ModelSource, checkpoint: str | Path | None = None
           ) -> ModelSource:
        """``model`` as a source (a name or directory takes ``checkpoint`` with it)."""
        if isinstance(model, ModelSource):
            if checkpoint is not None and model.checkpoint != str(checkpoint):
                raise ModelError("give the checkpoint in the ModelSource or as checkpoint=, "
                                 "not both")
            return model
        return cls(str(model), None if checkpoint is None else str(checkpoint))

    @property
    def is_dir(self) -> bool:
        return Path(self.name).is_dir()

    def inputs(self) -> list[str | None]:
        """The files and directories this source reads (for ``--out`` checks)."""
        return [self.name, self.checkpoint]

    def check(self) -> None:
        """Refuse combinations that cannot mean anything (before any work is done)."""
        if self.is_dir and (self.checkpoint or self.pretrained or self.args):
            raise ModelError(f"{self.name} is a saved model directory, with its own weights and "
                             "architecture; do not pass --checkpoint, --pretrained or "
                             "--model-args with it")
        if self.pretrained and self.checkpoint:
            raise ModelError("--pretrained and --checkpoint both give weights; pass one")
        if self.pretrained and self.name in SMALL_CONFIGS:
            raise ModelError(f"{self.name} has no published weights; train it (vitprune train) "
                             "or pass --checkpoint FILE")

    def id(self) -> str:
        """What identifies it in a run's record, apart from a directory's checksum."""
        parts = [self.name]
        if self.checkpoint:
            parts.append(Path(self.checkpoint).name)
        if self.pretrained:
            parts.append("pretrained")
        if self.args:
            parts.append(json.dumps(self.args, sort_keys=True))
        return "+".join(parts)


def parse_model_args(items: list[str] | None) -> dict[str, Any]:
    """``["qk_norm=true", "drop_path_rate=0.1", "img_size=[224,160]"]`` -> keyword arguments.

    Values are read as JSON (``true``, ``0.1``, ``[224, 160]``, ``null``); Python's ``True``,
    ``False`` and ``None`` are accepted too; anything else is a string (``global_pool=avg``).
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError("model_args", f"takes KEY=VALUE items (qk_norm=true), got {item!r}")
        raw = {"True": "true", "False": "false", "None": "null"}.get(raw, raw)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


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


def build_model(arch: ArchSpec | str, *, pretrained: bool = False,
                **overrides: Any) -> VisionTransformer:
    """Build a model with random weights, or with timm's published ones.

    Args:
        arch: an :class:`ArchSpec` or a model name.
        pretrained: load timm's published weights for a timm name (see :func:`_published`).
        **overrides: keyword arguments for the model constructor (``num_classes``, ``img_size``,
            ``in_chans`` ...), added to the spec's own.

    Raises:
        ModelError: the name is unknown, names a timm model that is not a VisionTransformer, or
            its published weights cannot be had.
    """
    spec = ArchSpec(arch) if isinstance(arch, str) else arch
    kwargs = {**spec.kwargs, **overrides}
    if spec.name in SMALL_CONFIGS:
        if pretrained:
            raise ModelError(f"{spec.name} has no published weights; pass --checkpoint FILE")
        model = VisionTransformer(**{**SMALL_CONFIGS[spec.name], **kwargs})
    elif timm.is_model(spec.name):
        model = _create_timm(spec.name, kwargs, pretrained)
    else:
        raise _unknown(spec.name)
    check_supported(model, spec.name)
    return model


def _create_timm(name: str, kwargs: dict[str, Any], pretrained: bool = False) -> torch.nn.Module:
    """``timm.create_model(name, **kwargs)``; a model that does not take the options is told
    apart from one that is not a ViT (a ResNet has no ``img_size``) by building it bare."""
    try:
        if pretrained:
            return _published(name, kwargs)
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        with torch.device("meta"):  # no memory, no initialisation: only the class matters
            bare = timm.create_model(name, pretrained=False)
        check_supported(bare, name)
        raise ModelError(f"model {name} does not accept the options {sorted(kwargs)}: {exc}; "
                         "drop or correct them") from None


def _published(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """``timm.create_model(name, pretrained=True)``: timm's published weights from the Hugging
    Face hub cache, downloaded if the hub can be reached.

    Without network the hub client retries for about a minute before it gives up; here an
    unreachable hub (or ``HF_HUB_OFFLINE=1``) makes it read the cache only, so a missing file
    fails within seconds.
    """
    from huggingface_hub import constants

    with torch.device("meta"):
        bare = timm.create_model(name, pretrained=False)
    check_supported(bare, name)  # a ResNet is refused as such, before anything is fetched
    offline = constants.HF_HUB_OFFLINE or not _hub_reachable(constants.ENDPOINT)
    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, offline
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # the hub's errors are OSErrors
        where = "the hub cannot be reached and they are not" if offline else "they are not"
        raise ModelError(
            f"could not get timm's published weights for {name}: {where} in the Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}; {fsutil.first_line(exc)}). Offline, pass the "
            "weights as --checkpoint FILE (.safetensors or a state_dict), or fetch them once "
            "where there is network") from None
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (behind a proxy
    the client's own connection decides: assumed reachable)."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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
