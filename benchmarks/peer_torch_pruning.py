"""The pruning peer of the results benchmark: Torch-Pruning (PyPI ``torch-pruning``).

Torch-Pruning prunes a timm ViT with its own recipe for ViTs (its ``examples/transformers/
prune_timm_vit.py``): group Taylor importance from a few batches of labelled data, the same
(uniform) ratio in every block, whole heads removed (``prune_num_heads``), and the MLP's hidden
units pruned; here only the blocks' internal dimensions are pruned (its ``--bottleneck`` mode, with
the attention output projections also kept whole), so the result removes heads and neurons as
vitprune's plans do and the embedding width is untouched.

To reach a MACs budget the ratio is found by bisection; heads step in whole heads, so when one
ratio for both steps over the budget band the head ratio is held just before the step and the
neuron ratio alone is bisected into the band (the rule vitprune's uniform baseline follows).

Configured as its authors recommend (:func:`best_configuration`): head and neuron ratios chosen
separately (a small grid of head ratios, the neuron ratio bisected to the budget), local and
global pruning, and isomorphic pruning (the authors' own ViT result); the configuration best on
the calibration split represents the peer.

What Torch-Pruning kept is read back from the weights (each kept row is an exact copy of a dense
row) into a :class:`vitprune.plan.PrunePlan`, so the peer's model is built, costed, fine-tuned and
timed by the same code as every other method. The test checks that the model built from the plan
gives exactly the logits of Torch-Pruning's own pruned model.

Torch-Pruning is a benchmark dependency (pinned in requirements/lock.txt), not a vitprune one.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from vitprune.adapters import vit_shape
from vitprune.cost import macs
from vitprune.errors import BudgetError
from vitprune.plan import BlockPlan, PrunePlan, planned_shape


def _attention_forward(self, x, attn_mask=None, is_causal=False):
    """timm's attention with the head count read at call time (Torch-Pruning changes it)."""
    B, N, _ = x.shape
    qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = self.q_norm(q), self.k_norm(k)
    x = F.scaled_dot_product_attention(q, k, v)
    x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
    return self.proj_drop(self.proj(self.norm(x)))


MODES = ("local", "global", "isomorphic")


