"""Read the structure of a timm VisionTransformer."""

from __future__ import annotations

import math

from timm.layers import Attention, AttentionPoolLatent, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ..cost import BlockShape, PoolShape, VitShape
from ..errors import ModelError
from ..models import check_supported
from ..plan import TokenStage, apply_token_stages


def token_stage(block: nn.Module) -> TokenStage | None:
    """The token stage a block runs, or None for an ordinary block.

    Token-selecting blocks (``vitprune.surgery.TokenSelectBlock``) expose their stage as a
    ``token_stage`` attribute; reading it here keeps this module free of surgery imports.
    """
    stage = getattr(block, "token_stage", None)
    return stage if isinstance(stage, TokenStage) else None


def vit_shape(model: VisionTransformer) -> VitShape:
    """The :class:`VitShape` of a timm ViT, as built (dense or physically pruned).

    Raises:
        ModelError: the model is not one vitprune can prune (see :func:`check_prunable`).

    Token stages of a pruned model are included, with kept counts computed block by block by
    :func:`vitprune.plan.kept_tokens`, as the model itself computes them.
    """
    check_prunable(model)  # reading and pruning accept and refuse the same models
    pe = model.patch_embed
    blocks = tuple(
        BlockShape(heads=b.attn.num_heads, head_dim=b.attn.head_dim,
                   mlp_hidden=b.mlp.fc1.out_features)
        for b in model.blocks
    )
    num_heads_out = 2 if getattr(model, "head_dist", None) is not None else 1
    shape = VitShape(
        embed_dim=model.embed_dim,
        num_patches=pe.num_patches,
        num_prefix=model.num_prefix_tokens,
        patch_macs=pe.proj.in_channels * math.prod(pe.proj.kernel_size),
        num_classes=model.num_classes,
        num_heads_out=num_heads_out,
        blocks=blocks,
        pool=_pool_shape(getattr(model, "attn_pool", None)),
    )
    stages = [_at_block(s, i) for i, b in enumerate(model.blocks) if (s := token_stage(b))]
    return apply_token_stages(shape, stages) if stages else shape


def _pool_shape(pool: nn.Module | None) -> PoolShape | None:
    """The :class:`PoolShape` of timm's ``AttentionPoolLatent`` (None: no attention pool)."""
    if pool is None:
        return None
    if not isinstance(pool, AttentionPoolLatent) or pool.latent_dim != pool.q.in_features:
        raise ModelError(f"attention pool {type(pool).__name__} of this shape is not one vitprune "
                         "can count; use global_pool='token' or 'avg'")
    mlp = pool.mlp.fc1.out_features if getattr(pool, "mlp", None) is not None else 0
    return PoolShape(latent_len=pool.latent_len, mlp_hidden=mlp,
                     params=sum(p.numel() for p in pool.parameters()))


def input_shape(model: VisionTransformer) -> tuple[int, int, int]:
    """(C, H, W) of one input image of ``model`` (its patch embedding's channels and size)."""
    pe = model.patch_embed
    return (pe.proj.in_channels, *pe.img_size)


def data_config(model: nn.Module) -> dict | None:
    """How images must be prepared for ``model``: timm's ``resolve_data_config`` (mean, std,
    interpolation, crop_pct, crop_mode from the model's ``pretrained_cfg``), with the input size
    the model is built for. JSON-ready. None for a model without a ``pretrained_cfg`` (vitprune's
    small registered configurations, whose in-memory datasets bring their own normalisation)."""
    from timm.data import resolve_data_config

    if not getattr(model, "pretrained_cfg", None):
        return None

    cfg = resolve_data_config({"input_size": input_shape(model)}, model=model)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _at_block(stage: TokenStage, index: int) -> TokenStage:
    """``stage`` placed at block ``index`` (a module does not know its own position)."""
    return stage if stage.block == index else TokenStage(index, stage.keep_rate, stage.fuse)


def check_prunable(model: nn.Module) -> None:
    """Raise :class:`ModelError` unless every block of ``model`` is one vitprune can prune.

    Supported: timm ``Block`` (or a token-selecting block holding the same parts) with plain
    ``Attention`` (q/k norms allowed) and ``Mlp`` of linear layers. Refused, because slicing them
    as below would give a wrong model: attention output norm (``scale_attn_norm``) or gate,
    MLP hidden norm (``scale_mlp_norm``), GLU/SwiGLU MLPs, convolutional MLPs, and other block
    types (``ResPostBlock``, ``ParallelScalingBlock`` ...).
    """
    check_supported(model)
    for i, b in enumerate(model.blocks):
        if type(b) is not Block and token_stage(b) is None:
            raise _unsupported(i, f"block type {type(b).__name__}")
        attn, mlp = b.attn, b.mlp
        if type(attn) is not Attention:
            raise _unsupported(i, f"attention type {type(attn).__name__}")
        if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
            raise _unsupported(i, "attention with an output norm or gate")
        if type(mlp) is not Mlp or not all(isinstance(f, nn.Linear) for f in (mlp.fc1, mlp.fc2)):
            raise _unsupported(i, f"MLP type {type(mlp).__name__}")
        if not isinstance(mlp.norm, nn.Identity):
            raise _unsupported(i, "MLP with a hidden-layer norm")


def _unsupported(i: int, what: str) -> ModelError:
    return ModelError(
        f"block {i} has {what}, which vitprune cannot prune; supported are timm Blocks with "
        "plain Attention (qkv + proj) and Mlp (fc1 + fc2), as in ViT/DeiT"
    )
