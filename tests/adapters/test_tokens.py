"""Token scoring and selection: pure functions checked against naive versions, and the block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitprune.adapters.timm_vit import TokenSelectBlock
from vitprune.errors import ModelError
from vitprune.plan import TokenStage
from vitprune.surgery import cls_attention, select_tokens

B, N, H, D = 2, 11, 3, 8


def _qkv() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(B, N, 3 * H * D)


def _naive_attention(qkv, q_norm=nn.Identity(), k_norm=nn.Identity()) -> torch.Tensor:
    """The full (B, H, N, N) attention matrix, as timm's unfused path computes it."""
    q, k, _ = qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    q, k = q_norm(q), k_norm(k)
    return ((q * D**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)


def test_cls_attention_is_the_class_row_of_the_full_attention():
    qkv = _qkv()
    expected = _naive_attention(qkv)[:, :, 0].mean(dim=1)
    got = cls_attention(qkv, H, D, D**-0.5, nn.Identity(), nn.Identity())
    assert got.shape == (B, N)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert torch.allclose(got.sum(dim=1), torch.ones(B))


def test_cls_attention_applies_qk_norms_and_head_weights():
    torch.manual_seed(1)
    q_norm, k_norm = nn.LayerNorm(D), nn.LayerNorm(D)
    with torch.no_grad():
        for ln in (q_norm, k_norm):
            ln.weight.uniform_(0.5, 2.0)
            ln.bias.normal_()
    qkv = _qkv()
    full = _naive_attention(qkv, q_norm, k_norm)[:, :, 0]  # (B, H, N)
    w = torch.tensor([1.0, 0.0, 1.0])
    got = cls_attention(qkv, H, D, D**-0.5, q_norm, k_norm, head_weights=w)
    assert torch.allclose(got, (full[:, 0] + full[:, 2]) / 2, atol=1e-6, rtol=0)


def test_without_class_token_the_mean_query_scores_tokens():
    qkv = _qkv()
    q, k, _ = qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)
    q_mean = q.mean(dim=2, keepdim=True)  # (B, H, 1, D)
    expected = ((q_mean * D**-0.5) @ k.transpose(-2, -1)).softmax(-1).squeeze(2).mean(1)
    got = cls_attention(qkv, H, D, D**-0.5, None, None, has_class_token=False)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, cls_attention(qkv, H, D, D**-0.5), atol=1e-3)


def test_select_tokens_keeps_prefix_and_top_tokens_in_order_and_fuses_the_rest():
    torch.manual_seed(2)
    prefix, C, keep = 2, 5, 4
    x = torch.randn(B, N, C)
    scores = torch.rand(B, N)
    out = select_tokens(x, scores, prefix, keep, fuse=True)
    assert out.shape == (B, prefix + keep + 1, C)
    assert torch.equal(out[:, :prefix], x[:, :prefix])
    for b in range(B):
        s = scores[b, prefix:]
        top = sorted(s.topk(keep).indices.tolist())  # original order
        assert torch.equal(out[b, prefix:prefix + keep], x[b, prefix:][top])
        dropped = [i for i in range(N - prefix) if i not in top]
        w = s[dropped] / s[dropped].sum()
        fused = (w[:, None] * x[b, prefix:][dropped]).sum(0)
        assert torch.allclose(out[b, -1], fused, atol=1e-6)


def test_select_tokens_without_fusing_and_when_keeping_all():
    torch.manual_seed(3)
    x, scores = torch.randn(B, N, 4), torch.rand(B, N)
    assert select_tokens(x, scores, 1, 3, fuse=False).shape == (B, 4, 4)
    assert select_tokens(x, scores, 1, N - 1, fuse=True) is x  # keep all: no fused token


def test_prefix_scores_do_not_matter():
    torch.manual_seed(4)
    x, scores = torch.randn(B, N, 4), torch.rand(B, N)
    other = scores.clone()
    other[:, 0] = 100.0  # the class token's score is never compared with patch scores
    assert torch.equal(select_tokens(x, scores, 1, 3, True), select_tokens(x, other, 1, 3, True))


def _block_and_wrapper(tiny_vit, keep_rate):
    block = tiny_vit.blocks[1]
    stage = TokenStage(1, keep_rate)
    return block, TokenSelectBlock(block, stage, tiny_vit.num_prefix_tokens, True).eval()


def test_token_block_adopts_the_block_parts_and_keys(tiny_vit):
    block, wrapper = _block_and_wrapper(tiny_vit, 0.5)
    assert wrapper.state_dict().keys() == block.state_dict().keys()
    assert wrapper.attn is block.attn and wrapper.mlp is block.mlp
    x = torch.randn(2, 17, tiny_vit.embed_dim)  # 1 class token + 16 patches
    with torch.no_grad():
        assert wrapper(x).shape == (2, 1 + 8 + 1, tiny_vit.embed_dim)
    assert not block.attn.qkv._forward_hooks  # the capture hook lives only for the call


@torch.no_grad()
def test_token_block_that_keeps_all_is_the_block(tiny_vit):
    block, wrapper = _block_and_wrapper(tiny_vit, 1.0)
    x = torch.randn(2, 17, tiny_vit.embed_dim)
    assert torch.equal(wrapper(x), block(x))


@torch.no_grad()
def test_token_block_gives_the_same_with_fused_and_plain_attention(tiny_vit):
    _, wrapper = _block_and_wrapper(tiny_vit, 0.5)
    x = torch.randn(2, 17, tiny_vit.embed_dim)
    fused = wrapper(x)
    wrapper.attn.fused_attn = False
    assert torch.allclose(wrapper(x), fused, atol=1e-5)


def test_token_block_refuses_attention_masks(tiny_vit):
    _, wrapper = _block_and_wrapper(tiny_vit, 0.5)
    x = torch.randn(2, 17, tiny_vit.embed_dim)
    with pytest.raises(ModelError, match="attention mask"):
        wrapper(x, attn_mask=torch.zeros(17, 17))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("keep_heads", [None, (0, 2)])
def test_attention_is_timms_forward_and_returns_its_qkv(qk_norm, keep_heads, fused):
    """The token block's attention must compute what timm's Attention does (pruned or not, with
    or without q/k norms); this fails if timm's forward changes under us."""
    from timm.models.vision_transformer import Block

    from vitprune.adapters.timm_vit import TimmViTAdapter, attention

    torch.manual_seed(2)
    block = Block(24, num_heads=4, qkv_bias=True, qk_norm=qk_norm).eval()
    attn = block.attn
    if qk_norm:  # non-trivial norms, so forgetting them would show
        with torch.no_grad():
            attn.q_norm.weight.uniform_(0.5, 2.0)
            attn.k_norm.bias.uniform_(-1.0, 1.0)
    if keep_heads:
        TimmViTAdapter().prune_block(block, keep_heads, None, attn.head_dim)
    attn.fused_attn = fused
    x = torch.randn(2, 9, 24)
    with torch.no_grad():
        y, qkv = attention(attn, x)
        assert torch.allclose(y, attn(x), atol=1e-6, rtol=0)
        assert torch.equal(qkv, attn.qkv(x))
