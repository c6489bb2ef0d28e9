"""Analytic compute cost of a (pruned) ViT, from its shape alone.

Counts multiply-accumulates (MACs), the ViT papers' "FLOPs" convention (fvcore's): DeiT-T 1.3G,
DeiT-S 4.6G, DeiT-B 17.6G at 224x224, *including* the patch embedding and the classifier.
Norms, biases, GELU and softmax are left out, as in those papers. :func:`batch_macs` is the one
formula; :func:`macs` (one shape) and the search (thousands of candidate plans) both call it.
Parameters are not computed here: they are counted from a model's tensors
(:func:`vitprune.surgery.count_params`).

Per block with ``h`` heads of width ``d``, MLP width ``D``, model width ``C``, ``N_in`` tokens
entering and ``N_out`` leaving (fewer than ``N_in`` where the block selects tokens):

    attention = 4 * N_in * C * (h*d) + 2 * N_in**2 * (h*d)
    mlp       = m * N_out * C * D      (m = 2 matrices, 3 for a gated MLP)

A hierarchical model (Swin) gives each block its own width ``C`` and token grid, and windowed
attention: its ``N_a`` tokens (the grid padded to whole windows) attend within windows of ``w``
tokens, so the token-squared term is ``2 * N_a * w * (h*d)`` and the projections
``4 * N_a * C * (h*d)``; the MLP sees the ``N`` grid tokens. Decomposed relative positions
(SAM) add ``N_a * (h*d) * (wh + ww)``. The layers vitprune does not prune between or after the
blocks (Swin's patch merging, SAM's neck and head) are counted whole (``between_macs``).

An attention-pooling head (``global_pool='map'``: ``L`` latent queries over the ``N`` tokens
leaving the last block, MLP width ``M``) adds ``2*L*C*C + 2*N*C*C + 2*L*N*C + 2*L*C*M``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
        mlp_matrices: C x D matrices of the MLP: 2 (``fc1``, ``fc2``), 3 for a gated MLP
            (SwiGLU's gate, value and output).
    """

    heads: int
    head_dim: int
    mlp_hidden: int
    keep_patches: int | None = None
    fuse: bool = True
    # not in the repr, so that searches fingerprinted before gated MLPs were counted resume
    mlp_matrices: int = field(default=2, repr=False)
    # a hierarchical model's block (Swin): its own width, its (H, W) token grid and attention
    # window (H, W); None: the model's width, every token, global attention
    width: int | None = field(default=None, repr=False)
    grid: tuple[int, int] | None = field(default=None, repr=False)
    window: tuple[int, int] | None = field(default=None, repr=False)
    # decomposed relative positions (SAM): each query's products with the (h + w) position
    # vectors of its window (or grid)
    rel_pos: bool = field(default=False, repr=False)

    def window_tokens(self) -> tuple[int, int] | None:
        """(tokens attention runs on: the grid padded to whole windows, tokens per window);
        None: global attention."""
        if self.window is None or self.grid is None:
            return None
        (H, W), (wh, ww) = self.grid, self.window
        return -(-H // wh) * wh * (-(-W // ww) * ww), wh * ww


@dataclass(frozen=True)
class PoolShape:
    """An attention-pooling head (timm's ``AttentionPoolLatent``, ``global_pool='map'``): latent
    queries attend over every token leaving the last block, then an MLP. It is never pruned,
    but its cost grows with the tokens it pools.

    Attributes:
        latent_len: latent queries (usually 1).
        mlp_hidden: its MLP's hidden units (0: no MLP).
        params: its parameters (part of the shape's description, which fingerprints searches;
            a model's parameters are counted from its tensors).
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
    # MACs of unpruned layers between blocks (Swin's patch merging), per image
    between_macs: int = field(default=0, repr=False)

    @property
    def windowed(self) -> bool:
        """Whether the blocks attend within windows (Swin): no token stages then."""
        return any(b.window is not None for b in self.blocks)


@dataclass(frozen=True)
class Cost:
    """MACs of a forward pass of one image, split by part."""

    patch_embed: int
    attention: int
    mlp: int
    head: int
    pool: int = 0  # an attention-pooling head, where the model has one
    between: int = 0  # unpruned layers between blocks (Swin's patch merging)

    @property
    def total(self) -> int:
        return self.patch_embed + self.between + self.attention + self.mlp + self.pool + self.head

    @property
    def blocks(self) -> int:
        """The authors' convention: attention and MLP only (no patch embedding, no classifier)."""
        return self.attention + self.mlp


def token_counts(shape: VitShape) -> list[tuple[int, int]]:
    """(tokens entering, tokens leaving) for each block, prefix tokens included."""
    out, patches = [], shape.num_patches
    for b in shape.blocks:
        if b.grid is not None:  # a hierarchical stage's own grid (no token stages)
            out.append((b.grid[0] * b.grid[1],) * 2)
            continue
        n_in = shape.num_prefix + patches
        if b.keep_patches is not None and b.keep_patches < patches:
            patches = b.keep_patches + (1 if b.fuse else 0)
        out.append((n_in, shape.num_prefix + patches))
    return out


def macs(shape: VitShape) -> Cost:
    """MACs of one image's forward pass through ``shape``."""
    counts = token_counts(shape)
    parts = batch_macs(shape, np.array([[b.heads for b in shape.blocks]], dtype=np.int64),
                       np.array([[b.mlp_hidden for b in shape.blocks]], dtype=np.int64),
                       np.array([[n for n, _ in counts]], dtype=np.int64),
                       np.array([[n for _, n in counts]], dtype=np.int64))
    return Cost(**{k: int(np.asarray(v).reshape(-1)[0]) for k, v in parts.items()})


def batch_macs(shape: VitShape, heads: np.ndarray, neurons: np.ndarray, n_in: np.ndarray,
               n_out: np.ndarray) -> dict[str, np.ndarray | int]:
    """The cost formula (the only one): MACs per image of many variants of ``shape`` at once.

    Args:
        shape: the model's shape (width, head widths, embedding, classifier, pool).
        heads, neurons: heads and MLP units kept in each block, shape (M, L) for M variants.
        n_in, n_out: tokens entering and leaving each block (prefix included), (M, L).
    Returns:
        :class:`Cost`'s fields: ``attention``, ``mlp`` and ``pool`` of shape (M,),
        ``patch_embed`` and ``head`` as ints (they do not vary), all int64.
    """
    C = shape.embed_dim
    width = np.array([b.width or C for b in shape.blocks], dtype=np.int64)  # (L,)
    a = heads * np.array([b.head_dim for b in shape.blocks], dtype=np.int64)  # (M, L)
    n_attn, span = n_in, n_in
    if shape.windowed:  # windowed blocks: padded tokens, attending within their window
        wins = [b.window_tokens() for b in shape.blocks]
        padded = np.array([w[0] if w else 0 for w in wins], dtype=np.int64)
        area = np.array([w[1] if w else 0 for w in wins], dtype=np.int64)
        is_win = np.array([w is not None for w in wins])
        n_attn, span = np.where(is_win, padded, n_in), np.where(is_win, area, n_in)
    attn = 4 * n_attn * width * a + 2 * n_attn * span * a
    rel = np.array([sum(b.window or b.grid) if b.rel_pos else 0 for b in shape.blocks],
                   dtype=np.int64)
    attn = attn + n_attn * a * rel
    mlp = np.array([b.mlp_matrices for b in shape.blocks], dtype=np.int64) * n_out * width * neurons
    c_out = int(width[-1]) if shape.blocks else C  # the classifier reads the last width
    pool = np.zeros(len(heads), dtype=np.int64)
    if shape.pool is not None:  # its cost follows the tokens it pools
        L = shape.pool.latent_len
        n = n_out[:, -1] if shape.blocks else np.full(len(heads), shape.num_prefix
                                                      + shape.num_patches)
        pool = 2 * L * C * C + 2 * n * C * C + 2 * L * n * C + 2 * L * C * shape.pool.mlp_hidden
    return {
        "patch_embed": (shape.stem.macs if shape.stem
                        else shape.num_patches * shape.patch_macs * C),
        "attention": attn.sum(axis=1), "mlp": mlp.sum(axis=1),
        "head": shape.num_heads_out * c_out * shape.num_classes, "pool": pool,
        "between": shape.between_macs,
    }
