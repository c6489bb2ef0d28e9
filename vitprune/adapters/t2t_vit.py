"""T2T-ViT (Yuan et al. 2021, "Tokens-to-Token ViT: Training Vision Transformers from Scratch on
ImageNet"), written here after the authors' reference code (github.com/yitu-opensource/T2T-ViT),
with timm ``Block``s as the backbone so that vitprune's block code prunes it unchanged.

The model: a tokens-to-token module (three soft splits, ``nn.Unfold``, with a one-head Performer
or Transformer layer between them, then a linear projection to the model width), a class token,
a frozen sinusoidal position embedding and a stack of timm ``Block``s (``qkv_bias=False``).

Facts taken from the authors' code, and what vitprune does with them:

* **Backbone attention scale.** Their ``t2t_vit_*(pretrained=True)`` path sets
  ``qk_scale = embed_dim ** -0.5`` (a relic of early timm), but their ``main.py`` trains and
  evaluates, and their README loads the released ``.pth.tar`` files, with ``pretrained=False``:
  the released weights expect timm's ``head_dim ** -0.5``, which timm's ``Attention`` uses.
* **T2T Transformer scale.** Their ``Token_transformer`` scales by ``dim ** -0.5`` where ``dim``
  is the layer's *input* width (147 = 3*7*7 for ``attention1``, 576 = 64*3*3 for
  ``attention2``), not the query width ``token_dim``; ``qk_scale`` never reaches the T2T module,
  so the same holds with and without ``pretrained``. :class:`T2TAttention` does the same.
* **Performer random features** ``w`` are a frozen parameter, in the state_dict: loaded from a
  checkpoint, never drawn again. Their ``kqv`` output is split in the order k, q, v.
* **Position embedding**: a sinusoid table held in a frozen parameter (key ``pos_embed``).

Parameter counts (``sum(p.numel())`` over all parameters, the frozen ``pos_embed`` and ``w``
included, as the authors' ``main.py`` counts them) and MACs, 224x224, against their README:

============  ==========  =========  ==========  =========
model         params      published  MACs        published
============  ==========  =========  ==========  =========
t2t_vit_7      4,310,222  4.3M        1.147 G    1.1G
t2t_vit_10     5,889,230  5.9M        1.516 G    1.5G
t2t_vit_12     6,941,902  6.9M        1.763 G    1.8G
t2t_vit_14    21,545,550  21.5M       4.783 G    4.8G
t2t_vit_19    39,177,422  39.2M       8.480 G    8.5G
t2t_vit_24    64,105,934  64.1M      13.662 G    13.8G
t2t_vit_t_14  21,541,070  21.5M       6.089 G    6.1G
t2t_vit_t_19  39,172,942  39.2M       9.785 G    9.8G
t2t_vit_t_24  64,101,454  64.1M      14.967 G    15.0G
============  ==========  =========  ==========  =========

MACs follow vitprune's convention (:mod:`vitprune.cost`): multiply-accumulates of every linear
layer and of the attention products (``q @ k^T``, ``attn @ v``) of the blocks, the class head,
and in the T2T module its linear layers, the T2T Transformer's attention products and the
Performer's random-feature products (``x @ w^T`` for q and k, the normaliser, ``k'^T v``,
``q' (k'^T v)``); norms, GELU, softmax, ``exp`` and ``Unfold`` (a copy) are left out. This layer
count rounds to every published figure but one, so the published "MACs" are this convention and
no other formula is needed. The exception, T2T-ViT-24 (13.66 G, 1.0% under 13.8G), is an
inconsistency of the published table: the Performer and ``-t`` models of one depth differ only
in the T2T module, 1.30 G by this count and 1.3G in the published -14 and -19 pairs, but
15.0 - 13.8 = 1.2G in the -24 pair, whose ``-t`` figure (15.0G) this count matches.

The T2T module's MACs (:func:`t2t_macs`: 0.299 G Performer, 1.604 G Transformer for width 384)
and the whole model's equal what ``torch.utils.flop_counter.FlopCounterMode`` measures (FLOPs / 2)
with fused attention off (the counter does not see CPU ``scaled_dot_product_attention``). A
count blind to the blocks' attention products (0.417 G in T2T-ViT-14) gets 4.37 G, near the
4.33 G a port to timm reports for T2T-ViT-14.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_, use_fused_attn
from timm.models.vision_transformer import Block
from torch import nn

from ..cost import StemShape, VitShape
from ..errors import ModelError
from .base import ArchSpec
from .timm_vit import TimmBlocks

#: (kernel, stride, padding) of the three soft splits, as the authors' 224x224 models use them
T2T_KERNELS = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
#: the Performer's random features per query/key channel (the authors' ``kernel_ratio``)
PERFORMER_KERNEL_RATIO = 0.5
#: the authors' ImageNet evaluation preprocessing (their ``_cfg``: timm's defaults, bicubic, 0.9)
IMAGENET_DATA = {"interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "crop_pct": 0.9, "crop_mode": "center"}
T2T_TYPES = ("performer", "transformer")

_IMAGENET = dict(img_size=224, in_chans=3, num_classes=1000, token_dim=64)
T2T_CONFIGS: dict[str, dict[str, Any]] = {
    "t2t_vit_7": dict(_IMAGENET, embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_10": dict(_IMAGENET, embed_dim=256, depth=10, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_12": dict(_IMAGENET, embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_14": dict(_IMAGENET, embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_19": dict(_IMAGENET, embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "t2t_vit_24": dict(_IMAGENET, embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
    "t2t_vit_t_14": dict(_IMAGENET, embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0,
                         t2t_type="transformer"),
    "t2t_vit_t_19": dict(_IMAGENET, embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0,
                         t2t_type="transformer"),
    "t2t_vit_t_24": dict(_IMAGENET, embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0,
                         t2t_type="transformer"),
    # 28x28 grey images (Fashion-MNIST): splits 28 -> 14 -> 7 -> 7, 49 patch tokens
    "t2t_vit_tiny": dict(img_size=28, in_chans=1, num_classes=10, token_dim=16, embed_dim=48,
                         depth=4, num_heads=3, mlp_ratio=3.0,
                         t2t_kernels=((3, 2, 1), (3, 2, 1), (3, 1, 1))),
}

#: the authors' README at 224x224: (parameters in millions, GMACs)
T2T_PUBLISHED: dict[str, tuple[float, float]] = {
    "t2t_vit_7": (4.3, 1.1), "t2t_vit_10": (5.9, 1.5), "t2t_vit_12": (6.9, 1.8),
    "t2t_vit_14": (21.5, 4.8), "t2t_vit_19": (39.2, 8.5), "t2t_vit_24": (64.1, 13.8),
    "t2t_vit_t_14": (21.5, 6.1), "t2t_vit_t_19": (39.2, 9.8), "t2t_vit_t_24": (64.1, 15.0),
}


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """(1, n_position, dim) sinusoid position table (Vaswani et al.), as the authors build it:
    channel ``j`` of position ``p`` is ``sin`` (even ``j``) or ``cos`` (odd ``j``) of
    ``p / 10000 ** (2 * (j // 2) / dim)``, computed in float64."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(dim)
    angle = pos / torch.pow(10000.0, (2 * (j // 2)).double() / dim)  # (n_position, dim)
    table = torch.where(j % 2 == 0, angle.sin(), angle.cos())
    return table.float().unsqueeze(0)


def unfold_size(n: int, kernel: int, stride: int, padding: int) -> int:
    """Positions ``nn.Unfold`` produces along an axis of length ``n``."""
    return (n + 2 * padding - kernel) // stride + 1


class T2TAttention(nn.Module):
    """The T2T Transformer's one-head attention: input width ``dim``, output width ``in_dim``,
    with ``v`` as the residual (input and output widths differ).

    The logit scale is ``dim ** -0.5`` (input width), as in the authors' ``Token_transformer``,
    which their released ``-t`` checkpoints were trained with.
    """

    def __init__(self, dim: int, in_dim: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.in_dim = in_dim
        self.scale = dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, 3 * in_dim, bias=False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(in_dim, in_dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, in_dim)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.in_dim).unbind(2)  # (B, T, in_dim) each
        if self.fused_attn:
            drop = self.attn_drop.p if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=self.scale)
        else:  # explicit, so that operation counters see the products
            y = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        return v + self.proj_drop(self.proj(y))

    def macs(self, tokens: int) -> int:
        """MACs for ``tokens`` tokens: qkv, q @ k^T, attn @ v, proj."""
        e = self.in_dim
        return tokens * self.qkv.in_features * 3 * e + 2 * tokens * tokens * e + tokens * e * e


class TokenTransformer(nn.Module):
    """T2T layer of the ``-t`` models: pre-norm attention (``v`` residual), pre-norm MLP.
    Keys as the authors': ``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1/fc2``."""

    def __init__(self, dim: int, in_dim: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = T2TAttention(dim, in_dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = Mlp(in_dim, int(in_dim * mlp_ratio), in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, in_dim)."""
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def macs(self, tokens: int) -> int:
        return self.attn.macs(tokens) + 2 * tokens * self.mlp.fc1.in_features * self.mlp.fc1.out_features


class TokenPerformer(nn.Module):
    """T2T layer of the default models: one-head Performer attention (positive random features,
    Choromanski et al. 2021; linear in the token count) with ``v`` as the residual, then an MLP.

    ``w`` ((m, in_dim) orthogonal random features times ``sqrt(m)``) is drawn once at
    construction and frozen; it is a parameter so that checkpoints carry it.
    Keys: ``kqv`` (outputs k, q, v in that order), ``proj``, ``norm1``, ``norm2``, ``w``,
    ``mlp.fc1``, ``mlp.fc2`` (the authors' ``mlp.0``, ``mlp.2``).
    """

    def __init__(self, dim: int, in_dim: int, drop: float = 0.1,
                 kernel_ratio: float = PERFORMER_KERNEL_RATIO):
        super().__init__()
        self.emb = in_dim
        self.m = int(in_dim * kernel_ratio)
        self.epsilon = 1e-8  # keeps the normaliser away from zero, as the authors'
        self.kqv = nn.Linear(dim, 3 * in_dim)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(in_dim, in_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(in_dim)
        self.mlp = Mlp(in_dim, in_dim, in_dim, drop=(0.0, drop))
        w = torch.empty(self.m, in_dim)
        if w.device.type != "meta":
            w = nn.init.orthogonal_(w) * math.sqrt(self.m)
        self.w = nn.Parameter(w, requires_grad=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, in_dim) -> (B, T, m) positive random features ``exp(w x - |x|^2 / 2) / sqrt(m)``
        of the softmax kernel, in float32 (``exp`` overflows half precision)."""
        x = x.float()
        half_sq = (x * x).sum(dim=-1, keepdim=True) / 2  # (B, T, 1)
        return torch.exp(x @ self.w.float().t() - half_sq) / math.sqrt(self.m)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, in_dim)."""
        k, q, v = self.kqv(x).split(self.emb, dim=-1)  # (B, T, in_dim) each
        kp, qp = self.features(k), self.features(q)  # (B, T, m)
        norm = qp @ kp.sum(dim=1).unsqueeze(-1)  # (B, T, 1)
        kptv = v.float().transpose(1, 2) @ kp  # (B, in_dim, m)
        y = (qp @ kptv.transpose(1, 2)) / (norm + self.epsilon)  # (B, T, in_dim)
        return v + self.dp(self.proj(y.to(v.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) -> (B, T, in_dim)."""
        x = self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def macs(self, tokens: int) -> int:
        """MACs for ``tokens`` tokens: kqv, the random features of q and k, the normaliser,
        k'^T v, q' (k'^T v), proj, MLP."""
        t, e, m = tokens, self.emb, self.m
        attn = t * self.kqv.in_features * 3 * e + 2 * t * e * m + t * m + 2 * t * e * m + t * e * e
        return attn + 2 * t * e * self.mlp.fc1.out_features


class T2TModule(nn.Module):
    """Tokens-to-token: soft split -> T2T layer -> soft split -> T2T layer -> soft split ->
    linear projection to ``embed_dim``. Each soft split (``nn.Unfold``) turns overlapping
    ``k x k`` neighbourhoods into tokens of width ``channels * k * k``.

    Attributes:
        grids: ((H, W) after each soft split), for the image size it was built for.
        num_patches: tokens it outputs (H * W of the last grid).
    """

    def __init__(self, img_size: tuple[int, int], in_chans: int, embed_dim: int,
                 token_dim: int, t2t_type: str,
                 kernels: Sequence[Sequence[int]] = T2T_KERNELS, drop: float = 0.1):
        super().__init__()
        (k0, s0, p0), (k1, s1, p1), (k2, s2, p2) = kernels
        self.soft_split0 = nn.Unfold(kernel_size=k0, stride=s0, padding=p0)
        self.soft_split1 = nn.Unfold(kernel_size=k1, stride=s1, padding=p1)
        self.soft_split2 = nn.Unfold(kernel_size=k2, stride=s2, padding=p2)
        if t2t_type == "performer":
            self.attention1 = TokenPerformer(in_chans * k0 * k0, token_dim, drop=drop)
            self.attention2 = TokenPerformer(token_dim * k1 * k1, token_dim, drop=drop)
        else:
            self.attention1 = TokenTransformer(in_chans * k0 * k0, token_dim)
            self.attention2 = TokenTransformer(token_dim * k1 * k1, token_dim)
        self.project = nn.Linear(token_dim * k2 * k2, embed_dim)
        self.grids = self._grids(img_size)
        self.num_patches = math.prod(self.grids[-1])

    def _grids(self, size: Sequence[int]) -> tuple[tuple[int, int], ...]:
        out, (h, w) = [], size
        for split in (self.soft_split0, self.soft_split1, self.soft_split2):
            k, s, p = split.kernel_size, split.stride, split.padding
            h, w = unfold_size(h, k, s, p), unfold_size(w, k, s, p)
            out.append((h, w))
        return tuple(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, N, embed_dim) tokens."""
        (h0, w0), (h1, w1), _ = self._grids(x.shape[-2:])
        x = self.attention1(self.soft_split0(x).transpose(1, 2))  # (B, h0*w0, token_dim)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h0, w0)
        x = self.attention2(self.soft_split1(x).transpose(1, 2))  # (B, h1*w1, token_dim)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h1, w1)
        return self.project(self.soft_split2(x).transpose(1, 2))  # (B, N, embed_dim)


def t2t_macs(t2t: T2TModule) -> int:
    """MACs of the tokens-to-token module for one image of the size it was built for."""
    (h0, w0), (h1, w1), (h2, w2) = t2t.grids
    project = h2 * w2 * t2t.project.in_features * t2t.project.out_features
    return t2t.attention1.macs(h0 * w0) + t2t.attention2.macs(h1 * w1) + project


class T2TViT(nn.Module):
    """T2T-ViT: tokens-to-token module, class token, frozen sinusoidal position embedding,
    timm ``Block``s, final norm, linear head on the class token.

    Args:
        img_size: input size, an int (square) or (H, W).
        in_chans: input channels.
        num_classes: classes of the head (0: no head, ``forward`` returns features).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the backbone (timm ``Block``s).
        t2t_type: ``"performer"`` (T2T-ViT-N) or ``"transformer"`` (T2T-ViT_t-N).
        token_dim: width of the T2T layers' tokens.
        t2t_kernels: (kernel, stride, padding) of the three soft splits.
        drop_rate, attn_drop_rate, drop_path_rate: dropout in the blocks (stochastic depth
            rising linearly to ``drop_path_rate``).
        performer_drop: dropout in the Performer T2T layers (the authors fix it at 0.1).

    Every argument is JSON-ready (model.json saves them); sequences may come back as lists.
    """

    def __init__(self, img_size: int | Sequence[int] = 224, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 384, depth: int = 14,
                 num_heads: int = 6, mlp_ratio: float = 3.0, qkv_bias: bool = False,
                 t2t_type: str = "performer", token_dim: int = 64,
                 t2t_kernels: Sequence[Sequence[int]] = T2T_KERNELS, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 performer_drop: float = 0.1):
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        kernels = tuple(tuple(k) for k in t2t_kernels)
        _check_args(size, t2t_type, kernels, embed_dim, num_heads)
        self.img_size, self.in_chans = size, in_chans
        self.num_classes, self.embed_dim = num_classes, embed_dim

        self.tokens_to_token = T2TModule(size, in_chans, embed_dim, token_dim, t2t_type,
                                         kernels, drop=performer_drop)
        n = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sinusoid_table(n + 1, embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # as linspace
        self.blocks = nn.ModuleList([
            # nn.LayerNorm (eps 1e-5) as the authors' blocks; timm's default would be 1e-6
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  proj_drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[i],
                  norm_layer=nn.LayerNorm)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, 1 + N, embed_dim) normalised tokens, class token first."""
        x = self.tokens_to_token(x)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, embed_dim) tokens -> (B, num_classes) logits of the class token."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    """The authors' initialisation: truncated normal (std 0.02) linear weights, zero biases."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _check_args(size: tuple, t2t_type: str, kernels: tuple, embed_dim: int,
                num_heads: int) -> None:
    if t2t_type not in T2T_TYPES:
        raise ModelError(f"t2t_type must be one of {', '.join(T2T_TYPES)}, got {t2t_type!r}")
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ModelError(f"img_size must be an int or [H, W], got {list(size)}")
    ok = len(kernels) == 3 and all(
        len(k) == 3 and all(isinstance(v, int) for v in k) and k[0] > 0 and k[1] > 0
        for k in kernels)
    if not ok:
        raise ModelError("t2t_kernels must be three [kernel, stride, padding] triples, got "
                         f"{[list(k) for k in kernels]}")
    if embed_dim % num_heads:
        raise ModelError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
    h, w = size
    for k, s, p in kernels:
        h, w = unfold_size(h, k, s, p), unfold_size(w, k, s, p)
        if h < 1 or w < 1:
            raise ModelError(f"img_size {list(size)} is too small for the soft splits "
                             f"{[list(k) for k in kernels]}")


# ---- the adapter ----------------------------------------------------------------------------
# Official checkpoints name the Performer's MLP as an nn.Sequential (Linear, GELU, Linear,
# Dropout); ours is timm's Mlp. Every other key is the same.
_OFFICIAL_KEYS = ((re.compile(r"^(tokens_to_token\.attention[12]\.mlp)\.0\."), r"\1.fc1."),
                  (re.compile(r"^(tokens_to_token\.attention[12]\.mlp)\.2\."), r"\1.fc2."))
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.")


def official_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the authors' checkpoints -> ours (idempotent: our own keys pass unchanged)."""
    out = {}
    for k, v in state_dict.items():
        for pattern, repl in _OFFICIAL_KEYS:
            k = pattern.sub(repl, k)
        out[k] = v
    return out


def _size_of(depth: int, width: int, t2t_type: str) -> str:
    """The published name of a T2T size, or a description of an unpublished one."""
    for name, cfg in T2T_CONFIGS.items():
        if (name in T2T_PUBLISHED and cfg["depth"] == depth and cfg["embed_dim"] == width
                and cfg.get("t2t_type", "performer") == t2t_type):
            return name
    return f"an unpublished T2T-ViT size (depth {depth}, width {width}, {t2t_type} T2T)"


class T2TAdapter(TimmBlocks):
    """T2T-ViT models (:class:`T2TViT`), built by the names in :data:`T2T_CONFIGS`."""

    family = "t2t"
    constructor = T2TViT
    describes = "a T2T-ViT name (" + ", ".join(T2T_CONFIGS) + ")"

    def handles(self, model: nn.Module) -> bool:
        return isinstance(model, T2TViT)

    def knows(self, name: str) -> bool:
        return name in T2T_CONFIGS

    def names(self) -> list[str]:
        return list(T2T_CONFIGS)

    def build(self, arch: ArchSpec, pretrained: bool = False) -> nn.Module:
        if arch.name not in T2T_CONFIGS:
            raise ModelError(f"unknown T2T-ViT model {arch.name!r}; use one of "
                             f"{', '.join(T2T_CONFIGS)}")
        if pretrained:
            raise ModelError(
                f"T2T-ViT weights are not published through a hub, so {arch.name} cannot be built "
                "with --pretrained: download the authors' .pth.tar (github.com/yitu-opensource/"
                "T2T-ViT, README) and pass it as --checkpoint FILE")
        allowed = set(inspect.signature(T2TViT.__init__).parameters) - {"self"}
        unknown = sorted(set(arch.kwargs) - allowed)
        if unknown:
            raise ModelError(f"{arch.name} does not accept the options {unknown}; T2T-ViT takes "
                             f"{', '.join(sorted(allowed))}")
        return T2TViT(**{**T2T_CONFIGS[arch.name], **arch.kwargs})

    def checkpoint_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]
                              ) -> dict[str, torch.Tensor]:
        """The authors' checkpoint keys mapped to ours (only the Performer's ``mlp.0`` / ``mlp.2``
        differ: ``mlp.fc1`` / ``mlp.fc2``), after checking that it holds the model's size.

        Raises:
            ModelError: the file is not a T2T-ViT checkpoint, holds another size (named), or
                was made for another image size.
        """
        sd = official_to_ours(state_dict)
        found = _describe(sd)
        if found is None:
            raise ModelError(
                "checkpoint is not a T2T-ViT checkpoint (no tokens_to_token, cls_token and "
                f"blocks.N keys; found e.g. {', '.join(sorted(sd)[:4])}); pass a T2T-ViT file or "
                "the --model it was trained as")
        own = (len(model.blocks), model.embed_dim, _t2t_type(model))
        if found != own:
            names = ", ".join(n for n in T2T_CONFIGS if n in T2T_PUBLISHED)
            raise ModelError(
                f"checkpoint holds {_size_of(*found)}, but the model is {_size_of(*own)}; build "
                f"the model the checkpoint was trained as (--model NAME; published T2T-ViT sizes: "
                f"{names}; t2t_vit_t_* use the Transformer T2T, the others the Performer)")
        pos = sd.get("pos_embed")
        if pos is not None and pos.shape != model.pos_embed.shape:
            grid = math.isqrt(max(pos.shape[1] - 1, 0))
            stride = math.prod(k[1] for k in _kernels(model))
            raise ModelError(
                f"checkpoint's position embedding covers {pos.shape[1]} tokens, the model's "
                f"{model.pos_embed.shape[1]}: it was made for another image size (about "
                f"{grid * stride}x{grid * stride}); build the model with --model-args "
                f"img_size={grid * stride}")
        return sd

    def check(self, model: nn.Module) -> None:
        if not isinstance(model, T2TViT):
            raise ModelError(f"{type(model).__name__} is not a T2T-ViT")
        self.check_blocks(self.blocks(model))
        self.qkv_bias(model)  # all alike

    def shape(self, model: nn.Module) -> VitShape:
        self.check(model)
        t2t = model.tokens_to_token
        before = [*t2t.parameters(), model.cls_token, model.pos_embed]
        shape = VitShape(
            embed_dim=model.embed_dim,
            num_patches=t2t.num_patches,
            num_prefix=1,
            patch_macs=0,  # the stem is counted whole, in stem
            num_classes=model.num_classes,
            num_heads_out=1,
            blocks=self.block_shapes(model),
            # frozen pos_embed and Performer w counted: the authors' main.py counts them
            stem=StemShape(macs=t2t_macs(t2t), params=sum(p.numel() for p in before)),
            qkv_bias=self.qkv_bias(model),
        )
        return self.with_token_stages(model, shape)

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        return (model.in_chans, *model.img_size)

    def native_data_config(self, model: nn.Module) -> dict | None:
        """The authors' ImageNet evaluation preprocessing for three-channel models (None for
        others: their datasets bring their own)."""
        if model.in_chans != 3:
            return None
        return {"input_size": list(self.input_shape(model)), **IMAGENET_DATA}

    def num_prefix(self, model: nn.Module) -> int:
        return 1

    def has_class_token(self, model: nn.Module) -> bool:
        return True


def _t2t_type(model: T2TViT) -> str:
    return ("performer" if isinstance(model.tokens_to_token.attention1, TokenPerformer)
            else "transformer")


def _kernels(model: T2TViT) -> list[tuple[int, int, int]]:
    t2t = model.tokens_to_token
    return [(s.kernel_size, s.stride, s.padding)
            for s in (t2t.soft_split0, t2t.soft_split1, t2t.soft_split2)]


def _describe(sd: dict[str, torch.Tensor]) -> tuple[int, int, str] | None:
    """(depth, width, T2T type) of a T2T-ViT state_dict; None: not one."""
    blocks = {int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))}
    cls = sd.get("cls_token")
    if not blocks or cls is None or not any(k.startswith("tokens_to_token.") for k in sd):
        return None
    t2t_type = ("performer" if "tokens_to_token.attention1.kqv.weight" in sd else "transformer")
    return max(blocks) + 1, int(cls.shape[-1]), t2t_type
