"""The device a run computes on: resolved once from ``--device`` (or the API's ``device=``),
checked before any work, and handed to every stage.

Every command and :func:`vitprune.compress` call :func:`setup` first; the stages below take
the device it returns as a required argument (there is no ``device="cpu"`` default to fall back
on), so a stage cannot silently run somewhere else. Models move between devices only where a
stage must: weights are saved from the CPU, and onnxruntime and int8 run on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from . import dist
from .errors import ConfigError, is_int

DEFAULT = "auto"
HELP = ("auto (CUDA when this machine has it, else the CPU), cpu, cuda or cuda:N; under torchrun "
        "each rank takes the GPU of its LOCAL_RANK")
_SPEC = re.compile(r"(cpu|cuda)(?::(\d+))?")


def resolve(spec: str | torch.device = DEFAULT) -> str:
    """The device ``spec`` names on this machine, as a string torch takes (``cpu``, ``cuda:0``).

    ``auto`` is CUDA when present, else the CPU. ``cuda`` is the current GPU, or under torchrun
    the GPU of this rank's ``LOCAL_RANK``. A resolved device resolves to itself.

    Raises:
        ConfigError: (field ``device``) an unknown spelling, a device this machine lacks, or a
            fixed GPU index under a multi-process torchrun launch.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    m = _SPEC.fullmatch(text)
    if m is None:
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N (vitprune runs on the "
                                    f"CPU or on NVIDIA GPUs), got {str(spec)!r}")
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        built = "built with CUDA but finds no GPU" if torch.backends.cuda.is_built() else \
            "a CPU-only build"
        raise ConfigError("device", f"{spec} was asked for, but CUDA is not available here "
                                    f"(torch {torch.__version__} is {built}); use --device cpu "
                                    "or auto")
    count = torch.cuda.device_count()
    if dist.launched():
        idx = _local_rank()
        if index is not None and int(index) != idx:  # its own GPU, once resolved, is fine
            raise ConfigError("device", f"{spec} fixes one GPU, but under torchrun each rank "
                                        "takes the GPU of its LOCAL_RANK: pass --device cuda")
    else:
        idx = torch.cuda.current_device() if index is None else int(index)
    if idx >= count:
        raise ConfigError("device", f"cuda:{idx} does not exist: this machine has {count} "
                                    f"GPU(s), cuda:0 to cuda:{count - 1}")
    return f"cuda:{idx}"


def _local_rank() -> int:
    raw = os.environ.get("LOCAL_RANK", "0")
    if not raw.isdigit():
        raise ConfigError("device", f"LOCAL_RANK must be a GPU index, got {raw!r} (torchrun sets "
                                    "it; do not set it by hand)")
    return int(raw)


def check_threads(threads: int | None) -> None:
    """Refuse a CPU thread count that is not a positive integer (None: torch's default)."""
    if threads is not None and not (is_int(threads) and threads >= 1):
        raise ConfigError("threads", f"must be an integer >= 1 (or left out for torch's "
                                     f"default), got {threads!r}")


def setup(spec: str | torch.device = DEFAULT, threads: int | None = None) -> str:
    """Check and apply the device and thread settings of a run; returns the resolved device.

    On CUDA it also selects the GPU and allows TF32 matmuls (bf16 autocast does the rest, see
    :func:`autocast`); under torchrun it joins the process group (NCCL on CUDA, gloo on CPU).
    Nothing is changed before every setting has been checked.
    """
    check_threads(threads)
    device = resolve(spec)
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls outside autocast
        torch.backends.cudnn.allow_tf32 = True
    return dist.init(device)


def autocast(device: str | torch.device, enabled: bool | None = None):
    """bf16 autocast where it pays: on CUDA by default, off on the CPU (where it is slower here
    and changes results); ``enabled=True`` forces it on either (the tests use it on the CPU).
    bf16 needs no loss scaling, so training and inference use the same context."""
    kind = torch.device(device).type
    on = kind == "cuda" if enabled is None else enabled
    if not on or kind not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=torch.bfloat16)


def device_of(model: torch.nn.Module) -> str:
    """The device ``model``'s parameters are on (a module vitprune runs lives on one)."""
    p = next(model.parameters(), None)
    return "cpu" if p is None else str(p.device)
