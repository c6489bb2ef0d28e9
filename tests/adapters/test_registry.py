"""The family registry (``vitprune/adapters/__init__.py``): names reach the family that timm
says defines them, whatever the order families were registered in."""

import pytest

from vitprune import adapters
from vitprune.adapters import adapter_named, families
from vitprune.adapters.base import Adapter, timm_module
from vitprune.adapters.timm_vit import TimmViTAdapter
from vitprune.errors import ModelError


def _unused(*args, **kwargs):
    raise NotImplementedError


# a family registered after the timm ViT one, for timm's ``eva`` module: only its dispatch matters
_ToyEva = type("_ToyEva", (Adapter,), {
    **{name: _unused for name in Adapter.__abstractmethods__},
    "family": "toy-eva", "describes": "toy EVA names", "timm_modules": ("eva",)})


@pytest.fixture
def toy_eva(monkeypatch):
    monkeypatch.setattr(adapters, "_ADAPTERS", [*families()])
    return adapters.register(_ToyEva())


def test_a_family_registered_later_gets_its_modules_names(toy_eva):
    assert families()[-1] is toy_eva  # registered after the timm ViT family
    assert adapter_named("eva02_tiny_patch14_224") is toy_eva
    assert adapter_named("eva02_small_patch14_224.mim_in22k") is toy_eva  # a tagged name too
    assert isinstance(adapter_named("deit_tiny_patch16_224"), TimmViTAdapter)
    assert "eva02_tiny_patch14_224" in toy_eva.names()


@pytest.mark.parametrize("name, module", [("eva02_tiny_patch14_224", "eva"),
                                          ("swin_tiny_patch4_window7_224", "swin_transformer")])
def test_other_timm_modules_no_longer_reach_the_vit_family(name, module):
    assert timm_module(name) == module
    assert not any(isinstance(a, TimmViTAdapter) and a.knows(name) for a in families())
    with pytest.raises(ModelError, match=f"defined in timm's {module} module, which no vitprune "
                                         "family prunes; vitprune prunes: .*T2T-ViT"):
        adapter_named(name)


def test_the_vit_family_knows_its_modules_and_registered_configs():
    vit = TimmViTAdapter()
    for name in ("vit_small_patch14_dinov2", "deit3_small_patch16_224", "deit_tiny_patch16_224",
                 "fmnist_vit_d12", "vit_base_patch16_siglip_224"):
        assert vit.knows(name), name
    assert not vit.knows("resnet18") and not vit.knows("t2t_vit_14")
    names = vit.names()
    assert "deit_base_distilled_patch16_224" in names and "fmnist_vit_d12" in names
    assert not any(n.startswith(("eva02", "swin")) for n in names)
    assert timm_module("no_such_model") is None
