"""Configurations of ViT and DeiT image classifiers pruned by vitprune.

Written into a pruned model's directory by vitprune; needs transformers (>= 5.23) and torch
only. The dense fields (``hidden_size``, ``num_attention_heads``, ``intermediate_size``, ...)
describe the model the pruned one came from; three fields say what each layer keeps:

- ``layer_heads``: attention heads kept in each layer (each ``head_dim`` wide, the dense
  ``hidden_size // num_attention_heads``);
- ``layer_intermediate_sizes``: MLP hidden units kept in each layer;
- ``token_stages``: ``{"layer": i, "keep_rate": r, "fuse": f}``: after layer ``i``'s attention,
  keep the ``ceil(r * n)`` patch tokens the class token attends to most (``n`` entering it),
  and with ``fuse`` one more token, the attention-weighted mean of the dropped ones.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import DeiTConfig, ViTConfig


@strict
class VitprunedViTConfig(ViTConfig):
    """A :class:`transformers.ViTConfig` with the per-layer widths and token stages of a
    pruned ViT (None: the dense widths, no token stage)."""

    model_type = "vitprune_vit"

    layer_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None
    token_stages: list[dict] | None = None


@strict
class VitprunedDeiTConfig(DeiTConfig):
    """A :class:`transformers.DeiTConfig` with the per-layer widths and token stages of a
    pruned DeiT (None: the dense widths, no token stage)."""

    model_type = "vitprune_deit"

    layer_heads: list[int] | None = None
    layer_intermediate_sizes: list[int] | None = None
    token_stages: list[dict] | None = None
