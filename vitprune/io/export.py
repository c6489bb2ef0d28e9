"""ONNX export of a (pruned) model, checked against PyTorch with onnxruntime before it is kept.

Token-selection stages export as ordinary graph operators (``TopK``, ``GatherElements``,
``ScatterElements``): a plan fixes how many tokens each stage keeps, so every shape in the graph
but the batch is static. ``onnx``, ``onnxscript`` and ``onnxruntime`` come with the ``export``
extra (``pip install 'vitprune[export]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import fsutil
from ..adapters import logits_module
from ..errors import ConfigError, DependencyError, ModelError, OutputError

FORMATS = ("onnx",)
# The dynamo exporter emits opset 18 and later; onnxruntime 1.31 runs up to 23.
OPSETS = range(18, 24)
DEFAULT_OPSET = 18
# Largest export kept in one file: protobuf's 2 GiB limit, less room for the graph itself.
MAX_SINGLE_FILE_BYTES = 1_900_000_000
# float32 export against PyTorch: largest absolute logit difference accepted.
FP32_ATOL = 1e-4
# int8 cannot match float32 to 1e-4; it is checked for gross breakage only (relative L2 error of
# the logits), and its accuracy is what docs/deploy.md measures.
INT8_MAX_REL_ERROR = 0.25
EXTRA = "pip install 'vitprune[export]' (onnx, onnxscript, onnxruntime)"


def require_onnx() -> None:
    """Raise :class:`DependencyError` unless the ``export`` extra is installed."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyError(f"ONNX export and the onnxruntime runtime need {', '.join(missing)}"
                              f": {EXTRA}")


def check_settings(fmt: str, opset: int) -> None:
    """Refuse an unknown ``fmt`` or ``opset`` (before any work is done)."""
    if fmt not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if opset not in OPSETS:
        raise ConfigError("opset", f"must be between {OPSETS.start} and {OPSETS.stop - 1} "
                                   f"(what the exporter writes and onnxruntime runs), got {opset}")


def export_onnx(model: torch.nn.Module, input_shape: tuple[int, int, int], out: str | Path, *,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = False, batch: int = 1,
                int8: bool = False, per_channel: bool = True) -> dict[str, Any]:
    """Export ``model`` to the new file ``out``, check it with onnxruntime, then keep it.

    The file appears only once the check passed (written to a temporary file, then linked into
    place; an existing ``out`` is never replaced).

    Args:
        model: a float32 model (moved to the CPU for the export; left in eval mode).
        input_shape: (C, H, W) of one image.
        dynamic_batch: let the batch size vary; otherwise it is fixed at ``batch``.
        int8: dynamically quantize the linear layers' weights to int8 (onnxruntime's
            ``quantize_dynamic``, weights in 7 bits so that CPUs without VNNI do not saturate;
            activations are quantized per batch at run time).
        per_channel: int8 weight scales per output channel rather than per tensor.

    Returns:
        ``out``, ``opset``, ``dynamic_batch``, ``batch``, ``int8``, ``bytes`` and the check:
        ``check_batches``, ``max_abs_diff`` and ``rel_error`` (relative L2 error of the logits).

    Raises:
        DependencyError: the ``export`` extra is missing.
        ModelError: the export failed, or its outputs do not match PyTorch's.
        OutputError: ``out`` exists or cannot be written.
    """
    require_onnx()
    check_settings("onnx", opset)
    out = Path(out)
    if out.exists():
        raise OutputError(f"{out} exists; export never writes over a file: choose a new --out")
    model = logits_module(model).float().cpu().eval()
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if nbytes > MAX_SINGLE_FILE_BYTES:
        raise ModelError(f"the model has {nbytes / 1e9:.1f} GB of weights; vitprune exports one "
                         "ONNX file, limited to 2 GB by protobuf")
    batches = (batch, batch + 1) if dynamic_batch else (batch,)
    record: dict[str, Any] = {}

    def write(path: Path) -> None:
        if int8:  # quantized from a float32 export kept aside
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as tmp:
                fp32 = Path(tmp) / "model.onnx"
                _export(model, input_shape, fp32, opset, dynamic_batch, batch)
                _quantize(fp32, path, per_channel)
        else:
            _export(model, input_shape, path, opset, dynamic_batch, batch)
        record.update(check(model, path, input_shape, batches, int8))

    fsutil.atomic_write(out, write, exclusive=True)
    return {"out": str(out), "opset": opset, "dynamic_batch": dynamic_batch, "batch": batch,
            "int8": int8, "bytes": out.stat().st_size, **record}


