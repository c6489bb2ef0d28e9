"""Build supported Vision Transformers by name, with random weights or from a checkpoint.

A name is built by the model family that knows it (:func:`vitprune.adapters.adapter_named`):
timm ``VisionTransformer`` names and the small configurations registered for Fashion-MNIST
(``fmnist_vit_d12``), T2T-ViT names (``t2t_vit_14``), and Hugging Face configurations. A model
is described by an :class:`ArchSpec` (name + keyword arguments), which is what vitprune saves
beside weights so that a model can be rebuilt from JSON alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import fsutil
from .adapters import SMALL_CONFIGS, ArchSpec, adapter_for, adapter_named, supported
from .adapters.base import MODEL_CONFIG as MODEL_CONFIG
from .errors import ConfigError, ModelError

__all__ = ["SMALL_CONFIGS", "ArchSpec", "ModelSource", "available_models", "build_model",
           "check_supported", "load_weights", "parse_model_args", "read_state_dict"]


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a name or a saved directory, and for a name its weights
    (``checkpoint`` file, or timm's published ``pretrained`` weights) and constructor
    arguments (``args``: timm keyword arguments such as ``qk_norm``, ``drop_path_rate``,
    ``img_size``; recorded in a saved model's ``model.json``)."""

    # the metadata is the command line's: --model, --checkpoint, --pretrained, --model-args
    name: str = field(metadata={"flag": "model", "required": True, "metavar": "MODEL", "help": lambda: (
        "a directory saved by vitprune, or " + supported())})  # the registry's list
    checkpoint: str | None = field(default=None, metadata={
        "help": "weights for a model given by name: .safetensors, a state_dict, or a training "
                "file holding one under model / state_dict / state_dict_ema (read without "
                "unpickling code)"})
    pretrained: bool = field(default=False, metadata={
        "help": "timm's published weights for a timm name (from the Hugging Face cache, "
                "downloaded if there is network; HF_HUB_OFFLINE=1 respected)"})
    args: dict[str, Any] = field(default_factory=dict, metadata={
        "flag": "model-args", "nargs": "+", "type": str, "metavar": "KEY=VALUE",
        "parse": lambda items: parse_model_args(items),  # defined below
        "help": "constructor arguments for a model given by name, values as JSON: qk_norm=true "
                "drop_path_rate=0.1 global_pool=avg img_size=[224,160]; saved with the model"})

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
        """A saved model directory: vitprune's (``model.json``) or a family's own layout (a
        Hugging Face ``save_pretrained`` directory)."""
        return Path(self.name).is_dir()

    @property
    def is_vitprune_dir(self) -> bool:
        """A directory saved by vitprune (it holds ``model.json``)."""
        return (Path(self.name) / MODEL_CONFIG).is_file()

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
        if self.args and not self.is_dir:
            adapter_named(self.name).check_args(self.name, self.args)

    def id(self) -> str:
        """What identifies it in a run's record, apart from a directory's checksum: the name,
        the checkpoint by its contents (another file of the same name is another input), the
        published weights and the constructor arguments."""
        parts = [self.name]
        if self.checkpoint:
            ckpt = Path(self.checkpoint)
            if not ckpt.is_file():
                raise ModelError(f"--checkpoint {ckpt} " + (
                    "is a directory; give the weights file inside it (.safetensors, .pt, .pth)"
                    if ckpt.is_dir() else "does not exist"))
            parts.append("sha256:" + fsutil.sha256_file(ckpt))
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


