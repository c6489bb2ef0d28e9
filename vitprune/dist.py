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
    """Join the process group when launched by torchrun; returns the device this rank uses.

    On CUDA each rank takes the GPU of its ``LOCAL_RANK``.
    """
    if not launched():
        return device
    if str(device).startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not td.is_initialized():
        td.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return device


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    return td.get_rank() if active() else 0


def world() -> int:
    return td.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def sum_(values: list[float], device: str | torch.device = "cpu") -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64, so counts stay exact)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    td.all_reduce(t)
    return t.tolist()


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
