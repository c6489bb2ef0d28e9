"""timm's ``SwinTransformer`` (Swin-T/S/B at 224 with 7x7 windows, the 384 / 12x12 variants):
hierarchical stages of windowed-attention blocks joined by patch merging.

What is pruned, per block: **heads** (rows of the fused ``qkv``, the head's column of the
relative-position-bias table, ``proj``'s columns), **neurons** (``fc1`` rows, ``fc2`` columns)
and **depth** (a whole attention or MLP). The stages, their widths and the patch merging between
them stay: a stage's width is the residual stream every block of it shares.

Latency tables hold one grid per stage (:class:`~vitprune.latency.StagedLatencyTable`).

**Tokens are not pruned**: windowed attention partitions the whole token grid into windows (and
shifts them), so a token set with holes has no windows. A plan or a search that asks for token
stages is refused with one line that says so; a search of a Swin model prunes no tokens by
default.

Blocks are numbered through the stages in order (Swin-T: 2 + 2 + 6 + 2 = 12 blocks); each
block's :class:`~vitprune.cost.BlockShape` records its stage's width, token grid and window, so
the cost model, plans, the search and ``info`` see the hierarchy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import Mlp
from timm.models.swin_transformer import (
    PatchMerging,
    SwinTransformer,
    SwinTransformerBlock,
    WindowAttention,
)
from torch import nn

from ..cost import BlockShape, VitShape
from ..errors import ModelError
from ..plan import TokenStage
from .base import Adapter, ArchSpec, BlockParts, DroppedHalf, slice_tensor
from .timm_vit import build_timm, timm_data_config


class SwinAdapter(Adapter):
    """timm's ``SwinTransformer`` (v1)."""

    family = "swin"
    constructor = SwinTransformer
    timm_modules = ("swin_transformer",)
    describes = ("a timm Swin Transformer name (timm.list_models(module='swin_transformer'), "
                 "e.g. swin_tiny_patch4_window7_224)")

    def handles(self, model: nn.Module) -> bool:
        return isinstance(model, SwinTransformer)

    def build(self, arch: ArchSpec, pretrained: bool = False) -> nn.Module:
        return build_timm(arch, pretrained, _check_swin)

    def check(self, model: nn.Module) -> None:
        _check_swin(model)
        if getattr(model, "dynamic_img_size", False):
            raise ModelError("a Swin built with strict_img_size=False (dynamic image size) has no "
                             "fixed token grid to count; build it at a fixed image size")
        for i, b in enumerate(self.blocks(model)):
            _check_block(i, b)

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return [b for stage in model.layers for b in stage.blocks]

    def set_block(self, model: nn.Module, index: int, block: nn.Module) -> None:
        for stage in model.layers:
            if index < len(stage.blocks):
                stage.blocks[index] = block
                return
            index -= len(stage.blocks)
        raise ModelError(f"block {index} is past the model's last block")

    def parts(self, block: nn.Module) -> BlockParts:
        a, m = block.attn, block.mlp
        if isinstance(a, DroppedHalf) or isinstance(m, DroppedHalf):
            raise ModelError("this block's attention or MLP was dropped: score, mask and prune "
                             "the dense model")
        return BlockParts((a.qkv,), a.proj, (m.fc1,), m.fc2)

    def prune_block(self, block: nn.Module, heads: Sequence[int] | None,
                    neurons: Sequence[int] | None, head_dim: int) -> None:
        if heads:  # the relative-position bias has a column per head
            a = block.attn
            slice_tensor(a, "relative_position_bias_table",
                         torch.as_tensor(heads, dtype=torch.long, device=a.proj.weight.device),
                         dim=1)
        super().prune_block(block, heads, neurons, head_dim)

    def set_heads(self, block: nn.Module, heads: int) -> None:
        block.attn.num_heads = heads  # timm's forward merges heads with reshape(-1)

    def drop_half(self, block: nn.Module, half: str) -> None:
        if half == "attention":
            a = block.attn
            head_dim = a.proj.in_features // a.num_heads
            block.attn, block.norm1 = DroppedHalf(a.proj.bias, head_dim), nn.Identity()
        else:
            block.mlp, block.norm2 = DroppedHalf(block.mlp.fc2.bias), nn.Identity()

    def token_block(self, model: nn.Module, index: int, stage: TokenStage) -> nn.Module:
        raise ModelError("token stages do not apply to windowed attention (Swin): its windows "
                         "need the whole token grid; prune heads, neurons and depth")

    def shape(self, model: nn.Module) -> VitShape:
        self.check(model)
        pe = model.patch_embed
        blocks, between = [], 0
        for stage in model.layers:
            if isinstance(stage.downsample, PatchMerging):  # 2x2 tokens -> one, 4C -> C'
                r = stage.downsample.reduction
                between += math.prod(stage.output_resolution) * r.in_features * r.out_features
            blocks += [_block_shape(b) for b in stage.blocks]
        return VitShape(
            embed_dim=model.embed_dim,
            num_patches=math.prod(pe.grid_size),
            num_prefix=0,
            patch_macs=pe.proj.in_channels * math.prod(pe.proj.kernel_size),
            num_classes=model.num_classes,
            num_heads_out=1,
            blocks=tuple(blocks),
            qkv_bias=all(b.attn.qkv.bias is not None for b in self.blocks(model)
                         if not isinstance(b.attn, DroppedHalf)),
            between_macs=between,
        )

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        pe = model.patch_embed
        return (pe.proj.in_channels, *pe.img_size)

    def native_data_config(self, model: nn.Module) -> dict | None:
        return timm_data_config(model, self.input_shape(model))

    def halves(self, block: nn.Module) -> tuple[Any, Any]:
        """The two residual halves as functions of the (B, N, C) tokens of the block's grid
        (the attention half lays them out as the (B, H, W, C) map its windows are cut from)."""
        H, W = block.input_resolution

        def attn(x: torch.Tensor) -> torch.Tensor:
            B, N, C = x.shape
            t = x.reshape(B, H, W, C)
            return (t + block.drop_path1(block._attn(block.norm1(t)))).reshape(B, N, C)

        def mlp(x: torch.Tensor) -> torch.Tensor:
            return x + block.drop_path2(block.mlp(block.norm2(x)))

        return attn, mlp


