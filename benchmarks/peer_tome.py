"""The token-merging peer of the evidence benchmark: ToMe (Bolya et al., "Token Merging: Your ViT
but Faster", ICLR 2023), written here from the paper for timm ``VisionTransformer``s.

In every block, between attention and MLP, ToMe merges ``r`` pairs of patch tokens:

* **bipartite soft matching**: the tokens are split alternately into sets A and B; each A token
  is joined by an edge to its most similar B token (cosine similarity of the attention's keys,
  averaged over heads); the ``r`` most similar edges are merged, each A token averaged into its
  B token. Prefix tokens (class, distillation, register) are never merged.
* **size-weighted averages**: every token carries a size (the patches it stands for); a merge
  averages by size and adds the sizes.
* **proportional attention**: ``softmax(q k^T * scale + log size)``, so a merged token is
  attended to as the tokens it replaced would have been.

``r`` may differ per block (:func:`apply_tome` takes one per block). The model keeps its
submodules and state_dict keys, so it fine-tunes as it is (the paper's "trained with ToMe"
setting) or runs training-free on a model trained dense. Each ToMe block declares the tokens it
keeps as a token stage without fused token, so vitprune's shape, cost, fine-tuning and
evaluation take the model as it is.

Its cost is vitprune's cost of the same token counts (``n - r`` tokens leave each block:
:func:`tome_shape`); the matching's own products (``(n/2)^2 * head_dim`` per block) are left out,
as token selection's are.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from vitprune.cost import VitShape, macs
from vitprune.plan import TokenStage


def bipartite_merge(metric: torch.Tensor, x: torch.Tensor, size: torch.Tensor,
                    r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``r`` token pairs of ``x`` by bipartite soft matching on ``metric``.

    Args:
        metric: (B, N, d) similarity features (the keys, averaged over heads).
        x: (B, N, C) tokens; size: (B, N, 1) how many patches each token stands for.
        r: pairs to merge (at most N // 2).

    Returns:
        ((B, N - r, C) tokens, (B, N - r, 1) sizes): the unmerged A tokens, then the B tokens
        (each the size-weighted mean of itself and the A tokens merged into it).
    """
    r = min(r, x.shape[1] // 2)
    if r <= 0:
        return x, size
    metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, b = metric[:, ::2], metric[:, 1::2]
    node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)  # (B, Na): best B for each A
    order = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx, src_idx = order[:, r:], order[:, :r]  # A tokens kept / merged
    dst_idx = node_idx[..., None].gather(1, src_idx)

    def merge(t: torch.Tensor) -> torch.Tensor:
        src, dst = t[:, ::2], t[:, 1::2]
        c = t.shape[-1]
        unm = src.gather(1, unm_idx.expand(-1, -1, c))
        moved = src.gather(1, src_idx.expand(-1, -1, c))
        dst = dst.scatter_reduce(1, dst_idx.expand(-1, -1, c), moved, reduce="sum")
        return torch.cat([unm, dst], dim=1)

    total = merge(x * size)
    size = merge(size)
    return total / size, size


def proportional_attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention`` with ``log(size)`` added to every key's logit: ((B, N, C) output,
    (B, N, head_dim) keys averaged over heads, ToMe's similarity metric)."""
    B, N, _ = x.shape
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None if size is None else size.log()[:, None, None, :, 0].to(q.dtype)  # (B,1,1,N)
    drop = attn.attn_drop.p if attn.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop, scale=attn.scale)
    y = attn.norm(y.transpose(1, 2).reshape(B, N, -1))
    return attn.proj_drop(attn.proj(y)), k.mean(dim=1)


