"""ViT and DeiT image classifiers pruned by vitprune, for plain transformers.

Written into a pruned model's directory by vitprune; needs transformers (>= 5.23) and torch
only. Each class is transformers' own model with the layers' projections built at the widths
its config lists, and token-selecting layers at its token stages (EViT-style: the patch tokens
the class token attends to most are kept, the rest fused into one token). The weights are the
directory's ``model.safetensors``, under transformers' own key names::

    from transformers import AutoModelForImageClassification
    model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=True)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import (
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTForImageClassification,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.vit.modeling_vit import eager_attention_forward

from .configuration_vitprune import VitprunedDeiTConfig, VitprunedViTConfig

# the parts of a ViTLayer / DeiTLayer, held under the same names (their weights' keys stay)
LAYER_PARTS = ("attention", "layernorm_before", "layernorm_after", "mlp", "dropout")


def kept_tokens(n: int, keep_rate: float) -> int:
    """Patch tokens a stage keeps out of ``n``: ``ceil(keep_rate * n)``, at least one."""
    return max(1, math.ceil(keep_rate * n - 1e-9))


class TokenSelectingLayer(nn.Module):
    """A ViT/DeiT layer that keeps the most attended patch tokens between its attention and its
    MLP: (B, N, C) -> (B, prefix + kept (+ 1 fused), C)."""

    def __init__(self, layer: nn.Module, keep_rate: float, fuse: bool, num_prefix: int) -> None:
        super().__init__()
        for name in LAYER_PARTS:
            setattr(self, name, getattr(layer, name))
        self.keep_rate, self.fuse, self.num_prefix = float(keep_rate), bool(fuse), num_prefix

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("a token-selecting layer cannot take an attention mask: run the model "
                             "without attention_mask")
        a, x = self.attention, hidden_states
        h = self.layernorm_before(x)
        B, N, _ = h.shape
        q, k, v = (p(h).view(B, N, -1, a.head_dim).transpose(1, 2)
                   for p in (a.q_proj, a.k_proj, a.v_proj))  # (B, heads, N, head_dim)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(a.config._attn_implementation,
                                                       eager_attention_forward)
        y, _ = attend(a, q, k, v, None, dropout=a.attention_dropout if a.training else 0.0,
                      scaling=a.scaling)
        x = x + self.dropout(a.o_proj(y.reshape(B, N, -1)))
        x = self.select(x, q, k, a.scaling)
        return x + self.dropout(self.mlp(self.layernorm_after(x)))

    def select(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
        """The prefix tokens, the kept patch tokens in their order, then the fused token."""
        p = self.num_prefix
        n = x.shape[1] - p
        keep = kept_tokens(n, self.keep_rate)
        if keep >= n:
            return x
        # attention each token receives from the class token, averaged over heads: (B, N)
        scores = ((q[:, :, :1] * scale) @ k.transpose(-2, -1)).softmax(dim=-1).squeeze(2).mean(dim=1)
        s, patches = scores[:, p:], x[:, p:]
        idx = s.topk(keep, dim=1, sorted=False).indices.sort(dim=1).values  # (B, keep)
        parts = [x[:, :p], patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))]
        if self.fuse:
            w = s.scatter(1, idx, 0.0)  # scores of the dropped tokens
            w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
            parts.append(w.unsqueeze(1).to(patches.dtype) @ patches)
        return torch.cat(parts, dim=1)


def _prune(encoder: nn.Module, config, num_prefix: int) -> None:
    """Build ``encoder``'s layers at the widths ``config`` lists, token stages in place."""
    layers = encoder.layers
    n = len(layers)
    heads = config.layer_heads or [config.num_attention_heads] * n
    inter = config.layer_intermediate_sizes or [config.intermediate_size] * n
    if len(heads) != n or len(inter) != n:
        raise ValueError(f"the config lists widths for {len(heads)} / {len(inter)} layers, but the "
                         f"model has {n}: the directory's config.json is damaged")
    c = config.hidden_size
    for layer, h, m in zip(layers, heads, inter):
        a = layer.attention
        width = h * a.head_dim
        a.q_proj, a.k_proj, a.v_proj = (nn.Linear(c, width, bias=config.qkv_bias) for _ in range(3))
        a.o_proj = nn.Linear(width, c)
        a.num_attention_heads = h
        layer.mlp.fc1, layer.mlp.fc2 = nn.Linear(c, m), nn.Linear(m, c)
    for stage in config.token_stages or ():
        i = stage["layer"]
        layers[i] = TokenSelectingLayer(layers[i], stage["keep_rate"], stage.get("fuse", True),
                                        num_prefix)


class VitprunedViTForImageClassification(ViTForImageClassification):
    """transformers' ViTForImageClassification at a pruned model's widths."""

    config_class = VitprunedViTConfig

    def __init__(self, config: VitprunedViTConfig) -> None:
        super().__init__(config)
        _prune(self.vit, config, num_prefix=1)


class VitprunedDeiTForImageClassification(DeiTForImageClassification):
    """transformers' DeiTForImageClassification at a pruned model's widths."""

    config_class = VitprunedDeiTConfig

    def __init__(self, config: VitprunedDeiTConfig) -> None:
        super().__init__(config)
        _prune(self.deit, config, num_prefix=2)


class VitprunedDeiTForImageClassificationWithTeacher(DeiTForImageClassificationWithTeacher):
    """transformers' DeiTForImageClassificationWithTeacher at a pruned model's widths."""

    config_class = VitprunedDeiTConfig

    def __init__(self, config: VitprunedDeiTConfig) -> None:
        super().__init__(config)
        _prune(self.deit, config, num_prefix=2)