def tp_prune(dense: torch.nn.Module, ratio: float, head_ratio: float,
             batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
             mode: str = "local") -> torch.nn.Module:
    """Torch-Pruning's pruned copy of ``dense``: ``ratio`` of the MLP hidden units and
    ``head_ratio`` of the heads removed, chosen by group Taylor importance on ``batches``.

    ``mode``: ``local`` (the same ratio in every block), ``global`` (one ranking over all
    blocks: blocks lose different shares) or ``isomorphic`` (its authors' ViT recipe: global
    ranking within groups of the same structure, normalised per group).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    import torch_pruning as tp
    from timm.models.vision_transformer import Attention

    model = copy.deepcopy(dense).eval()
    fewest = min(blk.attn.num_heads for blk in model.blocks)
    head_ratio = min(head_ratio, (fewest - 1) / fewest)  # at least one head stays
    num_heads, ignored = {}, [model.head]
    for m in model.modules():
        if isinstance(m, Attention):
            m.forward = _attention_forward.__get__(m, Attention)
            num_heads[m.qkv] = m.num_heads
            ignored.append(m.proj)  # the residual width stays whole (bottleneck pruning)
    for blk in model.blocks:
        ignored.append(blk.mlp.fc2)
    x0 = next(iter(batches))[0][:1]
    with warnings.catch_warnings():  # it notes cls_token / pos_embed, which it rightly leaves
        warnings.simplefilter("ignore", UserWarning)
        pruner = tp.pruner.MetaPruner(
            model, x0, importance=tp.importance.GroupTaylorImportance(),
            global_pruning=mode != "local", isomorphic=mode == "isomorphic",
            pruning_ratio=ratio, ignored_layers=ignored, num_heads=num_heads,
            prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=head_ratio,
            round_to=1)
    model.zero_grad()
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
    for group in pruner.step(interactive=True):
        group.prune()
    for m in model.modules():
        if isinstance(m, Attention):
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
    model.zero_grad(set_to_none=True)
    return model


def _kept_rows(dense_w: torch.Tensor, pruned_w: torch.Tensor) -> list[int]:
    """Indices of the dense rows that the pruned rows copy, in order."""
    match = (pruned_w[:, None, :] == dense_w[None, :, :]).all(-1)
    if not bool((match.sum(1) == 1).all()):
        raise ValueError("the pruned weights are not a selection of the dense rows")
    return match.float().argmax(1).tolist()


def plan_of(dense: torch.nn.Module, pruned: torch.nn.Module) -> PrunePlan:
    """The heads and neurons ``pruned`` (a Torch-Pruning result) kept of ``dense``."""
    blocks = []
    for d, p in zip(dense.blocks, pruned.blocks):
        neurons = _kept_rows(d.mlp.fc1.weight, p.mlp.fc1.weight)
        h, hd = d.attn.num_heads, d.attn.head_dim
        q_dense = d.attn.qkv.weight[: h * hd].reshape(h, hd * d.attn.qkv.in_features)
        hp = p.attn.num_heads
        q_pruned = p.attn.qkv.weight[: hp * hd].reshape(hp, hd * p.attn.qkv.in_features)
        blocks.append(BlockPlan(tuple(sorted(_kept_rows(q_dense, q_pruned))), tuple(sorted(neurons))))
    return PrunePlan(tuple(blocks))


def tp_plan(dense: torch.nn.Module, budget: float, batches: list, *, band: float = 0.02,
            iters: int = 14, mode: str = "local") -> tuple[PrunePlan, dict]:
    """Torch-Pruning's plan at ``budget`` (fraction of the dense MACs kept), in [budget - band,
    budget], one ratio for heads and neurons (the head ratio held before a step that jumps the
    band); also returns how it was found (ratios, MACs)."""
    shape = vit_shape(dense)
    full = macs(shape).total
    cache: dict[tuple[float, float], tuple[PrunePlan, float]] = {}

    def at(r: float, rh: float) -> tuple[PrunePlan, float]:
        key = (round(r, 6), round(rh, 6))
        if key not in cache:
            plan = plan_of(dense, tp_prune(dense, r, rh, batches, mode=mode))
            cache[key] = plan, macs(planned_shape(shape, plan)).total / full
        return cache[key]

    def bisect(cost) -> float:  # the smallest ratio whose cost is within the budget
        lo, hi = 0.0, 0.95
        if cost(hi) > budget:
            raise BudgetError(f"Torch-Pruning cannot reach {budget:.0%} of the MACs with heads "
                              f"and neurons alone (lowest: {cost(hi):.1%})")
        for _ in range(iters):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if cost(mid) <= budget else (mid, hi)
        return hi

    r = bisect(lambda r: at(r, r)[1])
    rh, how = r, "one ratio"
    if at(r, r)[1] < budget - band:  # the head step jumps over the band
        rh = max((x for x in (0.0, *[k[1] for k in cache]) if at(x, x)[1] > budget), default=0.0)
        r = bisect(lambda r: at(r, rh)[1])
        how = "heads held before the step, neurons bisected"
    plan, kept = at(r, rh)
    if not budget - band <= kept <= budget:
        raise BudgetError(f"Torch-Pruning's ratios reach {kept:.1%}, outside the band "
                          f"[{budget - band:.0%}, {budget:.0%}]")
    return plan, {"neuron_ratio": r, "head_ratio": rh, "rule": how, "macs_kept": kept,
                  "mode": mode}


def neuron_plan(dense: torch.nn.Module, budget: float, head_ratio: float, batches: list, *,
                mode: str, band: float = 0.02, iters: int = 14) -> tuple[PrunePlan, dict]:
    """Torch-Pruning's plan at ``budget`` with the head ratio fixed at ``head_ratio`` and the
    neuron ratio bisected into [budget - band, budget].

    Raises:
        BudgetError: no neuron ratio lands in the band with these heads.
    """
    shape = vit_shape(dense)
    full = macs(shape).total

    def at(r: float) -> tuple[PrunePlan, float]:
        plan = plan_of(dense, tp_prune(dense, r, head_ratio, batches, mode=mode))
        return plan, macs(planned_shape(shape, plan)).total / full

    lo, hi = 0.0, 0.95
    if at(hi)[1] > budget:
        raise BudgetError(f"{mode} pruning with head ratio {head_ratio} cannot reach {budget:.0%}")
    if at(lo)[1] <= budget - band:
        raise BudgetError(f"head ratio {head_ratio} alone already goes below the band")
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if at(mid)[1] <= budget else (mid, hi)
    plan, kept = at(hi)
    if not budget - band <= kept <= budget:
        raise BudgetError(f"{mode}, head ratio {head_ratio}: {kept:.1%} is outside the band")
    return plan, {"mode": mode, "head_ratio": head_ratio, "neuron_ratio": hi, "macs_kept": kept}


def best_configuration(dense: torch.nn.Module, budget: float, batches: list,
                       calib_score: Callable[[PrunePlan], float], *,
                       head_ratios: Sequence[float] = (0.0, 0.25, 0.5),
                       modes: Sequence[str] = MODES) -> tuple[PrunePlan, dict, list[dict]]:
    """Torch-Pruning configured as its authors recommend, chosen on calibration data: every
    mode (local, global, isomorphic) with every head ratio of a small grid, the neuron ratio
    bisected to the budget; the configuration whose plan scores best on ``calib_score`` (a
    calibration split's top-1 before fine-tuning, never the test split) represents it.

    Returns:
        (its plan, its record, every configuration's record; infeasible ones say why).
    """
    tried, best = [], None
    for mode in modes:
        for rh in head_ratios:
            try:
                plan, rec = neuron_plan(dense, budget, rh, batches, mode=mode)
            except BudgetError as exc:
                tried.append({"mode": mode, "head_ratio": rh, "infeasible": str(exc)})
                continue
            rec["calib_top1"] = float(calib_score(plan))
            tried.append(rec)
            if best is None or rec["calib_top1"] > best[1]["calib_top1"]:
                best = (plan, rec)
    if best is None:
        raise BudgetError(f"no Torch-Pruning configuration reaches {budget:.0%} of the MACs")
    return best[0], best[1], tried