class ToMeBlock(nn.Module):
    """A timm ``Block`` that merges ``r`` token pairs between its attention and its MLP (same
    submodules and state_dict keys). The tokens' sizes travel in ``state``, shared by the
    model's ToMe blocks and reset by the first."""

    PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")

    def __init__(self, block: nn.Module, r: int, num_prefix: int, state: dict,
                 first: bool, stage: TokenStage) -> None:
        super().__init__()
        for name in self.PARTS:
            setattr(self, name, getattr(block, name))
        self.r, self.num_prefix, self.state, self.first = r, num_prefix, state, first
        # what vitprune's shape reads: the block keeps n - r of its n patch tokens (no fused
        # token), so vit_shape, the cost model, fine-tuning and evaluation see ToMe's counts
        self.token_stage = stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            self.state["size"] = None
        size = self.state["size"]
        y, k = proportional_attention(self.attn, self.norm1(x), size)
        x = x + self.drop_path1(self.ls1(y))
        if self.r > 0:
            p = self.num_prefix
            if size is None:
                size = x.new_ones(x.shape[0], x.shape[1], 1)
            merged, msize = bipartite_merge(k[:, p:], x[:, p:], size[:, p:], self.r)
            x = torch.cat([x[:, :p], merged], dim=1)
            size = torch.cat([size[:, :p], msize], dim=1)
            self.state["size"] = size
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def apply_tome(model: nn.Module, r: int | Sequence[int]) -> nn.Module:
    """A copy of the timm ViT ``model`` that merges ``r`` (one per block, or the same for every
    block) token pairs in each block; ``model`` is left untouched."""
    new = copy.deepcopy(model)
    depth = len(new.blocks)
    rs = [int(r)] * depth if isinstance(r, int) else [int(v) for v in r]
    if len(rs) != depth or any(v < 0 for v in rs):
        raise ValueError(f"r must be one count >= 0 or one per block ({depth}), got {r!r}")
    state: dict = {"size": None}
    n = new.patch_embed.num_patches
    for i, blk in enumerate(new.blocks):
        r_i = min(rs[i], n // 2)
        stage = TokenStage(i, (n - r_i) / n, fuse=False)
        new.blocks[i] = ToMeBlock(blk, r_i, new.num_prefix_tokens, state, i == 0, stage)
        n -= r_i
    return new


def tome_shape(shape: VitShape, r: Sequence[int]) -> VitShape:
    """``shape`` with ToMe's token counts: block ``i`` keeps ``patches - min(r_i, tokens // 2)``
    patch tokens after its attention (the prefix tokens never merge)."""
    blocks, patches = [], shape.num_patches
    for b, ri in zip(shape.blocks, r):
        cut = min(ri, patches // 2)
        blocks.append(replace(b, keep_patches=patches - cut, fuse=False) if cut else b)
        patches -= cut
    return replace(shape, blocks=tuple(blocks))


def r_for_budget(shape: VitShape, budget: float) -> int:
    """The smallest constant ``r`` (the paper's schedule) whose model keeps at most ``budget``
    of ``shape``'s MACs.

    Raises:
        ValueError: even merging as much as possible does not reach the budget.
    """
    dense, depth = macs(shape).total, len(shape.blocks)
    for r in range(0, shape.num_patches // 2 + 1):
        if macs(tome_shape(shape, [r] * depth)).total <= budget * dense:
            return r
    raise ValueError(f"ToMe cannot reach {budget:.0%} of the MACs on this model "
                     f"(at most {math.ceil(shape.num_patches / 2)} pairs merge per block)")


def r_schedule(shape: VitShape, budget: float) -> list[int]:
    """Per-block ``r`` that lands just under ``budget`` (fraction of the MACs): the constant
    ``r`` one step short of it, plus one in the first ``j`` blocks (merging early saves most),
    with the smallest ``j`` that meets the budget. A constant ``r`` moves the cost in steps of
    several percent; this lands within a point of the budget, as the other methods' plans do.
    """
    r = r_for_budget(shape, budget)
    depth, dense = len(shape.blocks), macs(shape).total
    if r == 0:
        return [0] * depth
    for j in range(depth + 1):
        rs = [r] * j + [r - 1] * (depth - j)
        if macs(tome_shape(shape, rs)).total <= budget * dense:
            return rs
    return [r] * depth  # not reached: j = depth is the constant r
