"""A pruned Hugging Face model's directory loads with plain transformers, vitprune blocked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vitprune.adapters.hf_remote import processor_config  # noqa: E402
from vitprune.adapters.hf_vit import HFAdapter, default_data_config  # noqa: E402
from vitprune.io import load, save  # noqa: E402
from vitprune.plan import BlockPlan, PrunePlan, TokenStage  # noqa: E402
from vitprune.surgery import prune  # noqa: E402

SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
             image_size=32, patch_size=8, num_channels=3, num_labels=5)
# uneven widths in every layer, a fusing token stage in layer 1 and a plain one in layer 2
PLAN = PrunePlan((BlockPlan([1, 3], [0, 5, 9, 63]), BlockPlan([0, 1, 2], list(range(0, 64, 2))),
                  BlockPlan([2], [7])), (TokenStage(1, 0.5), TokenStage(2, 0.5, fuse=False)))
KINDS = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification",
         "deit_teacher": "DeiTForImageClassificationWithTeacher"}
CUSTOM = {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.4, 0.5, 0.6],
          "std": [0.2, 0.3, 0.25], "crop_pct": 0.8, "crop_mode": "squash"}
CONFIGS = {"vit": "ViTConfig", "deit": "DeiTConfig", "deit_teacher": "DeiTConfig"}

# runs where importing vitprune fails: plain transformers loads each directory and runs its
# pipeline; the logits and the pipeline's scores come back as JSON
CHILD = textwrap.dedent("""
    import importlib.abc, json, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vitprune" or name.startswith("vitprune."):
                raise ImportError("vitprune is blocked in this process")

    sys.meta_path.insert(0, Blocked())
    try:
        import vitprune  # noqa: F401
        raise SystemExit("vitprune was importable")
    except ImportError:
        pass
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification, pipeline

    x = torch.load(sys.argv[2], weights_only=True)
    out = {}
    for d in sys.argv[3:]:
        model = AutoModelForImageClassification.from_pretrained(d, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(pixel_values=x).logits
        pipe = pipeline("image-classification", model=d, trust_remote_code=True, top_k=None)
        image = Image.open(sys.argv[1])
        scores = {r["label"]: r["score"] for r in pipe(image)}
        pixels = pipe.image_processor(image, return_tensors="pt")["pixel_values"]
        out[d] = {"class": type(model).__name__, "logits": logits.tolist(), "scores": scores,
                  "pixels": pixels.tolist(),
                  "layers": [type(m).__name__ for m in model.base_model.layers]}
    print(json.dumps(out))
""")


def _pruned(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, CONFIGS[kind])(**SMALL)
    model = getattr(transformers, KINDS[kind])(config).eval()
    with torch.no_grad():  # DeiT starts its tokens and position embedding at zero
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return prune(model, PLAN)


def test_pruned_directories_load_in_plain_transformers(tmp_path):
    from PIL import Image
    from timm.data import create_transform

    dirs = {}
    for kind in KINDS:
        dirs[kind] = tmp_path / kind
        model = _pruned(kind)
        if kind == "deit":  # a model with its own preprocessing (the others: vitprune's default)
            HFAdapter().set_data_config(model, CUSTOM)
        save(dirs[kind], model, plan=PLAN)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    pixels = torch.randint(0, 256, (41, 53, 3), generator=torch.Generator().manual_seed(2))
    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    image.save(tmp_path / "image.png")
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "image.png"),
                          str(tmp_path / "x.pt"), *map(str, dirs.values())],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    for kind, d in dirs.items():
        mine = load(d)  # vitprune's own loading of the same directory
        res = got[str(d)]
        assert res["class"] == "Vitpruned" + KINDS[kind]
        # the token stages are there (layers 1 and 2 select tokens), widths as the plan keeps
        assert res["layers"][1:] == ["TokenSelectingLayer"] * 2
        with torch.no_grad():
            want = mine(x).logits
        assert (torch.tensor(res["logits"]) - want).abs().max() < 1e-5
        # the pipeline prepares the image as vitprune's data config does (up to the torchvision
        # resize's antialiasing) and scores it as vitprune's model of the directory does
        config = HFAdapter().data_config(mine) or default_data_config((3, 32, 32))
        assert config == (CUSTOM if kind == "deit" else default_data_config((3, 32, 32)))
        tf = create_transform(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in config.items()})
        pixels = torch.tensor(res["pixels"])
        assert (pixels[0] - tf(image)).abs().mean() < 0.02
        with torch.no_grad():
            probs = mine(pixels).logits.softmax(-1)[0]
        labels = mine.config.id2label
        assert max(abs(res["scores"][labels[i]] - float(probs[i])) for i in range(5)) < 1e-5


@pytest.mark.parametrize("config", [
    {"input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
     "crop_pct": 1.0, "crop_mode": "squash"},
    {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.4, 0.5, 0.6],
     "std": [0.2, 0.3, 0.25], "crop_pct": 0.875, "crop_mode": "center"},
    {"input_size": [3, 32, 32], "interpolation": "bicubic", "mean": [0.4, 0.5, 0.6],
     "std": [0.2, 0.3, 0.25], "crop_pct": 32 / 36, "crop_mode": "squash"},
])
def test_processor_config_prepares_images_as_the_data_config(config):
    """The preprocessor_config.json written beside a pruned model reproduces timm's transform
    of its data config (resize, crop, normalise)."""
    from PIL import Image
    from timm.data import create_transform

    proc = transformers.DeiTImageProcessorPil(**{k: v for k, v in processor_config(config).items()
                                              if k != "image_processor_type"})
    tf = create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    pixels = torch.randint(0, 256, (300, 410, 3), generator=torch.Generator().manual_seed(4))
    image = Image.fromarray(pixels.to(torch.uint8).numpy())
    want = tf(image)
    got = torch.as_tensor(proc(image, return_tensors="np")["pixel_values"][0])
    assert got.shape == want.shape == (3, 32, 32)
    assert (got - want).abs().max() < 1e-4


def test_a_vitprune_directory_without_its_model_json_says_how_to_load_it(tmp_path):
    from vitprune.errors import ModelError
    from vitprune.io import resolve_model

    save(tmp_path / "m", _pruned("vit"), plan=PLAN)
    (tmp_path / "m" / "model.json").unlink()
    with pytest.raises(ModelError, match="pruned by vitprune.*trust_remote_code"):
        resolve_model(str(tmp_path / "m"))
