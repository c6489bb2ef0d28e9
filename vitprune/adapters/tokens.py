"""Token selection (EViT-style): keep the most attended patch tokens, fuse the rest into one.

The algorithm is two pure tensor functions, :func:`cls_attention` and :func:`select_tokens`.
:class:`TokenSelecting` is the base of each family's token-selecting block: it holds the stage
and runs the two functions; the family's block computes attention and hands over ``qkv``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..plan import TokenStage, kept_tokens


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: float, *,
           explicit: bool, softmax_float32: bool = False) -> torch.Tensor:
    """Scaled dot-product attention of (B, h, N, d) queries, keys and values -> (B, h, N, d): the
    core every family's attention-with-qkv forward shares (the projections are the family's).

    Args:
        dropout: attention dropout probability (0 when not training).
        explicit: the explicit formula (which operation counters and some exporters can see)
            instead of PyTorch's fused ``scaled_dot_product_attention``.
        softmax_float32: on the explicit path, the softmax in float32 and cast back (as
            transformers computes it); else in the inputs' dtype (as timm does).
    """
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale)
    w = (q * scale) @ k.transpose(-2, -1) if not softmax_float32 else (q @ k.transpose(-2, -1)) * scale
    w = w.softmax(dim=-1, dtype=torch.float32).to(q.dtype) if softmax_float32 else w.softmax(dim=-1)
    return F.dropout(w, p=dropout, training=dropout > 0) @ v  # (B, h, N, d)


def cls_attention(
    qkv: torch.Tensor,
    num_heads: int,
    head_dim: int,
    scale: float,
    q_norm: nn.Module | None = None,
    k_norm: nn.Module | None = None,
    head_weights: torch.Tensor | None = None,
    *,
    has_class_token: bool = True,
) -> torch.Tensor:
    """Attention each token receives from the class token, averaged over heads.

    Only the class token's query row is computed, ``O(N)`` per head, never the ``N x N`` matrix.
    Models without a class token (``class_token=False``) use the mean of all queries instead:
    the attention a typical token pays to each token.

    Args:
        qkv: output of the attention's ``qkv`` projection, (B, N, 3 * num_heads * head_dim),
            laid out as timm's Attention reads it: (3, heads, head_dim) along the last axis.
        num_heads: heads in ``qkv``.
        head_dim: width of one head.
        scale: the attention's logit scale (``attn.scale``, ``head_dim ** -0.5``).
        q_norm, k_norm: the attention's per-head query/key norms (``nn.Identity`` or None: none).
        head_weights: (num_heads,) weights of the heads in the average (e.g. a 0/1 mask of kept
            heads); None: plain mean.
        has_class_token: whether token 0 is a class token.

    Returns:
        (B, N) attention weights, each row summing to 1.
    """
    B, N, _ = qkv.shape
    qkv = qkv.reshape(B, N, 3, num_heads, head_dim)
    q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, h, N, d)
    q_norm, k_norm = q_norm or nn.Identity(), k_norm or nn.Identity()
    # the norms act per token, so normalising the class token's query alone is the same
    q = q_norm(q[:, :, :1]) if has_class_token else q_norm(q)
    return class_attention(q, k_norm(k), scale, head_weights, has_class_token=has_class_token)


def class_attention(q: torch.Tensor, k: torch.Tensor, scale: float,
                    head_weights: torch.Tensor | None = None, *,
                    has_class_token: bool = True) -> torch.Tensor:
    """:func:`cls_attention` from queries and keys as the attention uses them ((B, h, N, d),
    normalised and rotated; the class token's query alone, (B, h, 1, d), is enough): (B, N)."""
    q = q[:, :, :1] if has_class_token else q.mean(dim=2, keepdim=True)  # (B, h, 1, d)
    attn = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1).squeeze(2)  # (B, h, N)
    if head_weights is None:
        return attn.mean(dim=1)
    w = head_weights.to(attn)
    return (attn * w[:, None]).sum(dim=1) / w.sum()


