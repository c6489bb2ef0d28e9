"""timm's ``VisionTransformerSAM``: Segment Anything's image encoder (``samvit_base/large/
huge_patch16`` at 1024, ``samvit_base_patch16_224``), windowed blocks with a few global ones,
decomposed relative positions, and a convolutional neck.

What is pruned, per block: **heads** (``qkv`` rows and ``proj`` columns; the relative-position
tables are per head width, shared by the heads, and stay whole), **MLP neurons** and **depth**.
The patch embedding, the absolute positions, the neck and any head are kept whole and counted.
**Token stages are refused**: windowed blocks need the whole token grid, and the neck reads it
as a feature map.

Cost: each block runs on the 64 x 64 grid (at 1024); a windowed block attends within 14 x 14
windows of the grid padded to whole windows, a global one over the whole grid; the decomposed
relative positions cost ``N * heads * head_dim * (h + w)`` of the attended window (or grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import Mlp
from timm.models.vision_transformer_sam import Attention, Block, VisionTransformerSAM
from torch import nn

from ..cost import BlockShape, VitShape
from ..errors import ModelError
from ..plan import TokenStage
from .base import ArchSpec, BlockParts, DroppedHalf
from .timm_vit import TimmBlocks, build_timm

SAM_TOKENS = ("token stages do not apply to SAM's image encoder: its windowed blocks and its neck "
              "need the whole token grid; prune heads, neurons and depth")


class SamAdapter(TimmBlocks):
    """timm's ``VisionTransformerSAM``."""

    family = "sam"
    constructor = VisionTransformerSAM
    timm_modules = ("vision_transformer_sam",)
    describes = "a timm SAM image encoder name (samvit_base_patch16 ...)"

    def handles(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformerSAM)

    def build(self, arch: ArchSpec, pretrained: bool = False) -> nn.Module:
        return build_timm(arch, pretrained, _check_sam)

    def num_prefix(self, model: nn.Module) -> int:
        return 0

    def has_class_token(self, model: nn.Module) -> bool:
        return False

    def check(self, model: nn.Module) -> None:
        _check_sam(model)
        if getattr(model.blocks[0].attn, "rope", None) is not None:
            raise ModelError("a SAM encoder with rotary embeddings (use_rope) is not supported; "
                             "build it with use_rel_pos")
        for i, b in enumerate(self.blocks(model)):
            if type(b) is not Block:
                raise _unsupported(i, f"block type {type(b).__name__}")
            if not isinstance(b.attn, DroppedHalf) and type(b.attn) is not Attention:
                raise _unsupported(i, f"attention type {type(b.attn).__name__}")
            if not isinstance(b.mlp, DroppedHalf) and (
                    type(b.mlp) is not Mlp or not isinstance(b.mlp.norm, nn.Identity)):
                raise _unsupported(i, f"MLP type {type(b.mlp).__name__}")

    def parts(self, block: nn.Module) -> BlockParts:
        if isinstance(block.attn, DroppedHalf) or isinstance(block.mlp, DroppedHalf):
            raise ModelError("this block's attention or MLP was dropped: score, mask and prune "
                             "the dense model")
        return BlockParts((block.attn.qkv,), block.attn.proj, (block.mlp.fc1,), block.mlp.fc2)

    def features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The neck's feature map, per token: (B, H * W, C) (what SAM's mask decoder reads)."""
        return model.forward_features(images).flatten(2).transpose(1, 2)

    def set_heads(self, block: nn.Module, heads: int) -> None:
        block.attn.num_heads = heads  # its forward splits and merges heads with -1

    def token_block(self, model: nn.Module, index: int, stage: TokenStage) -> nn.Module:
        raise ModelError(SAM_TOKENS)

    def halves(self, block: nn.Module) -> tuple:
        raise ModelError("latency tables are not built for SAM's image encoder yet (its blocks "
                         "run on a feature map); use MACs budgets")

    def shape(self, model: nn.Module) -> VitShape:
        self.check(model)
        pe = model.patch_embed
        grid = tuple(pe.grid_size)
        blocks = tuple(_block_shape(b, grid) for b in self.blocks(model))
        return VitShape(
            embed_dim=model.embed_dim, num_patches=math.prod(grid), num_prefix=0,
            patch_macs=pe.proj.in_channels * math.prod(pe.proj.kernel_size),
            num_classes=model.num_classes, num_heads_out=0, blocks=blocks,
            qkv_bias=self.qkv_bias(model),
            between_macs=_conv_macs(model.neck, grid) + _linear_macs(model.head))

    def after_token_stages(self, model: nn.Module, stages: Sequence[int]) -> None:
        raise ModelError(SAM_TOKENS)


def _block_shape(b: nn.Module, grid: tuple[int, int]) -> BlockShape:
    heads = 0 if isinstance(b.attn, DroppedHalf) else b.attn.num_heads
    head_dim = b.attn.head_dim
    mlp = 0 if isinstance(b.mlp, DroppedHalf) else b.mlp.fc1.out_features
    window = (b.window_size, b.window_size) if b.window_size > 0 else None
    rel = not isinstance(b.attn, DroppedHalf) and b.attn.use_rel_pos
    return BlockShape(heads=heads, head_dim=head_dim, mlp_hidden=mlp,
                      width=b.norm2.normalized_shape[0], grid=grid, window=window, rel_pos=rel)


def _conv_macs(module: nn.Module, grid: tuple[int, int]) -> int:
    """MACs of the neck's convolutions on the ``grid`` feature map (stride 1, same padding)."""
    return sum(math.prod(grid) * m.in_channels // m.groups * m.out_channels
               * math.prod(m.kernel_size) for m in module.modules() if isinstance(m, nn.Conv2d))


def _linear_macs(module: nn.Module) -> int:
    """MACs of a head's linear layers on one pooled feature vector."""
    return sum(m.in_features * m.out_features for m in module.modules()
               if isinstance(m, nn.Linear))


def _check_sam(model: nn.Module, name: str = "") -> None:
    if not isinstance(model, VisionTransformerSAM):
        from . import supported

        raise ModelError(f"model {name or type(model).__name__} is a {type(model).__name__}, "
                         f"not a timm VisionTransformerSAM; vitprune prunes: {supported()}")


def _unsupported(i: int, what: str) -> ModelError:
    return ModelError(f"block {i} has {what}, which vitprune cannot prune; supported are timm "
                      "SAM encoder Blocks with their Attention and an Mlp")
