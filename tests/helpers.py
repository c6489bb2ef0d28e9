"""Helpers shared by test modules: random plans, and ViTs whose attention is not flat."""

from __future__ import annotations

import random

import torch

from vitprune.cost import VitShape
from vitprune.plan import BlockPlan, PrunePlan, TokenStage


def random_plan(shape: VitShape, seed: int, stages: tuple[int, ...] = (),
                keep_rate: float = 0.6) -> PrunePlan:
    """Random kept heads and neurons in every block (always fewer than all), plus token stages.

    The last stage does not fuse, so both kinds of stage are exercised.
    """
    rng = random.Random(seed)
    blocks = []
    for b in shape.blocks:
        heads = rng.sample(range(b.heads), rng.randint(1, max(1, b.heads - 1)))
        neurons = rng.sample(range(b.mlp_hidden), rng.randint(1, b.mlp_hidden - 1))
        blocks.append(BlockPlan(heads, neurons))
    tokens = tuple(TokenStage(s, keep_rate, fuse=s != stages[-1]) for s in stages)
    return PrunePlan(tuple(blocks), tokens)


def sharpen(model: torch.nn.Module, factor: float = 4.0) -> torch.nn.Module:
    """Scale every block's query and key weights by ``factor`` (in place).

    Randomly initialised ViTs attend almost uniformly, so class-token scores near the keep
    boundary differ by ~1e-5 relative; float noise between masked and pruned execution (~1e-7)
    could then flip a selection. Trained ViTs attend sharply; this makes the random ones do too,
    so the comparison tests the arithmetic, not luck.
    """
    from vitprune.adapters import adapter_for

    adapter = adapter_for(model)
    with torch.no_grad():
        for b in adapter.blocks(model):
            qkv = adapter.parts(b).qkv
            if len(qkv) == 1:  # fused (q | k | v) rows
                qkv[0].weight[: 2 * qkv[0].out_features // 3] *= factor
            else:
                qkv[0].weight *= factor
                qkv[1].weight *= factor
    return model
