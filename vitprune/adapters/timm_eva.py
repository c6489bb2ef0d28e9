"""timm's ``Eva`` family: EVA-02 (SwiGLU MLP, a LayerNorm inside the MLP, rotary position
embeddings) and the RoPE ViTs timm builds with the same class (``vit_*_rope_*``).

What is pruned, per block:

* **heads**: rows of the fused ``qkv`` (or of separate ``q_proj``/``k_proj``/``v_proj``) and
  the separate q/k/v bias vectors EVA keeps beside a bias-free ``qkv``, the attention's inner
  norm where it has one (``scale_attn_inner``), and ``proj``'s columns. Rotary embeddings act
  within each head (on its ``head_dim`` channels), so a kept head keeps its rotation untouched.
  A block with fewer heads than its width divides into runs :class:`PrunedEvaAttention`, which
  computes what timm's ``EvaAttention`` computes without assuming ``heads * head_dim == dim``;
  the RoPE ViTs' ``AttentionRope`` (``vit_*_patch16_rope_224``) takes its new head count as it
  is (grouped-query attention is refused).
* **neurons**: a SwiGLU unit's gate and value rows together (``fc1_g``/``fc1_x``, or the two
  halves of a packed ``GluMlp`` ``fc1``), the MLP's inner LayerNorm (``scale_mlp``: its weight
  and bias sliced, so it normalises over the kept units), and ``fc2``'s columns; plain GELU
  ``Mlp``s (the RoPE ViTs) like ViT's.
* **depth**: a whole attention or MLP dropped (its residual branch is its bias times the layer
  scale ``gamma``).
* **tokens**: EViT-style selection after a block's attention, scored by the class token's
  attention computed from the rotated queries and keys. The kept tokens keep their own rotary
  positions: the model's feature loop (installed on the instance, :func:`_forward_features`)
  hands the rotary table, gathered with the kept tokens, to every later block. The fused token
  gets no rotation (angle zero), as the prefix tokens do.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import AttentionRope, GluMlp, Mlp, SwiGLU
from timm.layers.pos_embed_sincos import apply_rot_embed_cat
from timm.models.eva import Eva, EvaAttention, EvaBlock
from torch import nn

from ..cost import BlockShape
from ..errors import ModelError
from ..plan import TokenStage
from .base import ArchSpec, BlockParts, DroppedHalf, token_stage
from .timm_vit import TimmBlocks, build_timm
from .tokens import TokenSelecting, attend, class_attention

GATED = (GluMlp, SwiGLU)


def eva_qkv(attn: EvaAttention, x: torch.Tensor, rope: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EVA's queries, keys and values of the (B, N, C) tokens, each (B, heads, N, head_dim),
    normalised and rotated as ``EvaAttention.forward`` does (the prefix tokens not rotated)."""
    B, N, _ = x.shape
    h = attn.num_heads
    if attn.qkv is not None:  # EVA keeps q/k/v biases apart; AttentionRope in the layer
        q_bias = getattr(attn, "q_bias", None)
        bias = (attn.qkv.bias if q_bias is None
                else torch.cat((q_bias, attn.k_bias, attn.v_bias)))
        qkv = F.linear(x, attn.qkv.weight, bias)
        q, k, v = qkv.reshape(B, N, 3, h, -1).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (lin(x).reshape(B, N, h, -1).transpose(1, 2)
                   for lin in (attn.q_proj, attn.k_proj, attn.v_proj))
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        npt, half = attn.num_prefix_tokens, attn.rotate_half
        q, k = (torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope, half=half)],
                          dim=2).type_as(v) for t in (q, k))
    return q, k, v


