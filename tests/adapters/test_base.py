"""The shared block slicing (``vitprune/adapters/base.py``): an MLP is its matrices."""

import torch
from torch import nn

from vitprune.adapters.base import BlockParts
from vitprune.adapters.timm_vit import TimmViTAdapter
from vitprune.models import build_model


class _Gated(TimmViTAdapter):
    """timm blocks given a second input matrix of the MLP (a gate beside ``fc1``)."""

    def parts(self, block: nn.Module) -> BlockParts:
        p = super().parts(block)
        return BlockParts(p.qkv, p.proj, (p.mlp_in[0], block.gate), p.mlp_out)


def test_every_input_matrix_of_the_mlp_is_sliced_by_rows_and_the_output_by_columns():
    torch.manual_seed(0)
    block = build_model("fmnist_vit_tiny").blocks[0]
    hidden, width = block.mlp.fc1.out_features, block.mlp.fc1.in_features
    block.gate = nn.Linear(width, hidden)
    before = {n: m.weight.detach().clone() for n, m in
              (("fc1", block.mlp.fc1), ("gate", block.gate), ("fc2", block.mlp.fc2))}
    keep = [5, 0, hidden - 1]
    _Gated().prune_block(block, None, keep, head_dim=block.attn.head_dim)
    assert torch.equal(block.mlp.fc1.weight, before["fc1"][keep])
    assert torch.equal(block.gate.weight, before["gate"][keep])
    assert torch.equal(block.mlp.fc2.weight, before["fc2"][:, keep])
    assert block.gate.out_features == block.mlp.fc1.out_features == 3


def test_a_saved_data_config_wins_over_the_familys_own_and_is_kept_one_way(tmp_path):
    """timm's own config comes from pretrained_cfg; a config set on the model (a saved one)
    replaces it, is held in the one attribute every family uses, and is saved with the model."""
    import vitprune
    from vitprune.adapters import adapter_for, data_config
    from vitprune.adapters.base import DATA_CONFIG_ATTR
    from vitprune.io import save
    from vitprune.models import ArchSpec, build_model

    spec = ArchSpec("vit_tiny_patch16_224", {"img_size": 32, "depth": 1, "num_classes": 3})
    model = build_model(spec).eval()
    native = data_config(model)
    assert native["mean"] == [0.5, 0.5, 0.5] and native["input_size"] == [3, 32, 32]
    mine = {**native, "mean": [0.1, 0.2, 0.3], "interpolation": "bilinear"}
    adapter_for(model).set_data_config(model, mine)
    assert getattr(model, DATA_CONFIG_ATTR) == mine and data_config(model) == mine
    assert model.pretrained_cfg["mean"] != (0.1, 0.2, 0.3)  # timm's record is not rewritten
    save(tmp_path / "m", model, spec)
    assert data_config(vitprune.load(tmp_path / "m")) == mine


def test_a_model_built_for_other_channels_than_timms_config_claims_no_normalisation():
    """timm's pretrained_cfg holds three means; for a one-channel build they describe nothing
    the model reads, so the model says nothing (the dataset's own normalisation is used)."""
    from vitprune.adapters import data_config
    from vitprune.models import ArchSpec, build_model

    for name in ("vit_tiny_patch16_224", "eva02_tiny_patch14_224"):
        grey = build_model(ArchSpec(name, {"img_size": 28, "patch_size": 7, "in_chans": 1,
                                           "depth": 1, "num_classes": 3}))
        assert data_config(grey) is None
        rgb = build_model(ArchSpec(name, {"img_size": 28, "patch_size": 7, "depth": 1,
                                          "num_classes": 3}))
        assert len(data_config(rgb)["mean"]) == 3
