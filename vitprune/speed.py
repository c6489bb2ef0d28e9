"""Measured speed: latency and throughput of a model's forward pass."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from .devices import autocast

# a measurement's defaults (bench, compress's speed rows, the latency table's warm-ups)
WARMUP = 3  # untimed calls first (a compiled runtime compiles in the first)
REPEATS = 10  # timed calls; the median is reported

# What is timed: a module, or any callable taking the input batch (see vitprune.runtime).
Runnable = torch.nn.Module | Callable[[torch.Tensor], Any]


def _ready(model: Any, device: str) -> Any:
    """A module in eval mode on ``device``; other callables (compiled, onnxruntime) as they are."""
    return model.eval().to(device) if isinstance(model, torch.nn.Module) else model


@torch.inference_mode()
def measure(model: Runnable, input_shape: tuple[int, int, int], batch: int, *,
            warmup: int = WARMUP, repeats: int = REPEATS, threads: int | None = None,
            device: str = "cpu") -> dict[str, float]:
    """Median latency of ``model`` on a random batch, after warm-up.

    Args:
        model: a module (put in eval mode on ``device``) or any callable taking the input batch.
        input_shape: (C, H, W) of one image.
        batch: images per forward pass.
        threads: CPU threads for the measurement (restored afterwards); fixed so runs compare.
    Returns:
        ``latency_ms`` (median per batch), ``latency_ms_min``, ``throughput`` (images/s at the
        median), ``batch``, ``threads``, ``repeats``.
    """
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        model = _ready(model, device)
        x = torch.randn(batch, *input_shape, device=device)
        sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        for _ in range(warmup):
            model(x)
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    med = statistics.median(times)
    return {"latency_ms": 1e3 * med, "latency_ms_min": 1e3 * min(times),
            "throughput": batch / med, "batch": batch, "threads": threads or old,
            "repeats": repeats}


# How comparisons are timed: rounds of all models in turn, and forward passes per model per round
# (more at batch 1, where one pass is short and timer noise weighs more).
# QUICK: what compress measures for its report; THOROUGH: the benchmarks behind docs/.
QUICK = {"rounds": 15, "reps_batch1": 10, "reps": 2}
THOROUGH = {"rounds_batch1": 15, "rounds": 9, "reps_batch1": 20, "reps": 3}


def timing(batch: int, plan: dict[str, int] = QUICK) -> dict[str, int]:
    """``rounds`` and ``reps`` for :func:`compare` at ``batch`` under a timing ``plan``."""
    one = batch == 1
    return {"rounds": plan.get("rounds_batch1", plan["rounds"]) if one else plan["rounds"],
            "reps": plan["reps_batch1"] if one else plan["reps"]}


@torch.inference_mode()
def compare(models: dict[str, Runnable], input_shape: tuple[int, int, int], batch: int, *,
            rounds: int = 15, reps: int = 5, warmup: int = WARMUP,
            device: str = "cpu", amp: bool | None = None,
            dtype: torch.dtype = torch.float32) -> dict[str, dict[str, float]]:
    """Latency of several models timed in turn, round after round, so that drifts in machine
    load hit them alike and their ratios stay fair (a speed-up is one such ratio).

    Args:
        models: name -> model (put in eval mode on ``device``) or any callable taking the
            input batch (a compiled model, an onnxruntime session: see ``vitprune.runtime``).
        input_shape: (C, H, W) of one image.
        batch: images per forward pass.
        rounds: timing rounds; each times every model ``reps`` forwards in a row.
        amp: bf16 autocast (default: on CUDA only, see :func:`vitprune.devices.autocast`).
        dtype: of the input batch (bfloat16 for models whose weights were cast to it).
    Returns:
        name -> ``latency_ms`` (median over rounds of the mean per forward), ``throughput``
        (images/s), ``batch``, ``threads``.
    """
    x = torch.randn(batch, *input_shape, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    models = {k: _ready(m, device) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    with autocast(device, amp):
        for m in models.values():
            for _ in range(warmup):
                m(x)
        for _ in range(rounds):
            for k, m in models.items():
                sync()
                t0 = time.perf_counter()
                for _ in range(reps):
                    m(x)
                sync()
                times[k].append((time.perf_counter() - t0) / reps)
    return {k: {"latency_ms": 1e3 * statistics.median(v), "throughput": batch / statistics.median(v),
                "batch": batch, "threads": torch.get_num_threads()} for k, v in times.items()}


class Timer:
    """Fastest (``"min"``) or median ms of a call over ``repeats`` warm calls back to back, after
    ``warmup`` calls, synchronised on CUDA. The fastest call resists interference from other
    work on a shared machine; latency tables (:mod:`vitprune.profile`) and what is compared with
    them use it."""

    def __init__(self, device: str, warmup: int, repeats: int, statistic: str = "median") -> None:
        self.warmup, self.repeats, self.statistic = warmup, repeats, statistic
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def _times(self, fn: Callable[..., Any], args: tuple) -> list[float]:
        for _ in range(self.warmup):
            fn(*args)
        self.sync()
        times = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            fn(*args)
            self.sync()
            times.append(time.perf_counter() - t0)
        return times

    def _pick(self, times: list[float]) -> float:
        return 1e3 * (min(times) if self.statistic == "min" else statistics.median(times))

    @torch.inference_mode()
    def __call__(self, fn: Callable[..., Any], *args: torch.Tensor) -> float:
        return self._pick(self._times(fn, args))

    @torch.inference_mode()
    def interleaved(self, fns: list[Callable[..., Any]], *args: torch.Tensor,
                    rounds: int = 3) -> list[float]:
        """ms of each of ``fns``: ``rounds`` rounds of all in turn, each a warm-up and
        ``repeats`` calls back to back (the model's weights warm in cache, as when it serves
        alone); the fastest (or median) call over the rounds is kept, so drift of the machine's
        speed hits every model alike."""
        times: list[list[float]] = [[] for _ in fns]
        for _ in range(rounds):
            for k, fn in enumerate(fns):
                times[k] += self._times(fn, args)
        return [self._pick(t) for t in times]
