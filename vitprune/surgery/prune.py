"""Physical pruning: a new, smaller timm ViT that computes what the plan's masks compute.

Heads: the kept heads' rows of the q, k and v thirds of ``attn.qkv`` (and bias), the matching
input columns of ``attn.proj``. Neurons: rows of ``mlp.fc1`` (and bias), columns of ``mlp.fc2``.
Every pruned block stays an ordinary timm ``Attention``/``Mlp`` with fewer heads/units; token
stages become :class:`~vitprune.surgery.tokens.TokenSelectBlock`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..adapters import check_prunable, vit_shape
from ..errors import ModelError, PlanError
from ..plan import PrunePlan
from .tokens import TokenSelectBlock


def as_plan(plan: PrunePlan | dict[str, Any]) -> PrunePlan:
    """A :class:`PrunePlan` from a plan or its :meth:`~PrunePlan.to_dict` record."""
    if isinstance(plan, PrunePlan):
        return plan
    if isinstance(plan, dict):
        return PrunePlan.from_dict(plan)
    raise PlanError(f"expected a PrunePlan or its dict record, got {type(plan).__name__}")


def prune(model: VisionTransformer, plan: PrunePlan | dict[str, Any]) -> VisionTransformer:
    """A pruned copy of ``model``; ``model`` itself is left untouched.

    Args:
        model: a timm VisionTransformer (dense, or pruned without token stages when ``plan``
            has token stages).
        plan: what to keep; head and neuron ids refer to ``model``'s current blocks.

    Returns:
        A new model with smaller ``qkv``/``proj``/``fc1``/``fc2`` layers and token-selecting
        blocks at the plan's stages, in the same train/eval mode as ``model``.

    Raises:
        ModelError: the model has a block vitprune cannot prune, or hooks (remove a Masker first).
        PlanError: the plan does not fit the model.
    """
    check_prunable(model)
    plan = as_plan(plan)
    _refuse_hooks(model)
    shape = vit_shape(model)
    plan.validate(shape)
    new = copy.deepcopy(model)
    for blk, bp, bs in zip(new.blocks, plan.blocks, shape.blocks):
        if len(bp.heads) < bs.heads:
            prune_heads(blk.attn, bp.heads)
        if len(bp.neurons) < bs.mlp_hidden:
            prune_neurons(blk.mlp, bp.neurons)
    for stage in plan.tokens:
        old = new.blocks[stage.block]
        tb = TokenSelectBlock(old, stage, new.num_prefix_tokens, new.cls_token is not None)
        new.blocks[stage.block] = tb.train(old.training)
    if plan.tokens:
        refuse_feature_maps(new, [s.block for s in plan.tokens])
    return new


def refuse_feature_maps(model: VisionTransformer, stages: Sequence[int]) -> None:
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


def restructure(model: VisionTransformer, plan: PrunePlan | dict[str, Any]) -> VisionTransformer:
    """The structure of ``prune(model, plan)``, to load a pruned model's saved weights into."""
    return prune(model, plan)


def prune_heads(attn: nn.Module, heads: Sequence[int]) -> None:
    """Keep only ``heads`` of a timm ``Attention``, in place.

    timm's forward reshapes ``qkv`` with ``num_heads``/``head_dim`` and merges heads back with
    ``attn_dim``, so those two attributes change with the layers; ``head_dim`` and ``scale`` do not.
    """
    d, a = attn.head_dim, attn.attn_dim
    ch = head_channels(heads, d, attn.qkv.weight.device)  # kept channels within q (or k, or v)
    rows = torch.cat([ch + part * a for part in range(3)])
    attn.qkv = sliced_linear(attn.qkv, rows=rows)
    attn.proj = sliced_linear(attn.proj, cols=ch)
    attn.num_heads = len(heads)
    attn.attn_dim = len(heads) * d


def prune_neurons(mlp: nn.Module, neurons: Sequence[int]) -> None:
    """Keep only hidden units ``neurons`` of a timm ``Mlp``, in place."""
    idx = torch.as_tensor(neurons, dtype=torch.long, device=mlp.fc1.weight.device)
    mlp.fc1 = sliced_linear(mlp.fc1, rows=idx)
    mlp.fc2 = sliced_linear(mlp.fc2, cols=idx)


def head_channels(heads: Sequence[int], head_dim: int,
                  device: torch.device | None = None) -> torch.Tensor:
    """(len(heads) * head_dim,) channel ids of ``heads`` in a (heads * head_dim) feature axis."""
    h = torch.as_tensor(heads, dtype=torch.long, device=device)
    return (h[:, None] * head_dim + torch.arange(head_dim, device=device)).flatten()


def sliced_linear(lin: nn.Linear, rows: torch.Tensor | None = None,
                  cols: torch.Tensor | None = None) -> nn.Linear:
    """A new ``nn.Linear`` holding ``lin``'s weight rows (outputs) and columns (inputs) given."""
    w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
    if rows is not None:
        w = w.index_select(0, rows)
        b = None if b is None else b.index_select(0, rows)
    if cols is not None:
        w = w.index_select(1, cols)
    # Built on the meta device: the weights are replaced at once, so skip the random init.
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
    new.weight = nn.Parameter(w.clone(), requires_grad=lin.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b.clone(), requires_grad=lin.bias.requires_grad)
    return new.train(lin.training)


def _refuse_hooks(model: nn.Module) -> None:
    # A deep copy would carry the hooks along, still bound to the original's state (a Masker's
    # masks): the pruned model would be masked by someone else's plan.
    for name, m in model.named_modules():
        if m._forward_pre_hooks or m._forward_hooks:
            raise ModelError(
                f"module {name or 'model'} has forward hooks (a Masker or a feature collector?); "
                "remove them (Masker.remove()) before pruning"
            )
