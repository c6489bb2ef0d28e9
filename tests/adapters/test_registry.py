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


# a family registered after every other, for timm's ``levit`` module (which no vitprune family
# prunes): only its dispatch matters
_ToyLevit = type("_ToyLevit", (Adapter,), {
    **{name: _unused for name in Adapter.__abstractmethods__},
    "family": "toy-levit", "describes": "toy LeViT names", "timm_modules": ("levit",)})


@pytest.fixture
def toy_levit(monkeypatch):
    monkeypatch.setattr(adapters, "_ADAPTERS", [*families()])
    return adapters.register(_ToyLevit())


def test_a_family_registered_later_gets_its_modules_names(toy_levit):
    assert families()[-1] is toy_levit  # registered after the timm ViT family
    assert adapter_named("levit_128") is toy_levit
    assert adapter_named("levit_128.fb_dist_in1k") is toy_levit  # a tagged name too
    assert isinstance(adapter_named("deit_tiny_patch16_224"), TimmViTAdapter)
    assert "levit_128" in toy_levit.names()


def test_eva_and_swin_names_reach_their_families_tagged_or_not():
    from vitprune.adapters.timm_eva import EvaAdapter
    from vitprune.adapters.timm_swin import SwinAdapter

    for name in ("eva02_tiny_patch14_224", "eva02_small_patch14_224.mim_in22k",
                 "vit_medium_patch16_rope_reg1_gap_256"):
        assert timm_module(name) == "eva"
        assert isinstance(adapter_named(name), EvaAdapter), name
    for name in ("swin_tiny_patch4_window7_224", "swin_base_patch4_window12_384.ms_in22k"):
        assert isinstance(adapter_named(name), SwinAdapter), name


@pytest.mark.parametrize("name, module", [("eva02_tiny_patch14_224", "eva"),
                                          ("swin_tiny_patch4_window7_224", "swin_transformer")])
def test_other_timm_modules_no_longer_reach_the_vit_family(name, module):
    assert timm_module(name) == module
    assert not any(isinstance(a, TimmViTAdapter) and a.knows(name) for a in families())


def test_a_module_no_family_prunes_is_refused_by_its_name():
    with pytest.raises(ModelError, match="defined in timm's levit module, which no vitprune "
                                         "family prunes; vitprune prunes: .*T2T-ViT.*Swin"):
        adapter_named("levit_128")


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
