"""Multi-process runs under torchrun: one process per rank, gloo on CPU, NCCL on CUDA.

A plain ``python`` launch is a world of one and every helper here is then a no-op, so the
library code calls them unconditionally.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as td


def launched() -> bool:
    """True in a process started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "cpu") -> str:
    """Join the process group when launched by torchrun (NCCL for a CUDA ``device``, gloo for
    the CPU); returns ``device``. :func:`vitprune.devices.setup` resolves the device first (under
    torchrun each rank's own GPU) and calls this."""
    device = str(device)
    if launched() and not td.is_initialized():
        td.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    return td.get_rank() if active() else 0


def world() -> int:
    return td.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed element-wise over all ranks, in place; ``t`` lives on this rank's device
    (NCCL takes CUDA tensors only), so callers accumulate their sums there."""
    if active():
        td.all_reduce(t)
    return t


def sum_(values: list[float], device: str | torch.device) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64, so counts stay exact), reduced
    on ``device``: the rank's own device, which the process group's backend accepts."""
    if not active():
        return list(values)
    return all_sum(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def broadcast(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (any picklable object)."""
    if not active():
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if active():
        td.barrier()


def close(wait: bool = True) -> None:
    """Leave the process group (first waiting for every rank when ``wait``): a rank that exits
    while others still talk to it makes the communication threads abort the process."""
    if active():
        if wait:
            td.barrier()
        td.destroy_process_group()
