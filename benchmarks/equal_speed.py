"""Comparisons at equal measured speed, the way a user chooses: every method's model matched to
the same measured CPU speed-up over the dense model.

vitprune reaches a speed through its latency budget; a peer (Torch-Pruning's ratio, ToMe's r,
uniform ratios) through its own knob. :func:`match_speedup` steps the knob by bisection to the
least-pruned model that is at least as fast as the target, each candidate timed in turn with the
dense model in one process (:func:`speedup`), so drifts in the machine's load hit both alike.

    from equal_speed import match_speedup, speedup
    target = speedup(dense, vitprune_model, batch=64)
    knob, got, model = match_speedup(lambda r: tp_model(r), dense, target, batch=64)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from vitprune.adapters import input_shape
from vitprune.devices import device_of
from vitprune.speed import compare

Measure = Callable[[torch.nn.Module, torch.nn.Module], float]


def speedup(dense: torch.nn.Module, model: torch.nn.Module, *, batch: int, rounds: int = 7,
            reps: int = 3, device: str = "cpu") -> float:
    """Measured speed-up of ``model`` over ``dense`` (dense ms / model ms, medians over rounds
    of both timed in turn) at ``batch`` on ``device`` (float32: on CUDA with TF32 matmuls,
    as the latency table the search reads is measured)."""
    return group_speedup(dense, {"model": model}, batch=batch, rounds=rounds, reps=reps,
                         device=device)["model"]


def group_speedup(dense: torch.nn.Module, models: dict[Any, torch.nn.Module], *, batch: int,
                  rounds: int = 7, reps: int = 3, device: str = "cpu") -> dict[Any, float]:
    """:func:`speedup` of several models over ``dense`` from one pass (every model, dense
    included, timed in turn each round), so that the models' speed-ups compare with each other:
    a drift in load between passes would otherwise tell them apart. ``models``' keys are any
    but ``"dense"``."""
    if "dense" in models:
        raise ValueError('group_speedup: "dense" names the reference; key the models otherwise')
    got = compare({"dense": dense, **models}, input_shape(dense), batch, rounds=rounds,
                  reps=reps, device=device, amp=False)
    return {k: got["dense"]["latency_ms"] / got[k]["latency_ms"] for k in models}


def counted_speedup(dense: torch.nn.Module, model: torch.nn.Module) -> float:
    """FLOPs torch counts for ``dense`` over those for ``model`` on two images: a deterministic
    stand-in for :func:`speedup` where a timing would only add noise (a smoke test's tiny
    models on a loaded machine). Merged or dropped tokens count, as they shrink the matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, *input_shape(dense), device=device_of(dense))
    counts = []
    for m in (dense, model):
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            m(x)
        counts.append(fc.get_total_flops())
    return counts[0] / counts[1]


def match_speedup(build: Callable[[float], torch.nn.Module], dense: torch.nn.Module,
                  target: float, *, batch: int, lo: float = 0.0, hi: float = 0.9,
                  iters: int = 7, measure: Measure | None = None
                  ) -> tuple[float, float, torch.nn.Module]:
    """The smallest knob value in [lo, hi] whose model reaches ``target`` speed-up.

    Args:
        build: knob value -> model (more pruning as the value grows).
        target: speed-up over ``dense`` to reach (e.g. vitprune's model's measured one).
        measure: (dense, model) -> speed-up; default :func:`speedup` at ``batch``.

    Returns:
        (knob value, its measured speed-up, its model).

    Raises:
        ValueError: even ``hi`` does not reach the target.
    """
    measure = measure or (lambda d, m: speedup(d, m, batch=batch))
    seen: dict[float, tuple[float, torch.nn.Module]] = {}

    def at(x: float) -> tuple[float, torch.nn.Module]:
        if x not in seen:
            model = build(x)
            seen[x] = measure(dense, model), model
        return seen[x]

    if at(hi)[0] < target:
        raise ValueError(f"the knob's largest value {hi} reaches a {at(hi)[0]:.2f}x speed-up, "
                         f"below the target {target:.2f}x")
    if at(lo)[0] >= target:
        return lo, *at(lo)
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at(mid)[0] < target else (lo, mid)
    return hi, *at(hi)
