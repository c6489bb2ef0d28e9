"""timm's ``VisionTransformer`` family (ViT, DeiT, distilled DeiT, register-token and
attention-pool ViTs), and the block-level operations every family built of timm ``Block``s shares.

Two kinds of names are built here:

* any timm model name whose class is a ``timm.models.vision_transformer.VisionTransformer``
  (``deit_small_patch16_224``, ``vit_base_patch16_224`` ...), with random or timm's published
  weights;
* the small configurations registered in :data:`SMALL_CONFIGS` for 28x28 one-channel input
  (Fashion-MNIST), used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import timm
import torch
from timm.layers import Attention, AttentionPoolLatent, Mlp
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from .. import fsutil
from ..cost import BlockShape, PoolShape, VitShape
from ..errors import ModelError
from ..plan import TokenStage, apply_token_stages
from .base import Adapter, ArchSpec, BlockParts, DroppedHalf, token_stage
from .tokens import TokenSelecting, attend

# Small ViTs for 28x28 grey images. Patch 4 gives 7x7 = 49 patches + 1 class token = 50 tokens.
SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    # The demo / benchmark baseline: DeiT-style, depth 12, width 64, four heads of 16, MLP 256.
    # Width 64 rather than 96 because training on 2 CPU cores is 1.6x faster (246 vs 150 img/s)
    # and every later stage (search, fine-tuning, ablations) is paid for many times over.
    "fmnist_vit_d12": dict(
        img_size=28, patch_size=4, in_chans=1, num_classes=10,
        embed_dim=64, depth=12, num_heads=4, mlp_ratio=4.0, qkv_bias=True,
    ),
    # The 197-token evidence model: patch 2 gives 14x14 = 196 patches + 1 class token, DeiT-S's
    # token count. Width 64 and depth 6 keep a training epoch near 10 minutes on one CPU thread.
    # Its MACs per block: attention projections 22%, attention's token-squared products 34%, MLP
    # 44% (DeiT-S: 30% / 8% / 62%); at width 64 the N^2 term weighs more than at width 384.
    "fmnist_vit_t197": dict(
        img_size=28, patch_size=2, in_chans=1, num_classes=10,
        embed_dim=64, depth=6, num_heads=4, mlp_ratio=4.0, qkv_bias=True,
    ),
    # A very small model for fast tests and the smoke-test demo.
    "fmnist_vit_tiny": dict(
        img_size=28, patch_size=7, in_chans=1, num_classes=10,
        embed_dim=32, depth=4, num_heads=4, mlp_ratio=2.0, qkv_bias=True,
    ),
}


def attention(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention`` forward that also returns its ``qkv`` projection, which selection scores
    tokens by.

    It computes what ``attn(x)`` computes for the attention vitprune prunes (plain ``Attention``
    without output norm or gate, which :meth:`TimmBlocks.check_blocks` guarantees); a test holds
    it to timm's own forward. Returning ``qkv`` here, instead of catching it with a forward hook,
    keeps the block one graph for ``torch.compile`` and exporters.

    Args:
        attn: a timm ``Attention``.
        x: (B, N, C) normalised tokens.

    Returns:
        ((B, N, C) attention output, (B, N, 3 * heads * head_dim) ``qkv`` output).
    """
    B, N, _ = x.shape
    qkv = attn.qkv(x)
    q, k, v = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)  # (B, h, N, d) each, y too
    drop = attn.attn_drop.p if attn.training else 0.0
    y = attend(q, k, v, attn.scale, drop, explicit=not attn.fused_attn)
    y = attn.norm(y.transpose(1, 2).reshape(B, N, attn.attn_dim))
    return attn.proj_drop(attn.proj(y)), qkv


# The parts of a timm Block, adopted under the same names so state_dict keys do not change.
BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")


