"""Every family through the same generic code: masked == physically pruned with heads, neurons
and tokens cut, save -> load identical, and the dense cost against the published numbers.

The models are the issue's reference sizes with random weights: T2T-ViT-7 and -14 (224x224),
Hugging Face ViT-B/16 (config defaults) and DeiT with its distillation head.
"""

from __future__ import annotations

import pytest
import torch

import vitprune
from tests.helpers import random_plan, sharpen
from vitprune.adapters import adapter_for, vit_shape
from vitprune.cost import macs
from vitprune.models import ArchSpec, build_model
from vitprune.surgery import Masker, count_params, prune

transformers = pytest.importorskip("transformers")


def _hf(cls_name: str, config_name: str) -> torch.nn.Module:
    """The config's defaults (ViT-B/16 or DeiT-B at 224), with ImageNet's 1,000 classes."""
    torch.manual_seed(0)
    config = getattr(transformers, config_name)(num_labels=1000)
    return getattr(transformers, cls_name)(config).eval()


MODELS = {
    "t2t_vit_7": lambda: build_model("t2t_vit_7").eval(),
    "t2t_vit_14": lambda: build_model("t2t_vit_14").eval(),
    "hf_vit_b16": lambda: _hf("ViTForImageClassification", "ViTConfig"),
    "hf_deit_teacher": lambda: _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig"),
}
# published (params in millions, GMACs at 224): T2T-ViT README; ViT-B/16 as timm's and DeiT-B
PUBLISHED = {"t2t_vit_7": (4.3, 1.1), "t2t_vit_14": (21.5, 4.8), "hf_vit_b16": (86.6, 17.6),
             "hf_deit_teacher": (87.3, 17.7)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def family_model(request):
    torch.manual_seed(1)
    return request.param, sharpen(MODELS[request.param]())


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    from vitprune.adapters import logits_module

    with torch.no_grad():
        return logits_module(model)(x)


def test_masked_equals_physically_pruned_with_heads_neurons_and_tokens_cut(family_model):
    name, model = family_model
    shape = vit_shape(model)
    depth = len(shape.blocks)
    plan = random_plan(shape, seed=3, stages=(depth // 3, 2 * depth // 3), keep_rate=0.6)
    torch.manual_seed(2)
    x = torch.randn(2, *vitprune.adapters.input_shape(model))
    dense = _logits(model, x)
    with Masker(model) as masker:
        masker.set(plan)
        masked = _logits(model, x)
    pruned_model = prune(model, plan)
    pruned = _logits(pruned_model, x)
    assert (masked - pruned).abs().max().item() < 1e-4
    assert (masked - dense).abs().max().item() > 1e-3  # the plan did change the function
    assert torch.equal(_logits(model, x), dense)  # the input model is untouched
    got = vit_shape(pruned_model)  # the pruned model is physically smaller, as planned
    assert [b.heads for b in got.blocks] == [len(b.heads) for b in plan.blocks]
    assert [b.mlp_hidden for b in got.blocks] == [len(b.neurons) for b in plan.blocks]
    assert count_params(model, plan) == sum(p.numel() for p in pruned_model.parameters())
    assert macs(got).total < macs(shape).total
    assert type(pruned_model) is type(model)  # the same family's class, per-block widths


def test_save_then_load_gives_the_same_model(family_model, tmp_path):
    from vitprune.io import save

    name, model = family_model
    shape = vit_shape(model)
    plan = random_plan(shape, seed=4, stages=(1,), keep_rate=0.5)
    pruned = prune(model, plan)
    saved_cfg = {"input_size": list(vitprune.adapters.input_shape(model)), "mean": [0.25] * 3,
                 "std": [0.5] * 3, "interpolation": "bilinear", "crop_pct": 0.95}
    adapter_for(pruned).set_data_config(pruned, saved_cfg)
    arch = adapter_for(model).arch(model) or ArchSpec(name)
    save(tmp_path / "m", pruned, arch, plan=plan)
    again = vitprune.load(tmp_path / "m")
    assert type(again) is type(model)
    assert vitprune.adapters.data_config(again) == saved_cfg  # the preprocessing travels
    x = torch.randn(2, *vitprune.adapters.input_shape(model))
    assert torch.equal(_logits(again, x), _logits(pruned, x))
    assert vit_shape(again) == vit_shape(pruned)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dense_cost_matches_the_published_numbers(name):
    with torch.device("meta"):
        model = MODELS[name]()
    shape = vit_shape(model)
    want_params, want_gmacs = PUBLISHED[name]
    assert count_params(model) / 1e6 == pytest.approx(want_params, abs=0.05 + 0.002 * want_params)
    # within 2%, or within the printed precision (T2T-ViT-7: 1.147 G printed as 1.1)
    got = macs(shape).total / 1e9
    assert abs(got - want_gmacs) <= max(0.02 * want_gmacs, 0.05)
