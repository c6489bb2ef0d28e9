"""Build a :class:`~vitprune.latency.LatencyTable`: time the parts of a model that a plan
changes, on the device this runs on.

One block of the model (they are all alike) is sliced to each head count and to each MLP width
of the grid, and its two residual halves are timed at each token count of the grid; a token
selection stage is timed at each token count; the rest of the model (embedding, final norm,
pool, classifier) is timed with every block skipped. The dense model is timed whole, and the
ratio of its time to the sum of its predicted parts calibrates the table (``scale``).

Cells are timed with warm-up and the median of repeats. The build time grows with the grid: a
DeiT-S at batch 32 on two CPU threads takes a few minutes (docs/latency.md).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .adapters import adapter_for, logits_module, token_stage
from .adapters.tokens import cls_attention, select_tokens
from .cost import VitShape
from .errors import ConfigError, ModelError, is_int, require
from .latency import LatencyTable, StagedLatencyTable, StageGrid, model_key, monotone
from .plan import BlockPlan, PrunePlan, TokenStage, planned_shape
from .progress import min_interval
from .speed import WARMUP, Timer
from .surgery import prune

# a table build's defaults: MLP-width grid points and timed calls per cell (the fastest kept)
NEURON_POINTS = 16
REPEATS = 7
# rounds of the whole models (dense and calibration plans) timed in turn at the end of a build
CALIBRATION_ROUNDS = 5

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class _Skip(nn.Module):
    """A block that passes the tokens through (the rest of the model is timed without blocks)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


def grid(low: int, high: int, points: int, multiple: int = 1) -> tuple[int, ...]:
    """About ``points`` integers from ``low`` to ``high`` (both included), evenly spread; with
    ``multiple`` > 1 the inner points are multiples of it (widths a search keeps aligned)."""
    vals = np.linspace(low, high, max(2, points))
    if multiple > 1:
        vals = np.maximum(multiple, np.round(vals / multiple) * multiple)
    out = sorted({int(round(v)) for v in vals} | {low, high})
    return tuple(v for v in out if low <= v <= high)