def _block_shape(b: nn.Module) -> BlockShape:
    dropped_attn = isinstance(b.attn, DroppedHalf)
    heads = 0 if dropped_attn else b.attn.num_heads
    head_dim = b.attn.head_dim if dropped_attn else b.attn.proj.in_features // b.attn.num_heads
    mlp = 0 if isinstance(b.mlp, DroppedHalf) else b.mlp.fc1.out_features
    return BlockShape(heads=heads, head_dim=head_dim, mlp_hidden=mlp, width=b.dim,
                      grid=tuple(b.input_resolution), window=tuple(b.window_size))


def _check_swin(model: nn.Module, name: str = "") -> None:
    if not isinstance(model, SwinTransformer):
        from . import supported  # the registry, read when refusing

        raise ModelError(f"model {name or type(model).__name__} is a {type(model).__name__}, "
                         f"not a timm SwinTransformer; vitprune prunes: {supported()}")


def _check_block(i: int, b: nn.Module) -> None:
    if type(b) is not SwinTransformerBlock:
        raise _unsupported(i, f"block type {type(b).__name__}")
    if not isinstance(b.attn, DroppedHalf) and type(b.attn) is not WindowAttention:
        raise _unsupported(i, f"attention type {type(b.attn).__name__}")
    if not isinstance(b.mlp, DroppedHalf) and (
            type(b.mlp) is not Mlp or not isinstance(b.mlp.norm, nn.Identity)
            or not all(isinstance(f, nn.Linear) for f in (b.mlp.fc1, b.mlp.fc2))):
        raise _unsupported(i, f"MLP type {type(b.mlp).__name__}")
    if getattr(b, "dynamic_mask", False):
        raise _unsupported(i, "a dynamic attention mask")


def _unsupported(i: int, what: str) -> ModelError:
    return ModelError(f"block {i} has {what}, which vitprune cannot prune; supported are timm "
                      "SwinTransformerBlocks with WindowAttention and an Mlp (Swin v1)")

