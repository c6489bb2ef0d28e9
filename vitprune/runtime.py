"""The runtimes a model is deployed in, behind one callable: eager PyTorch, ``torch.compile`` and
onnxruntime, each optionally with int8 (dynamically quantized) linear layers.

``vitprune bench --runtime`` and benchmarks/deploy.py time these callables, so a pruned model's
speed-up is measured where it will run, not only in eager PyTorch.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import logits_module
from .errors import ConfigError
from .io.export import export_onnx, ort_runner, require_onnx

RUNTIMES = ("eager", "compile", "onnxruntime")


def check_runtime(runtime: str, int8: bool, device: str) -> None:
    """Refuse a runtime, int8 and device combination vitprune does not offer (before any work)."""
    if runtime not in RUNTIMES:
        raise ConfigError("runtime", f"must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime":
        require_onnx()
        if device != "cpu":
            raise ConfigError("runtime", "onnxruntime runs on the CPU here (vitprune installs "
                                         "its CPU build); use --device cpu")
    if int8 and runtime == "compile":
        raise ConfigError("int8", "is offered with --runtime eager or onnxruntime, not compile")
    if int8 and device != "cpu":
        raise ConfigError("int8", "dynamic int8 quantization runs on the CPU; use --device cpu")


def quantize_eager(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with int8 dynamically quantized ``nn.Linear`` layers (PyTorch's
    ``quantize_dynamic``: int8 weights, activations quantized per batch); CPU only."""
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch marks its quantized tensors as deprecated
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


@contextlib.contextmanager
def runner(model: nn.Module, runtime: str, input_shape: tuple[int, int, int], batch: int, *,
           int8: bool = False, threads: int | None = None,
           device: str = "cpu") -> Iterator[Callable[[torch.Tensor], Any]]:
    """A callable running ``model`` in ``runtime`` on (batch, *input_shape) inputs.

    ``compile`` is ``torch.compile(fullgraph=True)`` with static shapes (compiled on the first
    call); ``onnxruntime`` exports the model at this batch size to a temporary file (removed when
    the context ends), checked against PyTorch first.

    Raises:
        ConfigError: see :func:`check_runtime`.
    """
    check_runtime(runtime, int8, device)
    model = logits_module(model).eval()
    if runtime == "eager":
        yield quantize_eager(model) if int8 else model.to(device)
    elif runtime == "compile":
        yield torch.compile(model.to(device), fullgraph=True, dynamic=False)
    else:
        with tempfile.TemporaryDirectory(prefix="vitprune-ort-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, input_shape, path, batch=batch, int8=int8)
            yield ort_runner(path, threads)
