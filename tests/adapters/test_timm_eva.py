"""timm's Eva family (vitprune/adapters/timm_eva.py): EVA-02 with a packed or split SwiGLU MLP
(its inner LayerNorm too), separate q/k/v, rotary embeddings and the RoPE ViTs' GELU MLP with
register tokens: masked == pruned for heads, neurons, depth and tokens, the rotary table
gathered with the kept tokens, cost against torch's FLOP counter and the published figures."""

from __future__ import annotations

import pytest
import torch

import vitprune
from tests.helpers import masked_and_pruned, measured_macs, random_plan, sharpen
from vitprune.adapters import adapter_for, input_shape, vit_shape
from vitprune.adapters.base import DroppedHalf
from vitprune.adapters.timm_eva import PrunedEvaAttention, gather_rope
from vitprune.cost import macs
from vitprune.errors import ModelError
from vitprune.models import ArchSpec, build_model
from vitprune.plan import BlockPlan, PrunePlan, TokenStage, planned_shape
from vitprune.surgery import count_params, prune

# tiny versions of the four layouts, 4x4 patches: EVA-02-T (packed GluMlp, fused qkv with q/v
# biases), EVA-02-B (split SwiGLU with its inner norm, separate q/k/v, the attention's inner
# norm too), a RoPE ViT (GELU Mlp, a register token and no class token, average pool, layer scale)
LAYOUTS = {
    "eva02_packed": ("eva02_tiny_patch14_224",
                     dict(img_size=56, depth=3, num_classes=10, ref_feat_shape=(4, 4))),
    "eva02_split": ("eva02_base_patch14_224",
                    dict(img_size=56, depth=3, embed_dim=64, num_heads=4, num_classes=10,
                         ref_feat_shape=(4, 4), scale_attn_inner=True)),
    "rope_vit": ("vit_medium_patch16_rope_reg1_gap_256",
                 dict(img_size=64, depth=3, embed_dim=64, num_heads=4, num_classes=10,
                      init_values=0.5)),
    # RoPE-ViT (AttentionRope, its own fused qkv bias, a class token, no absolute positions)
    "rope_axial": ("vit_small_patch16_rope_224",
                   dict(img_size=64, depth=3, embed_dim=64, num_heads=4, num_classes=10,
                        init_values=0.5)),
}