def build_table(model: nn.Module, *, batch: int, device: str = "cpu", threads: int | None = None,
                dtype: str = "float32", token_points: int | None = None,
                neuron_points: int = NEURON_POINTS, neuron_multiple: int = 1, warmup: int = WARMUP,
                repeats: int = REPEATS, passes: int = 2, calibration_plans: int = 8,
                statistic: str = "min",
                progress: bool = True) -> LatencyTable | StagedLatencyTable:
    """Time ``model``'s parts on ``device`` at ``batch`` into a :class:`LatencyTable`.

    Args:
        model: a dense model (no token stages, every block alike); not modified.
        batch: images per forward pass the table is for.
        threads: CPU threads (fixed for the build, restored afterwards; recorded).
        dtype: ``float32`` or ``bfloat16``.
        token_points, neuron_points: grid points along the token and MLP-width axes (every
            head count is timed). None: every token count up to 64 patches, else 24 points
            (time is not linear in the tokens: caches fill at some sizes).
        neuron_multiple: put the MLP-width grid on multiples of this.
        warmup, repeats: per cell.
        passes: times the whole grid is timed; each cell keeps its fastest pass (a shared
            machine slows down for seconds at a time: one slow spell then spoils no cell).
        statistic: ``median`` or ``min`` of each cell's repeats (``min`` resists interference
            from other work on a shared machine; compare with measurements of the same kind).
        calibration_plans: pruned models (random, with token stages) timed whole beside the
            dense one; ``scale`` is the median of measured over summed parts.

    Raises:
        ConfigError: a setting is out of range. ModelError: the model cannot be tabled.
    """
    check_settings(batch=batch, dtype=dtype, token_points=token_points,
                   neuron_points=neuron_points, neuron_multiple=neuron_multiple, repeats=repeats,
                   passes=passes, statistic=statistic)
    adapter = adapter_for(model)
    shape = adapter.shape(model)
    blocks = adapter.blocks(model)
    adapter.halves(blocks[0])  # a family that cannot time its halves says so first
    if any(token_stage(b) for b in blocks):
        raise ModelError("build the latency table on the dense model: this one selects tokens")
    groups = stage_groups(shape)
    if len(groups) != (len({b.width for b in shape.blocks}) if shape.windowed else 1):
        raise ModelError("the blocks differ in heads or MLP width (a pruned model?); build the "
                         "latency table on the dense model the plans are for")
    axes = None if shape.windowed else _axes(shape, token_points, neuron_points, neuron_multiple)
    dt = DTYPES[dtype]
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t_start = time.perf_counter()
    timer = Timer(device, warmup, repeats, statistic)
    try:
        from tqdm.auto import tqdm

        cells = (passes * sum(shape.blocks[g[0]].heads * min(2, len(g)) + neuron_points + 1
                              for g in groups) + 1
                 if axes is None else passes * (len(axes[0]) + len(axes[1]) + 1) * len(axes[2]) + 1)
        with tqdm(total=cells, desc="latency table", disable=not progress,
                  mininterval=min_interval(), unit="cell") as bar:
            if axes is None:
                table = StagedLatencyTable(
                    tuple(_stage_grid(timer, adapter, blocks, shape, g, neuron_points,
                                      neuron_multiple, passes, bar, batch, device, dt)
                          for g in groups), fixed_ms=1.0)
            else:
                table = _flat_table(timer, adapter, blocks[0], shape, axes, passes, bar, batch,
                                    device, dt)
            # the rest of the model, timed once the process is warm (its first calls are not)
            x = torch.randn(batch, *adapter.input_shape(model), device=device, dtype=dt)
            table = dataclasses.replace(
                table, fixed_ms=timer(logits_module(_skipped(adapter, model, device, dt)), x))
            bar.update(1)
            plans = [None, *calibration(shape, calibration_plans)]
            nets = [logits_module(copy.deepcopy(model if p is None else prune(model, p))
                                  .to(device, dt).eval()) for p in plans]
            # rounds of all in turn, so drift hits all alike; each pruned model's fastest call
            # over the rounds is fitted, while the dense model's reference (the 100% of a
            # fractional budget) is the median of its rounds' fastest calls: one lucky or
            # unlucky round moves it by 10% on a shared CPU
            rounds = [timer.interleaved(nets, x, rounds=1) for _ in range(CALIBRATION_ROUNDS)]
            measured = [min(r[k] for r in rounds) for k in range(len(nets))]
            dense_reference = statistics.median(r[0] for r in rounds)
            ratios = [(m, table.parts(shape if p is None else planned_shape(shape, p)))
                      for m, p in zip(measured, plans)]
            bar.update(len(plans))
    finally:
        torch.set_num_threads(old_threads)
    dense, parts = ratios[0]
    meta = {"model": model_key(shape), "device": str(torch.device(device).type),
            "device_name": device_name(device), "torch": torch.__version__,
            "threads": threads or old_threads, "batch": batch, "dtype": dtype,
            "warmup": warmup, "repeats": repeats, "statistic": statistic, "neuron_multiple": neuron_multiple,
            "dense_ms_measured": dense_reference, "dense_ms_fastest": dense,
            "dense_ms_rounds": [r[0] for r in rounds], "dense_ms_parts": parts,
            "calibration": [{"measured_ms": m, "parts_ms": p} for m, p in ratios],
            "build_s": round(time.perf_counter() - t_start, 1)}
    # the pruned models only: the dense one (every block at full width and all tokens) sits
    # apart from the rest on CPU caches and its time swings most from run to run; one
    # measurement of it would tilt the fit (it stays in meta for the record)
    scale, offset = fit_calibration(ratios[1:] if len(ratios) > 3 else ratios,
                                    floor=table.fixed_ms)
    return dataclasses.replace(table, scale=scale, offset_ms=offset, meta=meta)