def build_model(arch: ArchSpec | str, *, pretrained: bool = False,
                **overrides: Any) -> torch.nn.Module:
    """Build a model with random weights, or with published ones where its family has them.

    Args:
        arch: an :class:`ArchSpec` or a model name.
        pretrained: load the family's published weights (timm: from the Hugging Face cache).
        **overrides: keyword arguments for the model constructor (``num_classes``, ``img_size``,
            ``in_chans`` ...), added to the spec's own.

    Raises:
        ModelError: no family knows the name, the name is not a ViT vitprune can prune, or its
            published weights cannot be had.
    """
    spec = ArchSpec(arch) if isinstance(arch, str) else arch
    adapter = adapter_named(spec.name)
    kwargs = {**spec.kwargs, **overrides}
    try:
        model = adapter.build(ArchSpec(spec.name, kwargs), pretrained)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        # the constructor's own refusal (timm asserts that num_heads divides the width ...)
        given = " ".join(f"{k}={v!r}" for k, v in spec.kwargs.items()) or "its defaults"
        raise ModelError(f"{spec.name} cannot be built with {given}: {type(exc).__name__}"
                         f"{': ' + fsutil.first_line(exc) if str(exc) else ''}; correct the "
                         "--model-args") from None
    check_supported(model, spec.name)
    return model


def check_supported(model: torch.nn.Module, name: str = "") -> None:
    """Raise :class:`ModelError` unless ``model`` belongs to a family vitprune can prune."""
    adapter_for(model, name)


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
        raise ModelError(f"checkpoint {path} " + (
            "is a directory; give the weights file inside it (.safetensors, .pt, .pth)"
            if path.is_dir() else "does not exist"))

    def error(reason: str) -> ModelError:
        return ModelError(f"could not read checkpoint {path}: {reason}. Re-save it as a "
                          "state_dict of tensors or a .safetensors file, or point to another one.")

    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as exc:  # safetensors raises its own types for damaged files
            raise error(f"it is not a readable safetensors file ({exc})") from None
    else:
        sd = fsutil.torch_load(path, error)
    if isinstance(sd, dict):
        # a key holding an empty dict (an EMA never filled) does not hide the weights beside it
        key = next((k for k in CHECKPOINT_KEYS if isinstance(sd.get(k), dict) and sd[k]), None)
        sd = sd[key] if key else sd
    tensors = isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values())
    if not tensors:
        found = sorted(sd)[:6] if isinstance(sd, dict) else type(sd).__name__
        raise ModelError(f"checkpoint {path} does not hold a state_dict of tensors (found "
                         f"{found}); vitprune reads a state_dict, or one under "
                         f"{', '.join(CHECKPOINT_KEYS)}")
    return clean_state_dict(sd)


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file whatever its name: an 8-byte header length, then a JSON header."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def load_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "") -> None:
    """Load ``state_dict`` strictly, explaining any architecture mismatch in one message."""
    own = model.state_dict()
    kinds = [f"{k} ({state_dict[k].dtype})" for k, v in own.items()
             if k in state_dict and v.is_floating_point()
             and not state_dict[k].is_floating_point()]
    if kinds:  # copying integers or booleans into float weights would "work" and mean nothing
        raise ModelError(f"checkpoint {source} holds non-float tensors where the model has float "
                         f"weights: {', '.join(kinds[:3])}; it is not a set of trained weights "
                         "for this model")
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
            + (". Only the classifier differs: the checkpoint predicts "
               f"{_classes(state_dict)} classes; pass --model-args num_classes="
               f"{_classes(state_dict)} for a model given by name"
               if _head_only(missing, unexpected, shapes) and _classes(state_dict) else
               ". It was made for another model: pass the --model it was trained with.")
        )
    model.load_state_dict(state_dict, strict=True)


def _head_only(missing: list, unexpected: list, shapes: list[str]) -> bool:
    """Whether the only mismatch is the classifier's shape (another number of classes)."""
    return not missing and not unexpected and bool(shapes) and all(
        s.split(":")[0].split(".")[0] in ("head", "classifier") for s in shapes)


def _classes(state_dict: dict[str, torch.Tensor]) -> int | None:
    for key in ("head.weight", "classifier.weight", "head.fc.weight"):
        if key in state_dict and state_dict[key].ndim == 2:
            return int(state_dict[key].shape[0])
    return None
