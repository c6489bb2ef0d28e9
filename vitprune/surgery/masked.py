"""Masked execution: run a plan on the dense model in place, without rebuilding it.

The search evaluates hundreds of plans on one model; :class:`Masker` makes each switch cheap.
Heads are masked by zeroing their channels at the input of the attention's output projection,
neurons by zeroing their channels at the input of the MLP's second layer (the family's adapter
says where those are): exactly what removing those rows/columns computes. A LayerNorm over the
pruned axis (EVA-02's SwiGLU norm) computes its statistics over the kept units only. Token stages swap in
the family's token-selecting blocks, which score tokens with the kept heads only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..adapters import adapter_for, head_channels, token_stage
from ..errors import ModelError
from ..plan import PrunePlan, TokenStage
from .prune import as_plan


class Masker:
    """Applies plans to a model in place by masking; :meth:`remove` restores it exactly.

    Example::

        masker = Masker(model)
        for plan in candidates:
            masker.set(plan)
            acc = evaluate(model)
        masker.remove()
    """

    def __init__(self, model: nn.Module) -> None:
        """Install the (inactive) mask hooks on ``model``.

        Raises:
            ModelError: unsupported blocks, or the model already selects tokens.
        """
        self.adapter = adapter_for(model)
        self.adapter.check(model)
        if any(token_stage(b) is not None for b in self.adapter.blocks(model)):
            raise ModelError("Masker needs a model without token stages; mask the dense model")
        self.model = model
        self.shape = self.adapter.shape(model)
        self._blocks = list(self.adapter.blocks(model))  # originals, restored by clear()
        self._parts = [self.adapter.parts(b) for b in self._blocks]
        n = len(self._blocks)
        self._head_masks: list[torch.Tensor | None] = [None] * n
        self._neuron_masks: list[torch.Tensor | None] = [None] * n
        self._head_weights: list[torch.Tensor | None] = [None] * n
        self._stages: dict[int, nn.Module] = {}
        self._handles = []
        for i, p in enumerate(self._parts):
            self._handles += [
                p.proj.register_forward_pre_hook(_mask_hook(self._head_masks, i)),
                p.mlp_out.register_forward_pre_hook(_mask_hook(self._neuron_masks, i)),
            ]
            # a norm over the pruned axis: statistics over the kept units, as when pruned
            for norm, masks in ((p.attn_norm, self._head_masks), (p.mlp_norm, self._neuron_masks)):
                if norm is not None:
                    self._handles.append(norm.register_forward_hook(_norm_hook(masks, i)))
        self._removed = False

    def set(self, plan: PrunePlan | dict[str, Any]) -> None:
        """Make the model compute what ``prune(model, plan)`` computes.

        Raises:
            PlanError: the plan does not fit the model.
            ModelError: :meth:`remove` was called already.
        """
        self._check_live()
        plan = as_plan(plan)
        plan.validate(self.shape)
        for i, (bp, bs) in enumerate(zip(plan.blocks, self.shape.blocks)):
            dev = self._parts[i].proj.weight.device
            if len(bp.heads) == bs.heads:  # None: the hook passes the input through untouched
                self._head_masks[i] = self._head_weights[i] = None
            else:
                channels = head_channels(bp.heads, bs.head_dim, dev)
                self._head_masks[i] = _mask(channels, bs.heads * bs.head_dim)
                self._head_weights[i] = _mask(torch.as_tensor(bp.heads, device=dev), bs.heads)
            self._neuron_masks[i] = (
                None if len(bp.neurons) == bs.mlp_hidden
                else _mask(torch.as_tensor(bp.neurons, device=dev), bs.mlp_hidden)
            )
        self._set_stages(plan.tokens)

    def clear(self) -> None:
        """Dense behaviour again (hooks stay installed, inactive)."""
        self._check_live()
        for masks in (self._head_masks, self._neuron_masks, self._head_weights):
            masks[:] = [None] * len(masks)
        self._set_stages(())

    def remove(self) -> None:
        """Remove every hook and token block: the model is the original, same module objects."""
        if self._removed:
            return
        self.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._removed = True

    def __enter__(self) -> Masker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _set_stages(self, stages: tuple[TokenStage, ...]) -> None:
        wanted = {t.block: t for t in stages}
        for i in [i for i in self._stages if i not in wanted]:
            self.adapter.set_block(self.model, i, self._blocks[i])
            del self._stages[i]
        for i, stage in wanted.items():
            tb = self._stages.get(i)
            if tb is None:  # only a new stage position costs a module swap
                tb = self.adapter.token_block(self.model, i, stage)
                self.adapter.set_block(self.model, i, tb)
                self._stages[i] = tb
            tb.token_stage = stage
            tb.head_weights = self._head_weights[i]

    def _check_live(self) -> None:
        if self._removed:
            raise ModelError("this Masker was removed; create a new Masker(model) to mask again")


def _mask(keep: torch.Tensor, size: int) -> torch.Tensor:
    """(size,) float 0/1 mask with ones at ``keep``."""
    m = torch.zeros(size, device=keep.device)
    m[keep.long()] = 1.0  # long: an empty id list (a dropped half) is a float tensor
    return m


def _mask_hook(masks: list[torch.Tensor | None], i: int) -> Callable[..., Any]:
    """A forward pre-hook multiplying the (B, N, channels) input by ``masks[i]`` when set."""

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        m = masks[i]
        if m is None:
            return None
        x = args[0]
        return (x * m.to(dtype=x.dtype, device=x.device),) + args[1:]

    return hook


def masked_layer_norm(x: torch.Tensor, keep: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """What ``norm`` sliced to the units where ``keep`` (a 0/1 mask over its axis) is 1 computes,
    at those units (the others are zeroed downstream): mean and variance over kept units only."""
    m = keep.to(dtype=x.dtype, device=x.device)
    k = m.sum().clamp_min(1)  # no unit kept (a dropped MLP): zeroed downstream anyway
    mean = (x * m).sum(-1, keepdim=True) / k
    var = ((x - mean).pow(2) * m).sum(-1, keepdim=True) / k
    y = (x - mean) * torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        y = y * norm.weight
    return y + norm.bias if norm.bias is not None else y


def _norm_hook(masks: list[torch.Tensor | None], i: int) -> Callable[..., Any]:
    """A forward hook giving a norm's output over the units ``masks[i]`` keeps, when set."""

    def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
        m = masks[i]
        return None if m is None else masked_layer_norm(args[0], m, module)

    return hook