def check_settings(*, batch: int, dtype: str, token_points: int | None, neuron_points: int,
                   neuron_multiple: int = 1, repeats: int = REPEATS, passes: int = 2,
                   statistic: str = "min") -> None:
    """Refuse a table setting out of range (:func:`build_table`'s arguments; the checks of
    ``latency-table``'s settings, :class:`vitprune.config.LatencyTableSettings`, too).

    Raises:
        ConfigError: naming the setting.
    """
    for name, value in (("batch", batch), ("neuron_multiple", neuron_multiple),
                        ("repeats", repeats), ("passes", passes)):
        require(is_int(value) and value >= 1, name, f"must be an integer >= 1, got {value!r}")
    require(dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    require(token_points is None or (is_int(token_points) and token_points >= 2),
            "token_points", f"must be >= 2, got {token_points!r}")
    require(is_int(neuron_points) and neuron_points >= 2, "neuron_points",
            f"must be >= 2, got {neuron_points!r}")
    require(statistic in ("min", "median"), "statistic", f"must be min or median, got {statistic!r}")


def _time_grid(timer: Timer, halves: dict[str, list], sel: Callable | None,
               tokens: tuple[int, ...],
               passes: int, bar: Any, widths: tuple[int, int, int], device: str,
               dt: torch.dtype) -> tuple[np.ndarray, ...]:
    """Each half's time at each token count, the fastest of ``passes`` passes over the grid.

    Args:
        halves: ``attn`` (one per head count), ``mlp`` (one per width) and ``drop`` (a dropped
            half, or none) callables of the tokens (B, N, C).
        sel: the token-selection step, of the tokens and the qkv (B, N, 3*h*d); None: none.
        widths: (batch B, model width C, qkv width 3*h*d).
    Returns:
        (attention (heads, tokens), MLP (widths, tokens), selection (tokens,), dropped half
        (tokens,), inf where there is none), in ms.
    """
    batch, C, qkv_width = widths
    attn = np.full((len(halves["attn"]), len(tokens)), np.inf)
    mlp = np.full((len(halves["mlp"]), len(tokens)), np.inf)
    select, drop = np.full(len(tokens), np.inf), np.full(len(tokens), np.inf)
    for _ in range(passes):
        for j, n in enumerate(tokens):
            xs = torch.randn(batch, n, C, device=device, dtype=dt)  # (B, N, C)
            for i, half in enumerate(halves["attn"]):
                attn[i, j] = min(attn[i, j], timer(half, xs))
            for i, half in enumerate(halves["mlp"]):
                mlp[i, j] = min(mlp[i, j], timer(half, xs))
            if sel is not None:
                qkv = torch.randn(batch, n, qkv_width, device=device, dtype=dt)  # (B, N, 3hd)
                select[j] = min(select[j], timer(sel, xs, qkv))
            for half in halves["drop"]:
                drop[j] = min(drop[j], timer(half, xs))
            bar.update(len(halves["attn"]) + len(halves["mlp"]) + (sel is not None))
    return attn, mlp, select, drop


def fit_calibration(points: list[tuple[float, float]],
                    floor: float = 0.0) -> tuple[float, float]:
    """(scale, offset) of ``measured = scale * parts + offset``, least squares over
    (measured, parts) points; a plain ratio (offset 0) when the fit is not increasing, there
    are too few distinct points, or the line would predict no time for a model whose parts
    take ``floor`` ms (the fixed parts alone: a noisy build can tilt the line that far)."""
    m = np.array([p[0] for p in points])
    x = np.array([p[1] for p in points])
    if len(points) >= 3 and np.ptp(x) > 0:
        a, b = np.polyfit(x, m, 1)
        if a > 0 and a * floor + b > 0:
            return float(a), float(b)
    return float(np.median(m / x)), 0.0


def calibration(shape: VitShape, count: int, seed: int = 0) -> list[PrunePlan]:
    """``count`` random pruned architectures of the kind a search visits: each block keeps a
    random share (10-100%) of its heads and of its neurons, and token stages a quarter, half
    and three quarters of the way down keep 30-100% of the tokens."""
    rng = np.random.default_rng(seed + 1_000_003)  # apart from any seed a benchmark draws with
    L = len(shape.blocks)
    stages = sorted({L // 4, L // 2, 3 * L // 4}) if L >= 2 and not shape.windowed else []

    def kept(total: int) -> range:
        return range(int(np.clip(round(total * rng.uniform(0.1, 1.0)), 1, total)))

    return [PrunePlan(tuple(BlockPlan(kept(b.heads), kept(b.mlp_hidden)) for b in shape.blocks),
                      tuple(TokenStage(s, float(rng.uniform(0.3, 1.0))) for s in stages))
            for _ in range(count)]


def device_name(device: str) -> str:
    """What the device is, for the table's record (GPU model, or the CPU's)."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _block(adapter: Any, block: nn.Module, device: str, dt: torch.dtype, *,
           heads: Any = None, neurons: Any = None, head_dim: int = 0) -> nn.Module:
    """A copy of ``block`` keeping the first ``heads`` / ``neurons``, on ``device``."""
    blk = copy.deepcopy(block).eval()
    adapter.prune_block(blk, None if heads is None else list(heads),
                        None if neurons is None else list(neurons), head_dim)
    return blk.to(device, dt)


def _dropped(adapter: Any, block: nn.Module, device: str, dt: torch.dtype) -> Any:
    """The attention half of a copy of ``block`` with its attention dropped (depth pruning), or
    None where the family cannot drop it."""
    blk = copy.deepcopy(block).eval()
    try:
        adapter.drop_half(blk, "attention")
    except ModelError:
        return None
    return adapter.halves(blk.to(device, dt))[0]


def _skipped(adapter: Any, model: nn.Module, device: str, dt: torch.dtype) -> nn.Module:
    """A copy of ``model`` whose blocks pass the tokens through."""
    m = copy.deepcopy(model).eval()
    for i in range(len(adapter.blocks(m))):
        adapter.set_block(m, i, _Skip())
    return m.to(device, dt)


def _selection(num_heads: int, head_dim: int, num_prefix: int) -> Callable[..., torch.Tensor]:
    """One token stage's own work: class-token attention from ``qkv``, keep half, fuse."""

    def run(x: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        scores = cls_attention(qkv, num_heads, head_dim, head_dim ** -0.5)
        keep = max(1, (x.shape[1] - num_prefix) // 2)
        return select_tokens(x, scores, num_prefix, keep, True)

    return run


def check_table_settings(batch: int, dtype: str, device: str) -> None:
    """The settings of a table build, checked before the model is loaded."""
    require(isinstance(batch, int) and batch >= 1, "batch", f"must be an integer >= 1, got {batch!r}")
    require(dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", "CUDA is not available on this machine; use --device cpu")


def _axes(shape: VitShape, token_points: int | None, neuron_points: int, neuron_multiple: int
          ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """A plain ViT table's grids: every head count, MLP widths and token counts."""
    b0 = shape.blocks[0]
    N, P = shape.num_prefix + shape.num_patches, shape.num_prefix
    neurons = grid(max(1, b0.mlp_hidden // neuron_points), b0.mlp_hidden, neuron_points,
                   neuron_multiple)
    if token_points is None:
        token_points = N - P if N - P <= 64 else 24
    return tuple(range(1, b0.heads + 1)), neurons, grid(P + 1, N, token_points)


def _flat_table(timer: Timer, adapter: Any, block: nn.Module, shape: VitShape, axes: tuple,
                passes: int, bar: Any, batch: int, device: str, dt: torch.dtype) -> LatencyTable:
    """A plain ViT's table (uncalibrated, ``fixed_ms`` still to be timed): ``block``'s halves
    over the grids ``axes``."""
    heads, neurons, tokens = axes
    b0 = shape.blocks[0]
    attn_blocks = [adapter.halves(_block(adapter, block, device, dt, heads=range(h),
                                         head_dim=b0.head_dim))[0] for h in heads]
    mlp_blocks = [adapter.halves(_block(adapter, block, device, dt, neurons=range(d)))[1]
                  for d in neurons]
    drop_half = _dropped(adapter, block, device, dt)
    halves = {"attn": attn_blocks, "mlp": mlp_blocks, "drop": [drop_half] * (
        drop_half is not None)}
    attn, mlp, select, drop = _time_grid(
        timer, halves, _selection(b0.heads, b0.head_dim, shape.num_prefix), tokens, passes, bar,
        (batch, shape.embed_dim, 3 * b0.heads * b0.head_dim), device, dt)
    # a dropped half costs no more than the cheapest kept one
    drop = (np.zeros(len(tokens)) if drop_half is None
            else np.minimum(monotone(drop), monotone(np.minimum(attn[0], mlp[0]))))
    return LatencyTable(heads=heads, neurons=neurons, tokens=tokens, attn_ms=monotone(attn),
                        mlp_ms=monotone(mlp), select_ms=monotone(select), fixed_ms=1.0,
                        drop_ms=drop)


def stage_groups(shape: VitShape) -> list[tuple[int, ...]]:
    """Runs of consecutive blocks of one kind (heads, widths, tokens, window): one run for a
    plain ViT, one per stage for a hierarchical model (Swin)."""
    groups: list[list[int]] = []
    for i, b in enumerate(shape.blocks):
        key = (b.heads, b.head_dim, b.mlp_hidden, b.width, b.grid, b.window)
        if groups and key == groups[-1][0]:
            groups[-1][1].append(i)
        else:
            groups.append([key, [i]])
    return [tuple(g[1]) for g in groups]


def _stage_grid(timer: Timer, adapter: Any, blocks: Any, shape: VitShape, group: tuple[int, ...],
                neuron_points: int, neuron_multiple: int, passes: int, bar: Any, batch: int,
                device: str, dt: torch.dtype) -> StageGrid:
    """A stage's :class:`StageGrid` on the stage's own tokens: its MLP half at the MLP-width
    grid, and its attention half at every head count averaged over the stage's blocks, timed on
    its first two (a stage alternates plain and shifted windows; a shift adds a roll and a mask
    to the attention half)."""
    b0, blk = shape.blocks[group[0]], blocks[group[0]]
    heads = tuple(range(1, b0.heads + 1))
    neurons = grid(max(1, b0.mlp_hidden // neuron_points), b0.mlp_hidden, neuron_points,
                   neuron_multiple)
    n = b0.grid[0] * b0.grid[1]
    drop_half = _dropped(adapter, blk, device, dt)
    attn_kinds = []  # (weight: blocks of this kind, the kind's attention times)
    for k, i in enumerate(group[:2]):
        halves = {"attn": [adapter.halves(_block(adapter, blocks[i], device, dt,
                                                 heads=range(h), head_dim=b0.head_dim))[0]
                           for h in heads],
                  "mlp": [] if k else [adapter.halves(_block(adapter, blk, device, dt,
                                                              neurons=range(d)))[1]
                                       for d in neurons],
                  "drop": [drop_half] * (drop_half is not None and not k)}
        a, m, _, d = _time_grid(timer, halves, None, (n,), passes, bar, (batch, b0.width, 0),
                                device, dt)
        if not k:
            mlp, drop = m, d
        attn_kinds.append((len(group[k::2]), a[:, 0]))
    attn = sum(w * a for w, a in attn_kinds) / len(group)
    attn, mlp = monotone(attn), monotone(mlp[:, 0])
    dropped = 0.0 if drop_half is None else float(min(drop[0], attn[0], mlp[0]))
    return StageGrid(blocks=group, heads=heads, neurons=neurons, tokens=n, attn_ms=attn,
                     mlp_ms=mlp, drop_ms=dropped)