class TokenSelectBlock(TokenSelecting):
    """A timm ``Block`` that selects tokens between its attention and its MLP.

    It adopts the block's submodules (same objects, same attribute names), so
    ``blocks.3.attn.qkv.weight`` and friends keep their keys, and runs timm's two residual lines
    with token selection in between. Attention runs through :func:`attention`, which also hands
    back the ``qkv`` output the class-token attention is computed from.
    """

    def __init__(self, block: nn.Module, stage: TokenStage, num_prefix: int,
                 has_class_token: bool) -> None:
        super().__init__(stage, num_prefix, has_class_token)
        self.adopt(block, BLOCK_PARTS)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        """(B, N, C) -> (B, N', C) with N' = prefix + kept (+ 1 fused) tokens."""
        if attn_mask is not None or is_causal:
            raise ModelError(
                "a token-selecting block cannot take an attention mask or causal attention: the "
                "mask would no longer match the tokens; run the model without attn_mask"
            )
        y, qkv = attention(self.attn, self.norm1(x))
        x = x + self.drop_path1(self.ls1(y))
        a = self.attn
        x = self.select(x, qkv, a.num_heads, a.head_dim, a.scale, a.q_norm, a.k_norm)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class TimmBlocks(Adapter):
    """Block-level operations for timm models whose blocks are ``model.blocks`` (``Block``s, or
    EVA's ``EvaBlock``s), their patch embedding, preprocessing and feature-map helpers."""

    @abstractmethod
    def num_prefix(self, model: nn.Module) -> int:
        """Leading tokens (class, distillation, register) that token selection never drops."""

    @abstractmethod
    def has_class_token(self, model: nn.Module) -> bool:
        """Whether token 0 is a class token."""

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return model.blocks

    def set_block(self, model: nn.Module, index: int, block: nn.Module) -> None:
        model.blocks[index] = block

    def parts(self, block: nn.Module) -> BlockParts:
        if isinstance(block.attn, DroppedHalf) or isinstance(block.mlp, DroppedHalf):
            raise ModelError("this block's attention or MLP was dropped: score, mask and prune "
                             "the dense model")
        return BlockParts((block.attn.qkv,), block.attn.proj, (block.mlp.fc1,), block.mlp.fc2)

    def drop_half(self, block: nn.Module, half: str) -> None:
        if half == "attention":
            a = block.attn
            bias = a.proj.bias if a.proj.bias is not None else torch.zeros(a.proj.out_features)
            block.attn, block.norm1 = DroppedHalf(bias, a.head_dim), nn.Identity()
        else:
            m = block.mlp
            bias = m.fc2.bias if m.fc2.bias is not None else torch.zeros(m.fc2.out_features)
            block.mlp, block.norm2 = DroppedHalf(bias), nn.Identity()

    def set_heads(self, block: nn.Module, heads: int) -> None:
        # timm's forward reshapes qkv with num_heads/head_dim and merges heads with attn_dim
        block.attn.num_heads = heads
        block.attn.attn_dim = heads * block.attn.head_dim

    def halves(self, block: nn.Module) -> tuple[Any, Any]:
        def attn(x: torch.Tensor) -> torch.Tensor:
            return x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))

        def mlp(x: torch.Tensor) -> torch.Tensor:
            return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))

        return attn, mlp

    def block_shapes(self, model: nn.Module) -> tuple[BlockShape, ...]:
        def shape(b: nn.Module) -> BlockShape:
            heads = 0 if isinstance(b.attn, DroppedHalf) else b.attn.num_heads
            mlp = 0 if isinstance(b.mlp, DroppedHalf) else b.mlp.fc1.out_features
            return BlockShape(heads=heads, head_dim=b.attn.head_dim, mlp_hidden=mlp)

        return tuple(shape(b) for b in self.blocks(model))

    def qkv_bias(self, model: nn.Module) -> bool:
        """Whether the blocks' ``qkv`` layers have a bias (all alike; dropped attentions aside).

        Raises:
            ModelError: some have one and some do not.
        """
        have = {b.attn.qkv.bias is not None for b in self.blocks(model)
                if not isinstance(b.attn, DroppedHalf)}
        if len(have) > 1:
            raise ModelError("the blocks must all have, or all lack, a qkv bias")
        return have.pop() if have else True

    def with_token_stages(self, model: nn.Module, shape: VitShape) -> VitShape:
        """``shape`` with the token stages ``model``'s blocks run, kept counts computed block by
        block by :func:`vitprune.plan.kept_tokens`, as the model itself computes them."""
        stages = [_at_block(s, i) for i, b in enumerate(self.blocks(model))
                  if (s := token_stage(b))]
        return apply_token_stages(shape, stages) if stages else shape

    def token_block(self, model: nn.Module, index: int, stage: TokenStage) -> nn.Module:
        old = self.blocks(model)[index]
        return TokenSelectBlock(old, stage, self.num_prefix(model),
                                self.has_class_token(model)).train(old.training)

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        pe = model.patch_embed
        return (pe.proj.in_channels, *pe.img_size)

    def native_data_config(self, model: nn.Module) -> dict | None:
        """timm's ``resolve_data_config`` (mean, std, interpolation, crop_pct, crop_mode from
        the model's ``pretrained_cfg``) at the input size the model is built for; None for a
        model without a ``pretrained_cfg`` (vitprune's small registered configurations, whose
        in-memory datasets bring their own normalisation), and for one built with another
        channel count than its ``pretrained_cfg`` normalises (``in_chans=1``: timm's three
        means do not describe its images)."""
        return timm_data_config(model, self.input_shape(model))

    def after_token_stages(self, model: nn.Module, stages: Sequence[int]) -> None:
        refuse_feature_maps(model, stages)


    def shape(self, model: nn.Module) -> VitShape:
        """The shape of a timm model with ``patch_embed``, prefix tokens, ``blocks`` and an
        optional attention pool (ViT/DeiT, EVA)."""
        self.check(model)  # reading and pruning accept and refuse the same models
        pe = model.patch_embed
        shape = VitShape(
            embed_dim=model.embed_dim,
            num_patches=pe.num_patches,
            num_prefix=model.num_prefix_tokens,
            patch_macs=pe.proj.in_channels * math.prod(pe.proj.kernel_size),
            num_classes=model.num_classes,
            num_heads_out=self.classifier_heads(model),
            blocks=self.block_shapes(model),
            pool=_pool_shape(getattr(model, "attn_pool", None)),
            qkv_bias=self.qkv_bias(model),
        )
        return self.with_token_stages(model, shape)

    def classifier_heads(self, model: nn.Module) -> int:
        """Classifier heads the model has (the distilled DeiT has two)."""
        return 1

    def check_blocks(self, blocks: Sequence[nn.Module]) -> None:
        """Raise :class:`ModelError` unless every block is one vitprune can prune.

        Supported: timm ``Block`` (or a token-selecting block holding the same parts) with plain
        ``Attention`` (q/k norms allowed) and ``Mlp`` of linear layers. Refused, because slicing
        them would give a wrong model: attention output norm (``scale_attn_norm``) or gate, MLP
        hidden norm (``scale_mlp_norm``), GLU/SwiGLU MLPs, convolutional MLPs, and other block
        types (``ResPostBlock``, ``ParallelScalingBlock`` ...).
        """
        for i, b in enumerate(blocks):
            if type(b) is not Block and token_stage(b) is None:
                raise _unsupported(i, f"block type {type(b).__name__}")
            attn, mlp = b.attn, b.mlp
            if not isinstance(attn, DroppedHalf):  # a dropped half was checked when dropped
                if type(attn) is not Attention:
                    raise _unsupported(i, f"attention type {type(attn).__name__}")
                if (not isinstance(attn.norm, nn.Identity)
                        or getattr(attn, "gate", None) is not None):
                    raise _unsupported(i, "attention with an output norm or gate")
            if not isinstance(mlp, DroppedHalf):
                if (type(mlp) is not Mlp
                        or not all(isinstance(f, nn.Linear) for f in (mlp.fc1, mlp.fc2))):
                    raise _unsupported(i, f"MLP type {type(mlp).__name__}")
                if not isinstance(mlp.norm, nn.Identity):
                    raise _unsupported(i, "MLP with a hidden-layer norm")