def _export(model: torch.nn.Module, input_shape: tuple[int, int, int], path: Path, opset: int,
            dynamic_batch: bool, batch: int) -> None:
    # traced at batch 2 at least when the batch may vary: torch.export specialises a size-1
    # dimension to the constant 1, which would fix the batch after all
    x = torch.randn(max(batch, 2) if dynamic_batch else batch, *input_shape)
    # positional: the forward's argument may have any name (x, images, pixel_values)
    dyn = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    try:
        # the exporter prints progress lines and warns about internals a user cannot act on
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset,
                                        dynamic_shapes=dyn, input_names=["x"],
                                        output_names=["logits"], verbose=False)
            program.save(str(path), external_data=False)
    except Exception as exc:  # the exporter raises many types; each is an export failure
        raise ModelError(f"ONNX export failed: {type(exc).__name__}: {fsutil.first_line(exc)}. "
                         "Nothing was written.") from exc


def _quantize(src: Path, dest: Path, per_channel: bool) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The exporter's recorded intermediate shapes can disagree with onnx's own inference (the
    # quantizer re-infers them and stops); the graph is fine without them.
    m = onnx.load(str(src))
    m.graph.ClearField("value_info")
    onnx.save(m, str(src))
    with warnings.catch_warnings(), _quiet_root_logger():
        warnings.simplefilter("ignore")
        # The linear layers only: left to itself the quantizer also turns opset 23's Attention
        # node into a QAttention that onnxruntime cannot load. Weights in 7 bits (reduce_range):
        # x86 CPUs without VNNI add u8 x s8 products in saturating 16-bit pairs, which with full
        # 8-bit weights doubled the error of a 12-block ViT here (0.11 against 0.05 relative);
        # onnxruntime advises it for models that may run on such CPUs.
        quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8,
                         per_channel=per_channel, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Gemm"])


@contextlib.contextmanager
def _quiet_root_logger():
    # onnxruntime's quantizer logs advice to the root logger ("consider pre-processing")
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def ort_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for ``path``, ``threads`` intra-op threads (None: its own)."""
    require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_runner(path: str | Path, threads: int | None = None) -> Callable[[torch.Tensor], Any]:
    """A callable running the ONNX file ``path`` on a (B, C, H, W) CPU tensor, returning the
    first output as a numpy array."""
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor):
        return session.run(None, {name: x.numpy()})[0]

    return run


@torch.inference_mode()
def check(model: torch.nn.Module, path: Path, input_shape: tuple[int, int, int],
          batches: tuple[int, ...], int8: bool, seed: int = 0) -> dict[str, Any]:
    """Run the ONNX file at ``path`` and ``model`` on the same random inputs; raise
    :class:`ModelError` unless they agree (float32: within ``FP32_ATOL``; int8: relative error
    within ``INT8_MAX_REL_ERROR``)."""
    run = ort_runner(path)
    gen = torch.Generator().manual_seed(seed)
    worst, rel = 0.0, 0.0
    for b in batches:
        x = torch.randn(b, *input_shape, generator=gen)
        ref = model(x)
        got = torch.from_numpy(run(x))
        if got.shape != ref.shape:
            raise ModelError(f"the ONNX model gives outputs of shape {tuple(got.shape)} for "
                             f"{tuple(ref.shape)}; the export is wrong. Nothing was written.")
        worst = max(worst, (got - ref).abs().max().item())
        rel = max(rel, ((got - ref).norm() / ref.norm().clamp_min(1e-12)).item())
    if not torch.isfinite(torch.tensor([worst, rel])).all():
        raise ModelError("the ONNX model gives non-finite outputs. Nothing was written.")
    if (not int8 and worst > FP32_ATOL) or (int8 and rel > INT8_MAX_REL_ERROR):
        limit = f"relative error {INT8_MAX_REL_ERROR}" if int8 else f"{FP32_ATOL} absolute"
        raise ModelError(f"the ONNX model does not match PyTorch (max abs difference {worst:.3g},"
                         f" relative error {rel:.3g}; allowed: {limit}). Nothing was written.")
    return {"check_batches": list(batches), "max_abs_diff": worst, "rel_error": rel}

