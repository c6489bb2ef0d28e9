import json

import pytest
import torch

import vitprune
from vitprune import fsutil
from vitprune.errors import ModelError
from vitprune.io import load, resolve_model, save
from vitprune.models import ArchSpec


def test_save_load_reproduces_logits(tmp_path, tiny_vit):
    save(tmp_path / "m", tiny_vit, ArchSpec("fmnist_vit_tiny"), meta={"note": "x"})
    again = load(tmp_path / "m")
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(again(x), tiny_vit(x))
    model, arch, plan = resolve_model(str(tmp_path / "m"))
    assert arch.name == "fmnist_vit_tiny" and plan is None
    assert torch.equal(model(x), tiny_vit(x))


def test_replaced_weights_are_detected(tmp_path, tiny_vit):
    save(tmp_path / "a", tiny_vit, ArchSpec("fmnist_vit_tiny"))
    torch.manual_seed(9)
    other = type(tiny_vit)(**{**tiny_vit_kwargs()})
    save(tmp_path / "b", other, ArchSpec("fmnist_vit_tiny"))
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(ModelError, match="checksum"):
        load(tmp_path / "a")


def tiny_vit_kwargs():
    from vitprune.models import SMALL_CONFIGS

    return SMALL_CONFIGS["fmnist_vit_tiny"]


def test_missing_weights_or_bad_json_are_explained(tmp_path, tiny_vit):
    save(tmp_path / "m", tiny_vit, ArchSpec("fmnist_vit_tiny"))
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        load(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        load(tmp_path / "m")
    with pytest.raises(ModelError, match="not a vitprune model directory"):
        load(tmp_path)


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    fsutil.write_json(tmp_path / "a.json", {"v": 1})

    def boom(p):
        p.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        fsutil.atomic_write(tmp_path / "a.json", boom)
    with pytest.raises(RuntimeError):
        fsutil.atomic_write(tmp_path / "new.json", boom)
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    # written files get the ordinary permissions (umask), not mkstemp's private 0600
    assert (tmp_path / "a.json").stat().st_mode & 0o044 == 0o644 & 0o044 & ~_umask()


def _umask() -> int:
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def test_a_pruned_model_keeps_its_parents_data_config(tmp_path):
    from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from tests.helpers import random_plan
    from vitprune.adapters import data_config, vit_shape
    from vitprune.io.model_dir import read_config
    from vitprune.jobs import info_model
    from vitprune.models import ArchSpec, build_model
    from vitprune.pipeline import source_data_config
    from vitprune.surgery import prune

    arch = ArchSpec("vit_base_patch16_clip_224.openai", {"depth": 2, "img_size": 32})
    dense = build_model(arch).eval()
    small = prune(dense, random_plan(vit_shape(dense), 0, stages=(1,)))
    out = vitprune.save(tmp_path / "m", small, arch, plan=random_plan(vit_shape(dense), 0,
                                                                       stages=(1,)))
    saved = read_config(out)["data_config"]
    assert saved["mean"] == list(OPENAI_CLIP_MEAN) and saved["std"] == list(OPENAI_CLIP_STD)
    assert saved["input_size"] == [3, 32, 32]
    assert data_config(vitprune.load(out)) == saved == source_data_config(out)
    info = info_model(out)
    assert info["data_config"] == saved and info["pruned"]
    assert info["heads"] == [b.heads for b in vit_shape(small).blocks]
