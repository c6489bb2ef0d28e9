"""Analytic compute cost of a (pruned) ViT, from its shape alone.

Counts multiply-accumulates (MACs), the ViT papers' "FLOPs" convention (fvcore's): DeiT-T 1.3G,
DeiT-S 4.6G, DeiT-B 17.6G at 224x224, *including* the patch embedding and the classifier.
Norms, biases, GELU and softmax are left out, as in those papers.

Per block with ``h`` heads of width ``d``, MLP width ``D``, model width ``C``, ``N_in`` tokens
entering and ``N_out`` leaving (fewer than ``N_in`` where the block selects tokens):

    attention = 4 * N_in * C * (h*d) + 2 * N_in**2 * (h*d)
    mlp       = 2 * N_out * C * D

An attention-pooling head (``global_pool='map'``: ``L`` latent queries over the ``N`` tokens
leaving the last block, MLP width ``M``) adds ``2*L*C*C + 2*N*C*C + 2*L*N*C + 2*L*C*M``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BlockShape:
    """One transformer block.

    Attributes:
        heads: attention heads kept.
        head_dim: width of one head.
        mlp_hidden: MLP hidden units kept.
        keep_patches: patch tokens kept by a token-selection stage after this block's attention
            (``None``: no selection in this block).
        fuse: whether the dropped tokens are fused into one extra token.
    """

    heads: int
    head_dim: int
    mlp_hidden: int
    keep_patches: int | None = None
    fuse: bool = True


@dataclass(frozen=True)
class PoolShape:
    """An attention-pooling head (timm's ``AttentionPoolLatent``, ``global_pool='map'``): latent
    queries attend over every token leaving the last block, then an MLP. It is never pruned,
    but its cost grows with the tokens it pools.

    Attributes:
        latent_len: latent queries (usually 1).
        mlp_hidden: its MLP's hidden units (0: no MLP).
        params: its parameters (counted from the module).
    """

    latent_len: int
    mlp_hidden: int
    params: int


@dataclass(frozen=True)
class StemShape:
    """A tokenizer other than one patch-embedding layer (T2T-ViT's tokens-to-token module),
    counted as a whole: it is never pruned.

    Attributes:
        macs: its MACs for one image.
        params: parameters of everything before the first block (the stem, class and other
            prefix tokens, a learned position embedding), counted from the model.
    """

    macs: int
    params: int


@dataclass(frozen=True)
class VitShape:
    """A whole ViT: embedding, blocks, an optional attention pool, and classifier(s)."""

    embed_dim: int
    num_patches: int
    num_prefix: int
    patch_macs: int  # MACs to embed one patch: in_chans * patch_h * patch_w
    num_classes: int
    num_heads_out: int  # classifier heads: 1, or 2 for distilled DeiT
    blocks: tuple[BlockShape, ...]
    # not in the repr, so that searches fingerprinted before pools were counted still resume
    pool: PoolShape | None = field(default=None, repr=False)
    stem: StemShape | None = field(default=None, repr=False)  # None: one patch-embedding layer
    qkv_bias: bool = field(default=True, repr=False)


@dataclass(frozen=True)
class Cost:
    """MACs of a forward pass of one image, split by part."""

    patch_embed: int
    attention: int
    mlp: int
    head: int
    pool: int = 0  # an attention-pooling head, where the model has one

    @property
    def total(self) -> int:
        return self.patch_embed + self.attention + self.mlp + self.pool + self.head

    @property
    def blocks(self) -> int:
        """The authors' convention: attention and MLP only (no patch embedding, no classifier)."""
        return self.attention + self.mlp


def token_counts(shape: VitShape) -> list[tuple[int, int]]:
    """(tokens entering, tokens leaving) for each block, prefix tokens included."""
    out, patches = [], shape.num_patches
    for b in shape.blocks:
        n_in = shape.num_prefix + patches
        if b.keep_patches is not None and b.keep_patches < patches:
            patches = b.keep_patches + (1 if b.fuse else 0)
        out.append((n_in, shape.num_prefix + patches))
    return out


def macs(shape: VitShape) -> Cost:
    """MACs of one image's forward pass through ``shape``."""
    C = shape.embed_dim
    attn = mlp = 0
    for b, (n_in, n_out) in zip(shape.blocks, token_counts(shape)):
        a = b.heads * b.head_dim
        attn += 4 * n_in * C * a + 2 * n_in * n_in * a
        mlp += 2 * n_out * C * b.mlp_hidden
    return Cost(
        patch_embed=(shape.stem.macs if shape.stem
                     else shape.num_patches * shape.patch_macs * C),
        attention=attn,
        mlp=mlp,
        head=shape.num_heads_out * C * shape.num_classes,
        pool=pool_macs(shape),
    )


def pool_macs(shape: VitShape) -> int:
    """MACs of the attention-pooling head (0 without one): query and output projections of the
    latents, key/value projection of every pooled token, attention, MLP."""
    p = shape.pool
    if p is None:
        return 0
    C, L = shape.embed_dim, p.latent_len
    n = token_counts(shape)[-1][1] if shape.blocks else shape.num_prefix + shape.num_patches
    return 2 * L * C * C + 2 * n * C * C + 2 * L * n * C + 2 * L * C * p.mlp_hidden


def params(shape: VitShape) -> int:
    """Number of parameters of a timm ViT of ``shape``.

    Exact for timm's ``VisionTransformer`` as DeiT and the original ViTs build it, dense or
    pruned: patch embedding with bias, class/distillation/register tokens, a position embedding
    that covers the prefix tokens too, ``qkv_bias=True``, a final LayerNorm (``norm`` or
    ``fc_norm``) and one or two linear classifiers. Not counted (a model with them has more):
    layer scale (``init_values``), q/k norms (``qk_norm``), a pre-norm. An attention-pooling
    head (``global_pool='map'``) is counted from its module (:class:`PoolShape`), a stem other
    than a patch embedding (T2T-ViT) from its record (:class:`StemShape`). A model with
    ``no_embed_class=True`` (e.g.
    ``vit_base_patch16_reg4_gap_256``) has ``num_prefix * embed_dim`` fewer (no position
    embedding for prefix tokens). ``qkv_bias=False`` is counted (``VitShape.qkv_bias``), and a
    dropped attention or MLP keeps only its output bias. Token selection adds no parameters.
    """
    C = shape.embed_dim
    tokens = shape.num_patches + shape.num_prefix
    embed = shape.patch_macs * C + C + shape.num_prefix * C + tokens * C  # conv, prefix, pos
    if shape.stem:
        embed = shape.stem.params
    blocks = 0
    for b in shape.blocks:
        a, D = b.heads * b.head_dim, b.mlp_hidden
        # a dropped half (no heads, or no neurons) keeps only its output bias, not its norm
        blocks += (2 * C if a else 0) + (2 * C if D else 0)  # norm1, norm2 (weight + bias)
        blocks += C * 3 * a + (3 * a if shape.qkv_bias else 0) + a * C + C  # qkv, proj
        blocks += C * D + D + D * C + C  # fc1, fc2
    head = 2 * C + shape.num_heads_out * (C * shape.num_classes + shape.num_classes)
    return embed + blocks + head + (shape.pool.params if shape.pool else 0)