class TimmViTAdapter(TimmBlocks):
    """timm's ``VisionTransformer`` and its subclasses."""

    family = "timm"
    constructor = VisionTransformer
    #: the timm modules that build ``VisionTransformer``s (their blocks are checked on build)
    timm_modules = ("vision_transformer", "vision_transformer_hybrid", "deit", "vitamin")
    describes = ("a registered name (" + ", ".join(sorted(SMALL_CONFIGS)) + ") or a timm "
                 "VisionTransformer name (timm.list_models(module='vision_transformer') or "
                 "module='deit')")

    def handles(self, model: nn.Module) -> bool:
        return isinstance(model, VisionTransformer)

    def knows(self, name: str) -> bool:
        return name in SMALL_CONFIGS or super().knows(name)

    def names(self) -> list[str]:
        return sorted(SMALL_CONFIGS) + super().names()

    def build(self, arch: ArchSpec, pretrained: bool = False) -> nn.Module:
        if arch.name in SMALL_CONFIGS:
            if pretrained:
                raise ModelError(f"{arch.name} has no published weights; train it (vitprune "
                                 "train) or pass --checkpoint FILE")
            return VisionTransformer(**{**SMALL_CONFIGS[arch.name], **arch.kwargs})
        return build_timm(arch, pretrained, _check_vit)

    def check(self, model: nn.Module) -> None:
        _check_vit(model)
        self.check_blocks(self.blocks(model))

    def num_prefix(self, model: nn.Module) -> int:
        return model.num_prefix_tokens

    def has_class_token(self, model: nn.Module) -> bool:
        return model.cls_token is not None

    def classifier_heads(self, model: nn.Module) -> int:
        return 2 if getattr(model, "head_dist", None) is not None else 1  # distilled DeiT


