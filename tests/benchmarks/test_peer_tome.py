"""The token-merging peer (benchmarks/peer_tome.py): ToMe's matching, size-weighted merges and
proportional attention, checked against what the paper defines."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peer_tome import (  # noqa: E402
    apply_tome,
    bipartite_merge,
    proportional_attention,
    r_for_budget,
    r_schedule,
    tome_shape,
)

from tests.helpers import measured_macs  # noqa: E402
from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.cost import macs, token_counts  # noqa: E402
from vitprune.models import build_model  # noqa: E402


def test_the_most_similar_pairs_merge_into_size_weighted_means():
    # A = tokens 0, 2, 4; B = tokens 1, 3, 5. Token 2 is token 5's twin; 0 and 4 point elsewhere.
    metric = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0], [0, 1, 1],
                            [0, 0, 1]]])
    x = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1) * 10
    size = torch.tensor([[[1.0], [1], [3], [1], [1], [1]]])
    out, s = bipartite_merge(metric, x, size, r=1)
    assert out.shape == (1, 5, 1) and s.sum() == size.sum()  # no patch lost
    # the unmerged A tokens (0 and 4, most similar first) then B (1, 3, 5), token 2 (size 3)
    # averaged into its twin 5
    assert sorted(out[0, :2, 0].tolist()) == [0.0, 40.0]
    assert torch.allclose(out[0, 2:, 0], torch.tensor([10.0, 30, (3 * 20 + 50) / 4]))
    assert s[0, :, 0].tolist() == [1, 1, 1, 1, 4]


def test_proportional_attention_sees_a_merged_token_as_the_tokens_it_replaced():
    """Attention over [a, a, b] (unit sizes) equals attention over [a, b] with sizes [2, 1]."""
    torch.manual_seed(0)
    model = build_model("fmnist_vit_tiny").eval()
    attn = model.blocks[0].attn
    a, b = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    full, _ = proportional_attention(attn, torch.cat([a, a, b], 1), None)
    merged, _ = proportional_attention(attn, torch.cat([a, b], 1), torch.tensor([[[2.0], [1.0]]]))
    assert torch.allclose(full[:, 1:], merged, atol=1e-5)
    plain, _ = proportional_attention(attn, torch.cat([a, b], 1), None)
    assert not torch.allclose(plain, merged, atol=1e-3)  # without the sizes it would differ


def test_r_zero_is_the_dense_model_and_r_merges_as_counted():
    torch.manual_seed(0)
    model = build_model("deit_tiny_patch16_224", img_size=64, depth=3, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(apply_tome(model, 0)(x), model(x), atol=1e-5)
        tome = apply_tome(model, [3, 2, 4])
        seen = []
        handles = [blk.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
                   for blk in tome.blocks]
        tome(x)
        for h in handles:
            h.remove()
    shape = tome_shape(vit_shape(model), [3, 2, 4])
    assert seen == [17 - 3, 14 - 2, 12 - 4] == [n for _, n in token_counts(shape)]
    # the cost is vitprune's count of those tokens, plus the matching vitprune leaves out
    matching = sum((n - 1) // 2 * ((n - 1) - (n - 1) // 2) * 64
                   for n, _ in token_counts(shape))
    assert measured_macs(tome, x[:1]) - macs(shape).total <= matching + 3 * 17 * 64
    assert torch.equal(tome.state_dict()["blocks.0.attn.qkv.weight"],
                       model.state_dict()["blocks.0.attn.qkv.weight"])


def test_the_constant_r_meeting_a_budget_is_the_smallest():
    shape = vit_shape(build_model("fmnist_vit_d12"))
    r = r_for_budget(shape, 0.6)
    depth = len(shape.blocks)
    assert macs(tome_shape(shape, [r] * depth)).total <= 0.6 * macs(shape).total
    assert macs(tome_shape(shape, [r - 1] * depth)).total > 0.6 * macs(shape).total


def test_a_tome_model_is_costed_and_fine_tuned_by_vitprunes_own_code(synth_splits, tmp_path):
    from dataclasses import replace

    from vitprune.pipeline import finetune, test_metrics
    from vitprune.train import FINETUNE

    torch.manual_seed(0)
    dense = build_model("fmnist_vit_tiny").eval()
    tome = apply_tome(dense, 4)
    assert [n for _, n in token_counts(vit_shape(tome))] == [
        n for _, n in token_counts(tome_shape(vit_shape(dense), [4] * 4))]
    before = {k: v.clone() for k, v in tome.state_dict().items()}
    finetune(tome, dense, synth_splits, replace(FINETUNE, epochs=1, max_steps_per_epoch=2),
             tmp_path / "ft", progress=False)
    assert any(not torch.equal(before[k], v) for k, v in tome.state_dict().items())
    got = test_metrics(tome, synth_splits)
    assert got["macs"] == macs(tome_shape(vit_shape(dense), [4] * 4)).total < macs(
        vit_shape(dense)).total


def test_the_per_block_schedule_lands_just_under_the_budget():
    shape = vit_shape(build_model("fmnist_vit_d12"))
    dense = macs(shape).total
    for budget in (0.6, 0.45):
        rs = r_schedule(shape, budget)
        kept = macs(tome_shape(shape, rs)).total / dense
        assert budget - 0.02 <= kept <= budget, (budget, rs, kept)
        assert rs == sorted(rs, reverse=True) and max(rs) - min(rs) <= 1
