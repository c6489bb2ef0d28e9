"""timm's SAM image encoder (vitprune/adapters/timm_sam.py): heads, neurons and depth pruned
exactly in windowed and global blocks with decomposed relative positions; the cost (neck and
relative positions included) equal to torch's FLOP counter; token stages refused."""

from __future__ import annotations

import json

import pytest
import torch

import vitprune
from tests.helpers import masked_and_pruned, measured_macs, random_plan, sharpen
from vitprune.adapters import adapter_for, input_shape, vit_shape
from vitprune.adapters.base import DroppedHalf
from vitprune.cli import main
from vitprune.cost import macs
from vitprune.errors import ModelError, PlanError
from vitprune.models import ArchSpec, build_model
from vitprune.plan import BlockPlan, PrunePlan, TokenStage
from vitprune.surgery import count_params, prune

NAME = "samvit_base_patch16"
# an 8 x 8 grid; blocks 0 and 2 in 3 x 3 windows (the grid padded to 9 x 9), block 1 global
KW = dict(img_size=64, patch_size=8, embed_dim=32, depth=3, num_heads=4, window_size=3,
          global_attn_indexes=(1,), neck_chans=16, num_classes=10)


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    model = sharpen(build_model(NAME, **KW).eval())
    with torch.no_grad():
        model.head.fc.weight.normal_(0, 4.0)  # logits of order ten
        for b in model.blocks:  # relative positions that matter
            b.attn.rel_pos_h.normal_()
            b.attn.rel_pos_w.normal_()
    return model


def _x(model, n=2):
    return torch.randn(n, *input_shape(model), generator=torch.Generator().manual_seed(1))


def test_the_shape_holds_windowed_and_global_blocks(sam):
    shape = vit_shape(sam)
    assert [b.window for b in shape.blocks] == [(3, 3), None, (3, 3)]
    assert all(b.grid == (8, 8) and b.rel_pos for b in shape.blocks)
    assert shape.blocks[0].window_tokens() == (81, 9)
    assert shape.between_macs > 0  # the neck and the head are counted


def test_masked_equals_pruned_with_heads_neurons_and_depth_cut(sam):
    shape = vit_shape(sam)
    x = _x(sam)
    dense, masked, small, pruned = masked_and_pruned(sam, random_plan(shape, seed=3), x)
    assert (masked - pruned).abs().max().item() <= 1e-5 * masked.abs().max().item()
    assert (masked - dense).abs().max().item() > 1e-2
    assert type(small) is type(sam)
    blocks = list(random_plan(shape, seed=4).blocks)
    blocks[0] = BlockPlan((), blocks[0].neurons)
    blocks[1] = BlockPlan(blocks[1].heads, ())
    plan = PrunePlan(tuple(blocks))
    dense, masked, small, pruned = masked_and_pruned(sam, plan, x)
    assert (masked - pruned).abs().max().item() <= 1e-5 * masked.abs().max().item()
    assert isinstance(small.blocks[0].attn, DroppedHalf) and isinstance(small.blocks[1].mlp,
                                                                          DroppedHalf)
    assert count_params(sam, plan) == sum(p.numel() for p in small.parameters())


def test_macs_equal_torchs_flop_counter_dense_and_pruned(sam):
    shape = vit_shape(sam)
    x = _x(sam, 1)
    assert macs(shape).total == measured_macs(sam, x)
    small = prune(sam, random_plan(shape, seed=5)).eval()
    assert macs(vit_shape(small)).total == measured_macs(small, x)
    assert count_params(sam) == sum(p.numel() for p in sam.parameters())


def test_token_stages_are_refused(sam, tmp_path, capsys):
    shape = vit_shape(sam)
    with pytest.raises(PlanError, match="windowed attention"):
        prune(sam, random_plan(shape, seed=1, stages=(1,)))
    with pytest.raises(ModelError, match="SAM"):
        adapter_for(sam).token_block(sam, 1, TokenStage(1, 0.5))
    plan_file = tmp_path / "plan.json"
    random_plan(shape, seed=1, stages=(1,)).save(plan_file)
    args = ["--model", NAME, "--model-args", *(f"{k}={json.dumps(v)}" for k, v in KW.items())]
    assert main(["prune", *args, "--plan", str(plan_file), "--out", str(tmp_path / "p")]) == 2
    assert "windowed attention" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_save_then_load_gives_the_same_model(sam, tmp_path):
    from vitprune.io import save

    plan = random_plan(vit_shape(sam), seed=7)
    small = prune(sam, plan).eval()
    save(tmp_path / "m", small, ArchSpec(NAME, KW), plan=plan)
    again = vitprune.load(tmp_path / "m").eval()
    mine, theirs = small.state_dict(), again.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    x = _x(sam)
    with torch.no_grad():  # (the fixture's attention may run unfused: a FLOP count turned it off)
        ref = small(x)
        assert (again(x) - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
