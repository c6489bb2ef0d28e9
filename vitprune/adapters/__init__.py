"""Model families: the only code that knows a family's internals (blocks, attention, MLP,
prefix tokens, how to build and load it).

Each family is one :class:`~vitprune.adapters.base.Adapter` registered here. Everything above
(scoring, masking, surgery, cost, save/load, the commands) reaches a model through
:func:`adapter_for` (a model) or :func:`adapter_named` (a model name).

To add a family: write ``vitprune/adapters/<family>.py`` with an ``Adapter`` subclass (see
``base.py`` for what it must answer; ``timm_vit.TimmBlocks`` already does the block-level work
for models built of timm ``Block``s) and add one :func:`register` call below. A family of
timm models names the timm modules it builds (:attr:`~vitprune.adapters.base.Adapter.timm_modules`):
names are dispatched by the module timm says defines them, so the order of registration does not
matter.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from torch import nn

from ..cost import VitShape
from ..errors import ModelError
from .base import (
    Adapter,
    ArchSpec,
    BlockParts,
    Features,
    head_channels,
    slice_linear,
    timm_module,
    token_stage,
)
from .hf_vit import HFAdapter
from .t2t_vit import T2TAdapter
from .timm_eva import EvaAdapter
from .timm_sam import SamAdapter
from .timm_swin import SwinAdapter
from .timm_vit import SMALL_CONFIGS, TimmViTAdapter

_ADAPTERS: list[Adapter] = []


def register(adapter: Adapter) -> Adapter:
    """Make ``adapter``'s family known to every command and function."""
    _ADAPTERS.append(adapter)
    return adapter


register(TimmViTAdapter())
register(T2TAdapter())
register(HFAdapter())
register(EvaAdapter())
register(SwinAdapter())
register(SamAdapter())


def families() -> tuple[Adapter, ...]:
    """The registered adapters, in the order they are tried."""
    return tuple(_ADAPTERS)


def supported() -> str:
    """What vitprune accepts, for error messages."""
    return "; ".join(a.describes for a in _ADAPTERS)


def adapter_for(model: nn.Module, name: str = "") -> Adapter:
    """The adapter of ``model``'s family.

    Raises:
        ModelError: no registered family handles the model.
    """
    for a in _ADAPTERS:
        if a.handles(model):
            return a
    raise ModelError(
        f"model {name or type(model).__name__} is a {type(model).__name__}, which vitprune "
        f"cannot prune; supported are ViT/DeiT-style models: {supported()}"
    )


def adapter_named(name: str) -> Adapter:
    """The adapter whose family builds the model called ``name``.

    Raises:
        ModelError: no family knows the name (with the closest known names).
    """
    for a in _ADAPTERS:
        if a.knows(name):
            return a
    if "/" in name or name.startswith("."):  # meant as a path: say what is there
        path = Path(name)
        what = ("is a file, not a model directory (pass a file of weights as --checkpoint "
                "beside --model NAME)" if path.is_file() else "does not exist")
        raise ModelError(f"{name} {what}; --model takes a model name or a directory saved by "
                         "vitprune, timm or Hugging Face's save_pretrained")
    module = timm_module(name)
    if module is not None:
        raise ModelError(f"model {name} is defined in timm's {module} module, which no vitprune "
                         f"family prunes; vitprune prunes: {supported()}")
    pool = [n for a in _ADAPTERS for n in a.names()]
    close = difflib.get_close_matches(name, pool, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model '{name}'.{hint} Use {supported()}, or a directory saved by "
                     "vitprune.")


def from_directory(path: Path) -> tuple[nn.Module, ArchSpec] | None:
    """A model saved in a family's own directory layout (a Hugging Face ``save_pretrained``
    directory), with its architecture record; None: no family recognises the directory."""
    for a in _ADAPTERS:
        found = a.from_directory(path)
        if found is not None:
            return found
    return None


def logits_module(model: nn.Module) -> nn.Module:
    """``model`` as a module whose forward returns the logits tensor (see
    :meth:`~vitprune.adapters.base.Adapter.logits_module`), or for a model without a classifier
    (``num_classes=0``) its output features (:class:`~vitprune.adapters.base.Features`: what
    it hands on, which fine-tuning distils and evaluation compares); a model of no registered
    family is returned as it is."""
    for a in _ADAPTERS:
        if a.handles(model):
            if a.classes(model) == 0:
                return Features(model, a)
            return a.logits_module(model)
    return model


def vit_shape(model: nn.Module) -> VitShape:
    """The :class:`~vitprune.cost.VitShape` of ``model`` as built (dense or physically pruned,
    token stages included).

    Raises:
        ModelError: the model is not one vitprune can prune.
    """
    return adapter_for(model).shape(model)


def check_prunable(model: nn.Module) -> None:
    """Raise :class:`ModelError` unless ``model`` is one vitprune can prune."""
    adapter_for(model).check(model)


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) of one input image of ``model``."""
    return adapter_for(model).input_shape(model)


def data_config(model: nn.Module) -> dict | None:
    """How images must be prepared for ``model`` (mean, std, interpolation, crop_pct,
    crop_mode, input_size), JSON-ready; None where the model does not say."""
    return adapter_for(model).data_config(model)


__all__ = [
    "SMALL_CONFIGS", "Adapter", "ArchSpec", "BlockParts", "adapter_for", "adapter_named",
    "check_prunable", "data_config", "families", "from_directory", "head_channels", "input_shape",
    "logits_module", "register", "slice_linear", "supported", "token_stage", "vit_shape",
]