def _model(layout: str, **over) -> torch.nn.Module:
    name, kw = LAYOUTS[layout]
    torch.manual_seed(0)
    model = sharpen(build_model(name, **{**kw, **over}).eval())
    with torch.no_grad():  # logits of order ten, so that a 1e-4 agreement means something
        model.head.weight.normal_(0, 1.0)
        for name, p in model.named_parameters():  # norms away from 1 and 0: slicing shows
            if "norm" in name and p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def _x(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    return torch.randn(n, *input_shape(model), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_masked_equals_pruned_with_heads_neurons_and_tokens_cut(layout):
    model = _model(layout)
    shape = vit_shape(model)
    plan = random_plan(shape, seed=3, stages=(1, 2), keep_rate=0.6)
    x = _x(model)
    dense, masked, small, pruned = masked_and_pruned(model, plan, x)
    assert (masked - pruned).abs().max().item() <= 1e-5 * masked.abs().max().item()
    assert (masked - dense).abs().max().item() > 1e-2  # the plan changed the function
    got = vit_shape(small)
    assert [b.heads for b in got.blocks] == [len(b.heads) for b in plan.blocks]
    assert [b.mlp_hidden for b in got.blocks] == [len(b.neurons) for b in plan.blocks]
    assert got == planned_shape(shape, plan)
    assert type(small) is type(model)
    from timm.layers import AttentionRope

    assert all(isinstance(b.attn, (PrunedEvaAttention, AttentionRope)) for b in small.blocks)
    assert count_params(model, plan) == sum(p.numel() for p in small.parameters())
    parts = adapter_for(small).parts(small.blocks[0])
    kept = len(plan.blocks[0].neurons)
    assert all(w.shape[0] == kept for w in parts.mlp_in_weights())
    if parts.mlp_norm is not None:  # the inner norm is sliced with its units
        assert parts.mlp_norm.weight.shape == (kept,) and parts.mlp_norm.normalized_shape == (kept,)


@pytest.mark.parametrize("layout", ["eva02_packed", "eva02_split"])
def test_depth_pruning_drops_an_attention_and_an_mlp(layout):
    model = _model(layout)
    shape = vit_shape(model)
    base = random_plan(shape, seed=5)
    blocks = list(base.blocks)
    blocks[0] = BlockPlan((), blocks[0].neurons)  # no head: the attention goes
    blocks[1] = BlockPlan(blocks[1].heads, ())  # no neuron: the MLP (and its norm) goes
    plan = PrunePlan(tuple(blocks))
    x = _x(model)
    dense, masked, small, pruned = masked_and_pruned(model, plan, x)
    assert (masked - pruned).abs().max().item() <= 1e-5 * masked.abs().max().item()
    assert isinstance(small.blocks[0].attn, DroppedHalf)
    assert isinstance(small.blocks[1].mlp, DroppedHalf)
    got = vit_shape(small).blocks
    assert (got[0].heads, got[1].mlp_hidden) == (0, 0)
    assert count_params(model, plan) == sum(p.numel() for p in small.parameters())


def test_kept_tokens_keep_their_own_rotary_positions(monkeypatch):
    """An independent reference: timm's own blocks, with the dropped tokens masked out of
    attention after the stage, compute for the kept tokens what the token-selecting model
    computes. That holds only if every kept token still rotates by its own grid position."""
    import vitprune.adapters.timm_eva as eva

    model = _model("eva02_packed", global_pool="token")
    shape = vit_shape(model)
    plan = PrunePlan(tuple(BlockPlan(tuple(range(b.heads)), tuple(range(b.mlp_hidden)))
                           for b in shape.blocks), (TokenStage(0, 0.5, fuse=False),))
    seen = []
    real = eva.gather_rope
    monkeypatch.setattr(eva, "gather_rope", lambda r, kept, f: seen.append(kept) or real(r, kept, f))
    x = _x(model, 3)
    with torch.no_grad():
        got = prune(model, plan).eval()(x)
        (kept,) = seen  # (B, keep) patch positions
        assert kept.shape == (3, 8) and not torch.equal(kept[0], kept[1])  # per image
        t = model.norm_pre(model._pos_embed(model.patch_embed(x))[0])
        rope = model.rope.get_embed()
        t = model.blocks[0](t, rope=rope)
        allowed = torch.zeros(3, t.shape[1], dtype=torch.bool)
        allowed[:, 0] = True  # the class token
        allowed.scatter_(1, kept + 1, True)
        mask = allowed[:, None, None, :].expand(-1, 1, t.shape[1], -1)
        for blk in model.blocks[1:]:
            t = blk(t, rope=rope, attn_mask=mask)
        ref = model.forward_head(model.norm(t))
    assert (got - ref).abs().max().item() < 1e-4
    assert got.abs().max().item() > 1.0


def test_the_rotary_table_is_gathered_per_image_and_the_fused_token_is_not_rotated():
    table = torch.arange(5 * 4, dtype=torch.float32).reshape(5, 4)  # 5 patches, (sin|cos) of 2
    kept = torch.tensor([[0, 3], [1, 4]])
    got = gather_rope(table, kept, fuse=True)
    assert got.shape == (2, 1, 3, 4)
    assert torch.equal(got[0, 0, :2], table[[0, 3]]) and torch.equal(got[1, 0, :2], table[[1, 4]])
    assert torch.equal(got[:, 0, 2], torch.tensor([[0.0, 0, 1, 1]] * 2))  # sin 0, cos 1
    again = gather_rope(got, torch.tensor([[1], [0]]), fuse=False)  # a second stage
    assert torch.equal(again[:, 0, 0], torch.stack([table[3], table[1]]))


@pytest.mark.parametrize("layout", ["eva02_packed", "eva02_split", "rope_axial"])
def test_macs_match_torchs_flop_counter_dense_and_pruned(layout):
    model = _model(layout)
    shape = vit_shape(model)
    x = _x(model, 1)
    assert macs(shape).total == measured_macs(model, x)
    plan = random_plan(shape, seed=6, stages=(1,), keep_rate=0.5)
    small = prune(model, plan).eval()
    analytic, measured = macs(vit_shape(small)).total, measured_macs(small, x)
    # the class token's scores over the tokens (heads x N x head_dim) are left out, as for ViT
    assert 0 <= measured - analytic < 0.01 * analytic
    assert analytic < 0.8 * macs(shape).total


# published (parameters, GMACs at 224): EVA-02 paper / timm's model cards
PUBLISHED = {"eva02_tiny_patch14_224": (5_502_144, 1.7), "eva02_small_patch14_224": (21.62e6, 6.1)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_dense_cost_matches_the_published_figures(name):
    with torch.device("meta"):
        model = build_model(name)
    params, gmacs = PUBLISHED[name]
    assert count_params(model) == pytest.approx(params, abs=5e3)
    assert macs(vit_shape(model)).total / 1e9 == pytest.approx(gmacs, rel=0.01)


def test_save_then_load_gives_the_same_model_with_its_token_stages(tmp_path):
    from vitprune.io import save

    model = _model("eva02_split")
    plan = random_plan(vit_shape(model), seed=7, stages=(1,), keep_rate=0.5)
    small = prune(model, plan).eval()
    name, kw = LAYOUTS["eva02_split"]
    save(tmp_path / "m", small, ArchSpec(name, kw), plan=plan)
    again = vitprune.load(tmp_path / "m").eval()
    x = _x(model)
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
    assert vit_shape(again) == vit_shape(small)


def test_magnitude_scores_one_value_per_unit_of_a_packed_gated_mlp():
    from vitprune.scoring import get_criterion

    model = _model("eva02_packed")
    scores = get_criterion("magnitude")(model)
    shape = vit_shape(model)
    assert [len(s.neurons) for s in scores] == [b.mlp_hidden for b in shape.blocks]
    fc1 = model.blocks[0].mlp.fc1.weight.detach().double().abs()
    H = shape.blocks[0].mlp_hidden
    want = fc1[:H].sum(1) + fc1[H:].sum(1) + model.blocks[0].mlp.fc2.weight.detach().double(
    ).abs().sum(0)
    assert torch.allclose(torch.as_tensor(scores[0].neurons, dtype=torch.double), want)


def test_models_the_family_cannot_prune_are_refused_by_name():
    with pytest.raises(ModelError, match="grouped-query attention"):
        vit_shape(build_model("vit_small_patch16_rope_224", img_size=32, depth=1,
                              qkv_fused=False, num_kv_heads=2))
    model = _model("eva02_packed")
    with pytest.raises(ModelError, match="token stages on a mixed-RoPE"):
        model.rope_mixed = True
        prune(model, random_plan(vit_shape(model), 0, stages=(1,)))


def test_every_command_runs_on_an_eva_model(tmp_path, capsys):
    """latency-table, compress under a latency budget with depth and a token stage, info and
    export, from the command line on a small EVA-02 for 28x28 grey images."""
    import json

    from vitprune.cli import main

    model = ["--model", "eva02_tiny_patch14_224", "--model-args", "img_size=28", "patch_size=4",
             "in_chans=1", "num_classes=10", "embed_dim=32", "depth=3", "num_heads=2",
             "ref_feat_shape=[7,7]"]
    from tests.helpers import synthetic_table
    from vitprune.latency import LatencyTable

    measured = tmp_path / "measured.json"
    assert main(["latency-table", *model, "--batch", "4", "--token-points", "3",
                 "--neuron-points", "3", "--repeats", "1", "--out", str(measured), "--quiet"]) == 0
    got = LatencyTable.load(measured)
    assert got.heads == (1, 2) and got.tokens[-1] == 50 and got.neurons[-1] == 85
    # the search runs on a table whose times follow the work (measured times of so small a
    # model are overhead and noise: a latency budget on them may be out of reach)
    table = tmp_path / "lat.json"
    dense = build_model("eva02_tiny_patch14_224", img_size=28, patch_size=4, in_chans=1,
                        num_classes=10, embed_dim=32, depth=3, num_heads=2, ref_feat_shape=(7, 7))
    table.write_text(json.dumps(synthetic_table(vit_shape(dense)).to_dict()))
    out = tmp_path / "c"
    assert main(["compress", *model, "--data", "synthetic", "--budget", "0.7", "--budget-metric",
                 "latency", "--latency-table", str(table), "--depth", "--token-blocks", "1",
                 "--trials", "4", "--init", "2", "--calib-images", "64", "--score-images", "64",
                 "--epochs", "1", "--max-steps-per-epoch", "2", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(out / "model"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["class"] == "Eva" and info["pruned"]
    assert main(["export", "--model", str(out / "model"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


@pytest.mark.parametrize("layout", ["timm", "authors"])
def test_checkpoints_in_timms_and_the_authors_key_layouts_load(tmp_path, layout):
    from safetensors.torch import save_file

    from vitprune.io.model_dir import resolve_model

    name, kw = LAYOUTS["eva02_split"]
    trained = _model("eva02_split")
    sd = trained.state_dict()
    if layout == "authors":  # EVA-02's own names for the SwiGLU matrices and the inner norms
        renames = (("mlp.fc1_g", "mlp.w1"), ("mlp.fc1_x", "mlp.w2"), ("mlp.fc2", "mlp.w3"),
                   ("mlp.norm", "mlp.ffn_ln"), ("attn.norm", "attn.inner_attn_ln"))
        for old, new in renames:
            sd = {k.replace(old, new): v for k, v in sd.items()}
        assert not set(sd) >= set(trained.state_dict())
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(f))
    from vitprune.models import ModelSource

    model, _, _ = resolve_model(ModelSource(name, str(f), args=kw))
    x = _x(trained)
    with torch.no_grad():
        assert torch.equal(model(x), trained(x))
