"""Read the structure of a timm VisionTransformer."""

from __future__ import annotations

import math

from timm.models.vision_transformer import VisionTransformer

from ..cost import BlockShape, VitShape
from ..models import check_supported


def vit_shape(model: VisionTransformer) -> VitShape:
    """The :class:`VitShape` of a timm ViT, as built (dense or physically pruned)."""
    check_supported(model)
    pe = model.patch_embed
    blocks = tuple(
        BlockShape(heads=b.attn.num_heads, head_dim=b.attn.head_dim,
                   mlp_hidden=b.mlp.fc1.out_features)
        for b in model.blocks
    )
    num_heads_out = 2 if getattr(model, "head_dist", None) is not None else 1
    return VitShape(
        embed_dim=model.embed_dim,
        num_patches=pe.num_patches,
        num_prefix=model.num_prefix_tokens,
        patch_macs=pe.proj.in_channels * math.prod(pe.proj.kernel_size),
        num_classes=model.num_classes,
        num_heads_out=num_heads_out,
        blocks=blocks,
    )