def eva_attention(attn: EvaAttention, x: torch.Tensor, rope: torch.Tensor | None = None,
                  attn_mask: torch.Tensor | None = None, is_causal: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``EvaAttention`` forward for any number of heads: ((B, N, C) output, the rotated
    (B, h, N, d) queries and keys, which token selection scores tokens by)."""
    B, N, _ = x.shape
    q, k, v = eva_qkv(attn, x, rope)
    drop = attn.attn_drop.p if attn.training else 0.0
    if attn_mask is not None or is_causal:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop,
                                           is_causal=is_causal)
    else:
        y = attend(q, k, v, attn.scale, drop, explicit=not attn.fused_attn)
    y = attn.norm(y.transpose(1, 2).reshape(B, N, -1))
    return attn.proj_drop(attn.proj(y)), q, k


class PrunedEvaAttention(EvaAttention):
    """An ``EvaAttention`` with fewer heads than its width divides into (same parameters, same
    state_dict keys): timm's forward merges the heads back to the input width, this one to
    ``heads * head_dim``."""

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        return eva_attention(self, x, rope, attn_mask, is_causal)[0]


# The parts of an EvaBlock, adopted under the same names so state_dict keys do not change.
BLOCK_PARTS = ("norm1", "attn", "gamma_1", "drop_path1", "norm2", "mlp", "gamma_2", "drop_path2")


def _scaled(gamma: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return x if gamma is None else gamma * x


class EvaTokenSelectBlock(TokenSelecting):
    """An ``EvaBlock`` that selects tokens between its attention and its MLP, and the rotary
    table with them: ``forward`` returns ``(tokens, rope)`` for the blocks after it (the
    model's feature loop passes it on)."""

    def __init__(self, block: nn.Module, stage: TokenStage, num_prefix: int,
                 has_class_token: bool) -> None:
        super().__init__(stage, num_prefix, has_class_token)
        self.adopt(block, BLOCK_PARTS)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, N, C) tokens and rotary table -> (B, N', C) kept (+ fused) tokens, and the
        rotary table of their patch tokens ((B, 1, N' - prefix, 2 * head_dim), or None)."""
        y, q, k = eva_attention(self.attn, self.norm1(x), rope)
        x = x + self.drop_path1(_scaled(self.gamma_1, y))
        n = x.shape[1] - self.num_prefix
        if n > 0:
            scores = class_attention(q, k, self.attn.scale, self.head_weights,
                                     has_class_token=self.has_class_token)
            x, kept = self.select_scored(x, scores)
            if kept is not None and rope is not None:
                rope = gather_rope(rope, kept, self.token_stage.fuse)
        return x + self.drop_path2(_scaled(self.gamma_2, self.mlp(self.norm2(x)))), rope


def gather_rope(rope: torch.Tensor, kept: torch.Tensor, fuse: bool) -> torch.Tensor:
    """The rotary table ((P, 2d), or (B, 1, P, 2d) after an earlier stage) of the ``kept``
    ((B, keep)) patch tokens, (B, 1, keep (+1), 2d); a fused token's row rotates by angle zero
    (sin 0, cos 1)."""
    B = kept.shape[0]
    table = rope if rope.dim() == 4 else rope.expand(B, 1, *rope.shape)
    table = table.gather(2, kept[:, None, :, None].expand(-1, 1, -1, table.shape[-1]))
    if not fuse:
        return table
    half = table.shape[-1] // 2
    still = torch.cat([table.new_zeros(half), table.new_ones(half)])  # sin | cos
    return torch.cat([table, still.expand(B, 1, 1, -1)], dim=2)


def _forward_features(self: Eva, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                      is_causal: bool = False) -> torch.Tensor:
    """``Eva.forward_features`` that passes the rotary table a token-selecting block returns to
    the blocks after it (installed on a model's instance when it gets token stages)."""
    selecting = [b for b in self.blocks if isinstance(b, EvaTokenSelectBlock)]
    if selecting and (attn_mask is not None or is_causal):
        raise ModelError("a token-selecting block cannot take an attention mask or causal "
                         "attention: the mask would no longer match the tokens")
    x = self.patch_embed(x)
    x, rope = self._pos_embed(x)
    x = self.norm_pre(x)
    for blk in self.blocks:
        if isinstance(blk, EvaTokenSelectBlock):
            x, rope = blk(x, rope=rope)
        else:
            x = blk(x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)
    return self.norm(x)


class EvaAdapter(TimmBlocks):
    """timm's ``Eva`` (EVA-02, the RoPE ViTs)."""

    family = "eva"
    constructor = Eva
    timm_modules = ("eva",)
    describes = ("a timm Eva name: EVA-02 and the RoPE ViTs (timm.list_models(module='eva'), "
                 "e.g. eva02_small_patch14_224)")

    def handles(self, model: nn.Module) -> bool:
        return isinstance(model, Eva)

    def build(self, arch: ArchSpec, pretrained: bool = False) -> nn.Module:
        return build_timm(arch, pretrained, _check_eva)

    def checkpoint_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]
                              ) -> dict[str, torch.Tensor]:
        """timm's key layout as it is; the EVA authors' (``mlp.w1``/``w2``/``w3``,
        ``ffn_ln``, ``inner_attn_ln``, OpenCLIP's ``visual.`` prefix ...) mapped by timm's own
        ``checkpoint_filter_fn``."""
        if set(model.state_dict()) <= set(state_dict):
            return state_dict
        from timm.models.eva import checkpoint_filter_fn

        return checkpoint_filter_fn(state_dict, model)

    def num_prefix(self, model: nn.Module) -> int:
        return model.num_prefix_tokens

    def has_class_token(self, model: nn.Module) -> bool:
        return model.cls_token is not None

    def check(self, model: nn.Module) -> None:
        _check_eva(model)
        for i, b in enumerate(self.blocks(model)):
            _check_block(i, b)

    def parts(self, block: nn.Module) -> BlockParts:
        a, m = block.attn, block.mlp
        if isinstance(a, DroppedHalf) or isinstance(m, DroppedHalf):
            raise ModelError("this block's attention or MLP was dropped: score, mask and prune "
                             "the dense model")
        if a.qkv is not None:
            qkv = (a.qkv,)
            vectors = () if getattr(a, "q_bias", None) is None else tuple(
                (a, n) for n in ("q_bias", "k_bias", "v_bias"))
        else:
            qkv, vectors = (a.q_proj, a.k_proj, a.v_proj), ()
        mlp_in = (m.fc1_g, m.fc1_x) if isinstance(m, SwiGLU) else (m.fc1,)
        return BlockParts(qkv, a.proj, mlp_in, m.fc2,
                          mlp_in_chunks=2 if isinstance(m, GluMlp) else 1,
                          head_vectors=vectors, attn_norm=_norm_or_none(a.norm),
                          mlp_norm=_norm_or_none(m.norm))

    def set_heads(self, block: nn.Module, heads: int) -> None:
        a = block.attn
        a.num_heads = heads
        if type(a) is EvaAttention:
            a.__class__ = PrunedEvaAttention
        else:  # AttentionRope merges heads to attn_dim (no grouped keys: check refuses them)
            a.num_kv_heads, a.attn_dim = heads, heads * a.head_dim
            a.kv_dim = a.attn_dim

    def halves(self, block: nn.Module) -> tuple[Any, Any]:
        """The two residual halves; the attention half rotates its queries and keys by a
        table of the token count's shape (the rotation's cost, whatever its angles)."""

        def attn(x: torch.Tensor) -> torch.Tensor:
            a = block.attn
            rope = None
            if not isinstance(a, DroppedHalf):
                rope = x.new_zeros(x.shape[1] - a.num_prefix_tokens, 2 * a.head_dim)
            return x + block.drop_path1(_scaled(block.gamma_1, block.attn(block.norm1(x),
                                                                          rope=rope)))

        def mlp(x: torch.Tensor) -> torch.Tensor:
            return x + block.drop_path2(_scaled(block.gamma_2, block.mlp(block.norm2(x))))

        return attn, mlp

    def block_shapes(self, model: nn.Module) -> tuple[BlockShape, ...]:
        def shape(b: nn.Module) -> BlockShape:
            heads = 0 if isinstance(b.attn, DroppedHalf) else b.attn.num_heads
            dropped = isinstance(b.mlp, DroppedHalf)
            return BlockShape(heads=heads, head_dim=b.attn.head_dim,
                              mlp_hidden=0 if dropped else b.mlp.fc2.in_features,
                              mlp_matrices=3 if isinstance(b.mlp, GATED) else 2)

        return tuple(shape(b) for b in self.blocks(model))

    def qkv_bias(self, model: nn.Module) -> bool:
        have = {(getattr(a, "q_bias", None) is not None or a.qkv.bias is not None)
                if a.qkv is not None else a.q_proj.bias is not None
                for b in self.blocks(model) if not isinstance(a := b.attn, DroppedHalf)}
        if len(have) > 1:
            raise ModelError("the blocks must all have, or all lack, a qkv bias")
        return have.pop() if have else True


    def token_block(self, model: nn.Module, index: int, stage: TokenStage) -> nn.Module:
        if getattr(model, "rope_mixed", False):
            raise ModelError("token stages on a mixed-RoPE model (a rotary table per block) "
                             "are not supported; prune heads, neurons and depth only")
        if getattr(model, "dynamic_img_size", False):
            raise ModelError("token stages on a model built with dynamic_img_size are not "
                             "supported; build it at a fixed image size")
        # the feature loop that hands the kept tokens' rotary table on (this instance only)
        model.forward_features = types.MethodType(_forward_features, model)
        old = self.blocks(model)[index]
        return EvaTokenSelectBlock(old, stage, self.num_prefix(model),
                                   self.has_class_token(model)).train(old.training)


def _norm_or_none(norm: nn.Module) -> nn.LayerNorm | None:
    return None if isinstance(norm, nn.Identity) else norm


def _check_eva(model: nn.Module, name: str = "") -> None:
    if not isinstance(model, Eva):
        from . import supported  # the registry, read when refusing

        raise ModelError(f"model {name or type(model).__name__} is a {type(model).__name__}, "
                         f"not a timm Eva; vitprune prunes: {supported()}")


def _check_block(i: int, b: nn.Module) -> None:
    """Refuse a block whose slicing would give a wrong model (named in the message)."""
    if type(b) is not EvaBlock and token_stage(b) is None:
        raise _unsupported(i, f"block type {type(b).__name__} (post-norm EVA blocks are not "
                           "supported)")
    a, m = b.attn, b.mlp
    if not isinstance(a, DroppedHalf):
        if type(a) not in (EvaAttention, PrunedEvaAttention, AttentionRope):
            raise _unsupported(i, f"attention type {type(a).__name__}")
        if getattr(a, "num_kv_groups", 1) != 1:
            raise _unsupported(i, "grouped-query attention (fewer key/value heads than query "
                               "heads)")
        if a.gate is not None:
            raise _unsupported(i, "a gated attention")
        _check_norm(i, a.norm, "attention's inner norm")
    if not isinstance(m, DroppedHalf):
        if type(m) not in (Mlp, GluMlp, SwiGLU):
            raise _unsupported(i, f"MLP type {type(m).__name__}")
        layers = (m.fc1_g, m.fc1_x, m.fc2) if isinstance(m, SwiGLU) else (m.fc1, m.fc2)
        if not all(isinstance(f, nn.Linear) for f in layers):
            raise _unsupported(i, "a convolutional MLP")
        _check_norm(i, m.norm, "MLP's inner norm")


def _check_norm(i: int, norm: nn.Module, what: str) -> None:
    if not isinstance(norm, (nn.Identity, nn.LayerNorm)) or (
            isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) != 1):
        raise _unsupported(i, f"a {type(norm).__name__} as its {what}")


def _unsupported(i: int, what: str) -> ModelError:
    return ModelError(
        f"block {i} has {what}, which vitprune cannot prune; supported are EvaBlocks with "
        "EvaAttention or AttentionRope (fused or separate q/k/v) and a GELU Mlp, GluMlp or "
        "SwiGLU MLP"
    )