def select_tokens(
    x: torch.Tensor, scores: torch.Tensor, num_prefix: int, keep: int, fuse: bool,
    kept_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keep the ``keep`` highest-scoring non-prefix tokens, optionally fusing the rest into one.

    Args:
        x: tokens, (B, N, C), the ``num_prefix`` prefix tokens first.
        scores: (B, N) token scores (e.g. :func:`cls_attention`); prefix scores are ignored.
        num_prefix: leading tokens that are always kept (class, distillation, register tokens).
        keep: non-prefix tokens to keep; ``keep >= N - num_prefix`` returns ``x`` unchanged.
        fuse: append one token, the mean of the dropped tokens weighted by their scores (EViT).
        kept_idx: :func:`kept_indices` of ``scores``, where the caller has them already.

    Returns:
        (B, num_prefix + keep (+1 if fuse), C): prefix tokens, the kept tokens in their original
        order, then the fused token.
    """
    B, N, C = x.shape
    n = N - num_prefix
    if keep >= n:
        return x
    prefix, patches, s = x[:, :num_prefix], x[:, num_prefix:], scores[:, num_prefix:]
    if kept_idx is None:
        kept_idx = kept_indices(scores, num_prefix, keep)
    parts = [prefix, patches.gather(1, kept_idx.unsqueeze(-1).expand(-1, -1, C))]
    if fuse:
        # the dropped tokens' score-weighted mean, as (all - kept) sums: no second gather
        w = s.scatter(1, kept_idx, 0.0)  # (B, n): scores of dropped tokens, 0 for kept ones
        w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        parts.append(w.unsqueeze(1).to(patches.dtype) @ patches)  # (B, 1, C)
    return torch.cat(parts, dim=1)


def kept_indices(scores: torch.Tensor, num_prefix: int, keep: int) -> torch.Tensor:
    """(B, keep) positions among the non-prefix tokens of the ``keep`` highest ``scores``
    ((B, N)), in their original order (which keeps the position structure): the tokens
    :func:`select_tokens` keeps."""
    top = scores[:, num_prefix:].topk(keep, dim=1, sorted=False).indices  # (B, keep)
    return top.sort(dim=1).values


class TokenSelecting(nn.Module):
    """Base of a family's token-selecting block: the stage and the selection step.

    A subclass adopts the block's submodules under their own names (so state_dict keys do not
    change), computes attention itself so that it has the ``qkv`` output at hand (no hooks: the
    block compiles and exports as one graph) and calls :meth:`select` between attention and MLP.

    Attributes:
        token_stage: the :class:`~vitprune.plan.TokenStage` this block runs.
        num_prefix: leading tokens never dropped.
        has_class_token: whether token 0 is a class token (else the mean query scores tokens).
        head_weights: (num_heads,) weights of heads in the score average (masked execution keeps
            only kept heads), or None; a non-persistent buffer.
    """

    def __init__(self, stage: TokenStage, num_prefix: int, has_class_token: bool) -> None:
        super().__init__()
        self.token_stage = stage
        self.num_prefix = num_prefix
        self.has_class_token = has_class_token
        self.register_buffer("head_weights", None, persistent=False)

    def adopt(self, block: nn.Module, names: tuple[str, ...]) -> None:
        """Hold ``block``'s submodules ``names`` (the same objects) under the same names."""
        for name in names:
            setattr(self, name, getattr(block, name))

    def extra_repr(self) -> str:
        s = self.token_stage
        return f"keep_rate={s.keep_rate}, fuse={s.fuse}, num_prefix={self.num_prefix}"

    def select(self, x: torch.Tensor, qkv: torch.Tensor, num_heads: int, head_dim: int,
               scale: float, q_norm: nn.Module | None = None,
               k_norm: nn.Module | None = None) -> torch.Tensor:
        """(B, N, C) tokens -> (B, N', C) kept (+ fused) tokens, scored from ``qkv``
        ((B, N, 3 * num_heads * head_dim), laid out (3, heads, head_dim))."""
        n = x.shape[1] - self.num_prefix
        if kept_tokens(n, self.token_stage.keep_rate) >= n:
            return x
        scores = cls_attention(qkv, num_heads, head_dim, scale, q_norm, k_norm,
                               self.head_weights, has_class_token=self.has_class_token)
        return self.select_scored(x, scores)[0]

    def select_scored(self, x: torch.Tensor, scores: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, C) tokens and their (B, N) scores -> ((B, N', C) kept (+ fused) tokens, the
        (B, keep) positions of the kept ones among the non-prefix tokens, or None where every
        token is kept). A family whose tokens carry per-token state (EVA's rotary positions)
        gathers it with those positions."""
        n = x.shape[1] - self.num_prefix
        keep = kept_tokens(n, self.token_stage.keep_rate)
        if keep >= n:
            return x, None
        idx = kept_indices(scores, self.num_prefix, keep)
        return select_tokens(x, scores, self.num_prefix, keep, self.token_stage.fuse,
                             idx), idx
