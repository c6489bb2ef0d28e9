"""A model directory: ``model.safetensors`` + ``model.json`` (architecture, plan, metadata).

``model.json`` records the SHA-256 of the weights file, so a directory whose weights were
replaced or damaged is refused with a clear message instead of loading the wrong model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .. import fsutil
from ..adapters import adapter_for, data_config, from_directory
from ..errors import ModelError
from ..models import MODEL_CONFIG, ArchSpec, ModelSource, build_model, load_weights, read_state_dict
from ..plan import PrunePlan
from ..surgery import restructure

FORMAT = "vitprune.model"
VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", MODEL_CONFIG


def _sha256(path: Path) -> str:
    return fsutil.sha256_file(path)


def dir_checksum(d: str | Path) -> str:
    """SHA-256 over a directory's files (names and contents), for a model saved in a family's
    own layout: replacing any of its files changes it, moving the directory does not."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(d).iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0" + _sha256(f).encode())
    return h.hexdigest()


def save(out: str | Path, model: torch.nn.Module, arch: ArchSpec | None = None, *,
         plan: PrunePlan | dict | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to directory ``out`` (weights first, then the JSON that vouches for them).

    ``model.json`` also records the model's data config (:func:`vitprune.adapters.data_config`:
    input size, interpolation, crop, mean and std), so a pruned model keeps its parent's.

    Args:
        arch: the architecture of the dense model ``model`` was pruned from (or of ``model``);
            None: read from the model where its family can (a Hugging Face config).
        plan: the plan that pruned it (None: a dense model).
    """
    out = Path(out)
    arch = arch or adapter_for(model).arch(model)
    if arch is None:
        raise ModelError(f"save() needs arch= for a {type(model).__name__}: the name and "
                         "arguments it was built with, e.g. ArchSpec('deit_small_patch16_224')")
    if isinstance(plan, dict):
        plan = PrunePlan.from_dict(plan)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    fsutil.atomic_write(out / WEIGHTS, lambda p: save_file(sd, str(p), metadata={"format": "pt"}))
    adapter_for(model).save_files(out, model)  # what the family's own library reads
    fsutil.write_json(out / CONFIG, {
        "format": FORMAT, "version": VERSION, "arch": arch.to_dict(),
        "plan": None if plan is None else plan.to_dict(),
        "data_config": data_config(model),
        "weights": {"file": WEIGHTS, "sha256": _sha256(out / WEIGHTS)}, "meta": meta or {},
    })
    return out


def read_config(d: str | Path) -> dict[str, Any]:
    """The parsed, checked ``model.json`` of a model directory."""
    d = Path(d)
    cfg_path = d / CONFIG
    if not cfg_path.is_file():
        raise ModelError(f"{d} is not a vitprune model directory: {CONFIG} is missing (nor is it "
                         "a Hugging Face save_pretrained directory: no config.json)")
    return fsutil.read_record(cfg_path, FORMAT, VERSION, lambda why: ModelError(
        f"{why}; the model directory is damaged or not vitprune's: re-save the model"))


def load(d: str | Path, device: str = "cpu") -> torch.nn.Module:
    """Rebuild exactly the model saved in directory ``d`` (dense or pruned) in eval mode."""
    d = Path(d)
    cfg = read_config(d)
    weights = d / cfg.get("weights", {}).get("file", WEIGHTS)
    if not weights.is_file():
        raise ModelError(f"{d}: weights file {weights.name} is missing; re-save the model")
    expected = cfg.get("weights", {}).get("sha256")
    if expected and _sha256(weights) != expected:
        raise ModelError(
            f"{weights} does not match {CONFIG} (checksum differs): the weights were replaced or "
            "damaged. Re-save the model, or restore the original file."
        )
    model = build_model(ArchSpec.from_dict(cfg["arch"]))
    if cfg.get("plan") is not None:
        model = restructure(model, cfg["plan"])  # pruned: rebuild the smaller structure
    load_weights(model, read_state_dict(weights), str(weights))
    if cfg.get("data_config"):  # the saved preprocessing travels with the model
        adapter_for(model).set_data_config(model, cfg["data_config"])
    return model.to(device).eval()


def resolve_model(name_or_dir: str | ModelSource, checkpoint: str | Path | None = None,
                  device: str = "cpu", **overrides: Any
                  ) -> tuple[torch.nn.Module, ArchSpec, PrunePlan | None]:
    """A model from a saved directory or a name (random weights, ``checkpoint``'s, or timm's
    published ones for a :class:`ModelSource` with ``pretrained``).

    Args:
        overrides: constructor arguments for a name, over the source's own ``args``.

    Returns:
        (model in eval mode, its base architecture, its plan or None).
    """
    src = ModelSource.of(name_or_dir, checkpoint)
    src.check()
    if src.is_dir and not src.is_vitprune_dir:
        found = from_directory(Path(src.name))
        if found is not None:  # a family's own layout (Hugging Face save_pretrained)
            return found[0].to(device).eval(), found[1], None
    if src.is_dir:
        cfg = read_config(src.name)
        plan = cfg.get("plan")
        return (load(src.name, device), ArchSpec.from_dict(cfg["arch"]),
                None if plan is None else PrunePlan.from_dict(plan))
    arch = ArchSpec(src.name, {**src.args, **overrides})
    model = build_model(arch, pretrained=src.pretrained)
    if src.checkpoint is not None:
        sd = adapter_for(model).checkpoint_state_dict(model, read_state_dict(src.checkpoint))
        load_weights(model, sd, src.checkpoint)
    return model.to(device).eval(), arch, None


def resolve_for_data(name_or_dir: str | ModelSource, splits: Any,
                     checkpoint: str | Path | None = None, device: str = "cpu"
                     ) -> tuple[torch.nn.Module, ArchSpec, PrunePlan | None]:
    """:func:`resolve_model`, a name built to fit ``splits`` (its classes, channels and image
    size; unlabeled images or ``num_classes=0`` in the source's args: no classifier);
    registered small configurations and saved directories are taken as they are."""
    from ..models import SMALL_CONFIGS

    src = ModelSource.of(name_or_dir, checkpoint)
    over = {}
    if src.name not in SMALL_CONFIGS and not src.is_dir:
        over = {"num_classes": splits.num_classes, "in_chans": splits.in_chans,
                "img_size": splits.img_size}
        if src.args.get("num_classes") == 0:  # asked for a backbone: labels do not add a head
            del over["num_classes"]
    return resolve_model(src, device=device, **over)
