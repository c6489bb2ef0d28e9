"""Multi-process runs under torchrun: one process per rank, gloo on CPU, NCCL on CUDA.

A plain ``python`` launch is a world of one and every helper here is then a no-op, so the
library code calls them unconditionally.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as td

from .errors import ConfigError, DistributedError


def launched() -> bool:
    """True in a process started by torchrun with more than one rank.

    Raises:
        ConfigError: ``WORLD_SIZE`` is set to something other than a positive count.
    """
    raw = os.environ.get("WORLD_SIZE", "1").strip()
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError("WORLD_SIZE", f"must be a number of processes >= 1, got {raw!r}: "
                                        "launch with torchrun, which sets it, or unset it")
    return int(raw) > 1


# torchrun's rendezvous variables; without them a process cannot find its peers
_RENDEZVOUS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def timeout_s() -> float:
    """How long a rank waits for its peers (joining, and at each collective) before it gives up:
    ``VITPRUNE_DIST_TIMEOUT`` seconds, default 600."""
    raw = os.environ.get("VITPRUNE_DIST_TIMEOUT", "600")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError("VITPRUNE_DIST_TIMEOUT", f"must be a number of seconds > 0, got {raw!r}")
    return value


def init(device: str = "cpu") -> str:
    """Join the process group when launched by torchrun (NCCL for a CUDA ``device``, gloo for
    the CPU); returns ``device``. :func:`vitprune.devices.setup` resolves the device first (under
    torchrun each rank's own GPU) and calls this."""
    device = str(device)
    if launched() and not td.is_initialized():
        missing = [v for v in _RENDEZVOUS if v not in os.environ]
        if missing:
            raise ConfigError("WORLD_SIZE", f"is {os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                                            "are not set: launch with torchrun "
                                            "(torchrun --nproc_per_node N -m vitprune ...), which "
                                            "sets them all, or unset WORLD_SIZE")
        wait = timeout_s()
        try:
            td.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                  timeout=datetime.timedelta(seconds=wait))
        except (RuntimeError, ValueError) as exc:  # a peer that never came, a bad address
            raise DistributedError(
                f"could not join the {os.environ['WORLD_SIZE']} processes at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {wait:.0f} s "
                f"({str(exc).strip().splitlines()[0][:160]}); check that every rank was started "
                "with the same torchrun command (VITPRUNE_DIST_TIMEOUT sets the wait)") from None
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
