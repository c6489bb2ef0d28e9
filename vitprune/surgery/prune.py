"""Physical pruning: a new, smaller model of the same family that computes what the plan's
masks compute.

Heads: the kept heads' rows of the query, key and value layers (and bias), the matching input
columns of the attention's output projection. Neurons: rows of the MLP's first layer (and bias),
columns of its second. The family's adapter says where those layers are
(:meth:`~vitprune.adapters.base.Adapter.parts`); every pruned block stays an ordinary block of
its family with fewer heads/units, and token stages become the family's token-selecting block.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..adapters import adapter_for
from ..errors import ModelError, PlanError
from ..plan import PrunePlan


def as_plan(plan: PrunePlan | dict[str, Any]) -> PrunePlan:
    """A :class:`PrunePlan` from a plan or its :meth:`~PrunePlan.to_dict` record."""
    if isinstance(plan, PrunePlan):
        return plan
    if isinstance(plan, dict):
        return PrunePlan.from_dict(plan)
    raise PlanError(f"expected a PrunePlan or its dict record, got {type(plan).__name__}")


def prune(model: nn.Module, plan: PrunePlan | dict[str, Any]) -> nn.Module:
    """A pruned copy of ``model``; ``model`` itself is left untouched.

    Args:
        model: a model of a supported family (dense, or pruned without token stages when
            ``plan`` has token stages).
        plan: what to keep; head and neuron ids refer to ``model``'s current blocks.

    Returns:
        A new model with smaller attention and MLP layers and token-selecting blocks at the
        plan's stages, in the same train/eval mode as ``model``.

    Raises:
        ModelError: the model has a block vitprune cannot prune, or hooks (remove a Masker first).
        PlanError: the plan does not fit the model.
    """
    adapter = adapter_for(model)
    adapter.check(model)
    plan = as_plan(plan)
    _refuse_hooks(model)
    shape = adapter.shape(model)
    plan.validate(shape)
    new = copy.deepcopy(model)
    for blk, bp, bs in zip(adapter.blocks(new), plan.blocks, shape.blocks):
        adapter.prune_block(blk, bp.heads if len(bp.heads) < bs.heads else None,
                            bp.neurons if len(bp.neurons) < bs.mlp_hidden else None, bs.head_dim)
    for stage in plan.tokens:
        adapter.set_block(new, stage.block, adapter.token_block(new, stage.block, stage))
    if plan.tokens:
        adapter.after_token_stages(new, [s.block for s in plan.tokens])
    return new


def restructure(model: nn.Module, plan: PrunePlan | dict[str, Any]) -> nn.Module:
    """The structure of ``prune(model, plan)``, to load a pruned model's saved weights into."""
    return prune(model, plan)


def _refuse_hooks(model: nn.Module) -> None:
    # A deep copy would carry the hooks along, still bound to the original's state (a Masker's
    # masks): the pruned model would be masked by someone else's plan.
    for name, m in model.named_modules():
        if m._forward_pre_hooks or m._forward_hooks:
            raise ModelError(
                f"module {name or 'model'} has forward hooks (a Masker or a feature collector?); "
                "remove them (Masker.remove()) before pruning"
            )


def count_params(model: nn.Module, plan: PrunePlan | dict[str, Any] | None = None) -> int:
    """Parameters of ``model`` (or of ``model`` pruned by ``plan``), counted from its tensors.

    Exact for every family by construction: layer scale, register tokens, attention pools,
    T2T stems and Hugging Face heads are whatever tensors the model holds (a tensor shared
    between modules is counted once). A plan is applied to a copy of the model on the meta
    device, so no weight is copied or sliced.
    """
    if plan is not None:
        model = prune(_meta_copy(model), plan)
    return sum(p.numel() for p in model.parameters())


def _meta_copy(model: nn.Module) -> nn.Module:
    """``model`` with every parameter and buffer on the meta device (no memory), by a deep copy
    whose memo maps each tensor to an empty meta one."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = (nn.Parameter(empty, requires_grad=t.requires_grad)
                       if isinstance(t, nn.Parameter) else empty)
    return copy.deepcopy(model, memo)
