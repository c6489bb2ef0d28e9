"""A pruned Hugging Face ViT/DeiT saved so that plain ``transformers`` loads it.

:func:`write` adds to a vitprune model directory what ``transformers`` reads:

- ``config.json``: the dense config plus the kept heads and MLP widths of every layer and the
  token stages, naming vitprune's config and model classes in ``auto_map``;
- ``configuration_vitprune.py`` and ``modeling_vitprune.py`` (from :mod:`.hf_code`): those
  classes, subclasses of transformers' ViT/DeiT ones, which import nothing of vitprune;
- ``preprocessor_config.json``: a ``DeiTImageProcessor`` reproducing the model's data config,
  so that ``pipeline("image-classification", model=dir, trust_remote_code=True)`` prepares
  images as vitprune does.

The weights are the directory's ``model.safetensors``, shared with ``vitprune.load``: a model
keeps transformers' key names when vitprune prunes it. transformers 5 has no ``pruned_heads``
mechanism (its layers are built at the config's width), so even heads pruned alone need the
classes here.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Any

from .. import fsutil

#: the classes written into the directory, for each supported transformers class
REMOTE_CLASS = {
    "ViTForImageClassification": ("VitprunedViTConfig", "VitprunedViTForImageClassification"),
    "DeiTForImageClassification": ("VitprunedDeiTConfig", "VitprunedDeiTForImageClassification"),
    "DeiTForImageClassificationWithTeacher": ("VitprunedDeiTConfig",
                                              "VitprunedDeiTForImageClassificationWithTeacher"),
}
MODEL_TYPE = {"VitprunedViTConfig": "vitprune_vit", "VitprunedDeiTConfig": "vitprune_deit"}
# timm interpolation names -> PIL resampling codes, as image processors save them
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def remote_config(record: dict[str, Any], heads: list[int], widths: list[int],
                  stages: list[dict[str, Any]]) -> dict[str, Any]:
    """config.json of a pruned model: ``record`` (the dense config, its class named in
    ``architectures``) with vitprune's classes and the per-layer widths and token stages."""
    config_cls, model_cls = REMOTE_CLASS[record["architectures"][0]]
    return {
        **record, "model_type": MODEL_TYPE[config_cls], "architectures": [model_cls],
        "auto_map": {"AutoConfig": f"configuration_vitprune.{config_cls}",
                     "AutoModelForImageClassification": f"modeling_vitprune.{model_cls}"},
        "layer_heads": heads, "layer_intermediate_sizes": widths, "token_stages": stages,
    }


def processor_config(data_config: dict[str, Any]) -> dict[str, Any]:
    """A ``DeiTImageProcessor``'s preprocessor_config.json preparing images as vitprune's
    data config (timm's transform arguments) does: resize (squash to a size, or the shortest
    edge; sizes rounded down, as timm does), center crop to the input size, scale to 0..1,
    normalise. It names the processor's PIL class, which reproduces timm's PIL resizing;
    ``AutoImageProcessor`` picks the torchvision one where torchvision is installed, whose
    antialiased resize differs from PIL's by a few grey levels."""
    _, h, w = data_config["input_size"]
    pct = float(data_config.get("crop_pct", 1.0))
    mode = data_config.get("crop_mode", "center")
    if mode == "squash" or pct >= 1.0 and h != w:
        size: dict[str, int] = {"height": math.floor(h / pct), "width": math.floor(w / pct)}
    else:  # timm's "center": the shorter edge to input / crop_pct, aspect kept
        size = {"shortest_edge": math.floor(min(h, w) / pct)}
    return {
        "image_processor_type": "DeiTImageProcessorPil",
        "do_resize": True, "size": size,
        "resample": RESAMPLE.get(data_config.get("interpolation", "bicubic"), 3),
        "do_center_crop": True, "crop_size": {"height": h, "width": w},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(data_config["mean"]),
        "image_std": list(data_config["std"]),
    }


def write(out: Path, config: dict[str, Any], data_config: dict[str, Any]) -> None:
    """Write config.json, preprocessor_config.json and the modeling code into ``out``."""
    from .hf_code import FILES

    code = resources.files(__package__).joinpath("hf_code")
    for name in FILES:
        fsutil.write_text(out / name, code.joinpath(name).read_text())
    fsutil.write_json(out / "config.json", config)
    fsutil.write_json(out / "preprocessor_config.json", processor_config(data_config))
