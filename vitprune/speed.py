"""Measured speed: latency and throughput of a model's forward pass."""

from __future__ import annotations

import statistics
import time

import torch


@torch.inference_mode()
def measure(model: torch.nn.Module, input_shape: tuple[int, int, int], batch: int, *,
            warmup: int = 3, repeats: int = 10, threads: int | None = None,
            device: str = "cpu") -> dict[str, float]:
    """Median latency of ``model`` on a random batch, after warm-up.

    Args:
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
        model = model.eval().to(device)
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