def timm_data_config(model: nn.Module, input_shape: tuple[int, int, int]) -> dict | None:
    """timm's ``resolve_data_config`` for ``model`` at ``input_shape``, JSON-ready; None
    without a ``pretrained_cfg``, or where its means are for another channel count."""
    from timm.data import resolve_data_config

    if not getattr(model, "pretrained_cfg", None):
        return None
    cfg = resolve_data_config({"input_size": input_shape}, model=model)
    if len(cfg.get("mean", ())) != input_shape[0]:
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def build_timm(arch: ArchSpec, pretrained: bool,
               check: Callable[[nn.Module, str], None]) -> nn.Module:
    """``timm.create_model(arch.name, **arch.kwargs)``, random or with timm's published
    weights, refused by ``check(model, name)`` unless it is of the family's class.

    Raises:
        ModelError: not the family's class, options the model does not take, or no weights.
    """
    try:
        if pretrained:
            return _published(arch.name, arch.kwargs, check)
        model = timm.create_model(arch.name, pretrained=False, **arch.kwargs)
    except TypeError as exc:
        # a model that does not take the options is told apart from one of another family
        # (a ResNet has no img_size) by building it bare
        with torch.device("meta"):  # no memory, no initialisation: only the class matters
            bare = timm.create_model(arch.name, pretrained=False)
        check(bare, arch.name)
        raise ModelError(f"model {arch.name} does not accept the options "
                         f"{sorted(arch.kwargs)}: {exc}; drop or correct them") from None
    check(model, arch.name)
    return model


def refuse_feature_maps(model: nn.Module, stages: Sequence[int]) -> None:
    """Make ``model.forward_intermediates`` (and so ``get_intermediate_layers``) raise a
    :class:`ModelError` that says why, instead of timm's raw reshape error.

    After a token stage the tokens no longer form the patch grid, so there are no feature maps
    to return. The method is replaced on this instance only; the class and every other model
    are untouched, and ``forward`` / ``forward_features`` are unaffected.
    """
    blocks = ", ".join(str(b) for b in stages)

    def forward_intermediates(*_args: Any, **_kwargs: Any) -> Any:
        raise ModelError(
            f"this pruned model selects tokens in block(s) {blocks}: after that the tokens no "
            "longer form the patch grid, so timm's feature-map helpers (forward_intermediates, "
            "get_intermediate_layers) have nothing to return. Use forward / forward_features, or "
            "prune with a plan without token stages for dense-prediction backbones"
        )

    model.forward_intermediates = forward_intermediates


def _check_vit(model: nn.Module, name: str = "") -> None:
    if not isinstance(model, VisionTransformer):
        from . import supported  # the registry, read when refusing

        raise ModelError(
            f"model {name or type(model).__name__} is a {type(model).__name__}, not a timm "
            f"VisionTransformer; vitprune prunes: {supported()}"
        )


def _published(name: str, kwargs: dict[str, Any],
               check: Callable[[nn.Module, str], None]) -> nn.Module:
    """``timm.create_model(name, pretrained=True)``: timm's published weights from the Hugging
    Face hub cache, downloaded if the hub can be reached.

    Without network the hub client retries for about a minute before it gives up; here an
    unreachable hub (or ``HF_HUB_OFFLINE=1``) makes it read the cache only, so a missing file
    fails within seconds.
    """
    from huggingface_hub import constants

    with torch.device("meta"):
        bare = timm.create_model(name, pretrained=False)
    check(bare, name)  # a ResNet is refused as such, before anything is fetched
    offline = constants.HF_HUB_OFFLINE or not hub_reachable(constants.ENDPOINT)
    saved, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, offline
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # the hub's errors are OSErrors
        where = "the hub cannot be reached and they are not" if offline else "they are not"
        raise ModelError(
            f"could not get timm's published weights for {name}: {where} in the Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}; {fsutil.first_line(exc)}). Offline, pass the "
            "weights as --checkpoint FILE (.safetensors or a state_dict), or fetch them once "
            "where there is network") from None
    finally:
        constants.HF_HUB_OFFLINE = saved


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` seconds (behind a proxy
    the client's own connection decides: assumed reachable)."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


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


def _at_block(stage: TokenStage, index: int) -> TokenStage:
    """``stage`` placed at block ``index`` (a module does not know its own position)."""
    return stage if stage.block == index else TokenStage(index, stage.keep_rate, stage.fuse)


def _unsupported(i: int, what: str) -> ModelError:
    return ModelError(
        f"block {i} has {what}, which vitprune cannot prune; supported are timm Blocks with "
        "plain Attention (qkv + proj) and Mlp (fc1 + fc2), as in ViT/DeiT"
    )
