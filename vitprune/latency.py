"""Measured time as a cost: a per-device latency table and the prediction of a plan's time.

A :class:`LatencyTable` holds what one device measured for the parts of a ViT that a plan changes
(see :mod:`vitprune.profile`, which builds it):

* ``attn_ms[h, n]``: one block's attention half (norm, attention with ``heads[h]`` heads,
  residual) on ``tokens[n]`` tokens;
* ``mlp_ms[d, n]``: one block's MLP half with ``neurons[d]`` hidden units on ``tokens[n]``;
* ``select_ms[n]``: a token-selection stage (class-token attention, top-k, gather, fuse) with
  ``tokens[n]`` tokens in;
* ``drop_ms[n]``: a dropped attention or MLP (depth pruning: the bias added to every token) on
  ``tokens[n]`` tokens (zeros in a table built without it);
* ``fixed_ms``: everything else (embedding, final norm, pool, classifier), for the whole batch;
* ``scale``, ``offset_ms``: an affine map from the sum of a model's parts to its measured time,
  fitted (least squares) to the dense model and a few pruned ones timed whole when the table is
  built. The parts are timed one at a time; run back to back they take a little less (on a CPU
  the dense model ran about 10% under its parts' sum, pruned ones within a few percent).

A plan's predicted time is ``scale * (fixed + sum over blocks of attn(h_i, n_in_i) +
select(n_in_i) where a stage is + mlp(d_i, n_out_i)) + offset_ms``, interpolated linearly within
the grid.
The grids are made non-decreasing along every axis when built (a measured cell slower than a
larger one is noise), so predictions never rise when a plan keeps less.

Pure numpy: the search evaluates tens of thousands of candidates' costs at once
(:meth:`LatencyTable.predict_counts`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cost import VitShape, token_counts
from .errors import ConfigError

FORMAT, VERSION = "vitprune.latency_table", 1
# what must match between the table and the model / run it predicts for
MODEL_FIELDS = ("embed_dim", "num_patches", "num_prefix", "heads", "head_dim", "mlp_hidden")


def model_key(shape: VitShape) -> dict[str, Any]:
    """What a table records of the dense model it was built for (compared on use)."""
    return {"embed_dim": shape.embed_dim, "num_patches": shape.num_patches,
            "num_prefix": shape.num_prefix, "heads": [b.heads for b in shape.blocks],
            "head_dim": [b.head_dim for b in shape.blocks],
            "mlp_hidden": [b.mlp_hidden for b in shape.blocks]}


def _error(why: str) -> ConfigError:
    return ConfigError("latency_table", why)


class _Measured:
    """What every latency table answers from its ``meta`` and JSON record alone."""

    meta: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - each table writes its own
        raise NotImplementedError

    def check_run(self, *, batch: int | None = None, dtype: str | None = None,
                  device: str | None = None, threads: int | None = None) -> None:
        """Refuse a table measured at another batch size or dtype; warn for another device or
        thread count (the table's times do not hold there).

        Raises:
            ConfigError: batch or dtype differ.
        """
        m = self.meta
        for name, want in (("batch", batch), ("dtype", dtype)):
            if want is not None and m.get(name) != want:
                raise _error(f"it was measured at {name} {m.get(name)!r}, not {want!r}; build a "
                             f"table with --{name} {want}")
        for name, want in (("device", device), ("threads", threads)):
            if want is not None and m.get(name) is not None and m.get(name) != want:
                warnings.warn(f"the latency table was measured with {name} {m.get(name)!r}, not "
                              f"{want!r}: its predictions will not hold here", stacklevel=2)

    def fingerprint(self) -> str:
        """A short hash of the table's contents (searches record which table they used)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def predict(self, shape: VitShape) -> float:  # pragma: no cover - each table predicts
        raise NotImplementedError

    def parts(self, shape: VitShape) -> float:  # pragma: no cover - each table sums its parts
        raise NotImplementedError

    def dense_ms(self, shape: VitShape) -> float:
        """The dense model's time, the reference of a fractional budget (``0.5`` = half of it).

        For the table's own dense model: its time measured whole when the table was built,
        interleaved round by round with the calibration models (the median of the rounds'
        fastest calls), which is the time a user compares a pruned model's with. The
        prediction from the parts can miss it (the dense model sat 10% above its parts on
        DeiT-S at batch 32 and 26% below on the Fashion-MNIST model at batch 64). For another
        model (a pruned one searched again) or a table without the record: the prediction.
        """
        measured, parts = self.meta.get("dense_ms_measured"), self.meta.get("dense_ms_parts")
        if measured and parts and abs(self.parts(shape) - parts) <= 1e-9 * max(1.0, parts):
            return float(measured)
        return self.predict(shape)

    def describe(self) -> str:
        m = self.meta
        return (f"{m.get('device_name', m.get('device', '?'))}, batch {m.get('batch')}, "
                f"{m.get('dtype')}, {m.get('threads')} threads")



@dataclass(frozen=True)
class LatencyTable(_Measured):
    """Measured part times of one model on one device, batch, dtype and thread count.

    Attributes:
        heads, neurons, tokens: the grid (ascending).
        attn_ms: (len(heads), len(tokens)) ms per attention half.
        mlp_ms: (len(neurons), len(tokens)) ms per MLP half.
        select_ms: (len(tokens),) ms per token-selection stage.
        fixed_ms: ms of the rest of the model.
        scale, offset_ms: the calibration (see the module docstring).
        meta: model key, device, device name, torch version, threads, batch, dtype, build time,
            measured dense ms.
    """

    heads: tuple[int, ...]
    neurons: tuple[int, ...]
    tokens: tuple[int, ...]
    attn_ms: np.ndarray
    mlp_ms: np.ndarray
    select_ms: np.ndarray
    fixed_ms: float
    scale: float = 1.0
    offset_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    drop_ms: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("heads", "neurons", "tokens"):
            grid = getattr(self, name)
            if (not grid or any(not isinstance(v, (int, np.integer)) or v < 1 for v in grid)
                    or list(grid) != sorted(set(grid))):
                raise _error(f"its {name} grid must be distinct positive integers in rising "
                             f"order, got {list(grid)!r}; rebuild it with vitprune latency-table")
            object.__setattr__(self, name, tuple(int(v) for v in grid))
        if self.drop_ms is None:
            object.__setattr__(self, "drop_ms", np.zeros(len(self.tokens)))
        shapes = {"attn_ms": (len(self.heads), len(self.tokens)),
                  "mlp_ms": (len(self.neurons), len(self.tokens)),
                  "select_ms": (len(self.tokens),), "drop_ms": (len(self.tokens),)}
        for name, want in shapes.items():
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != want or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise _error(f"{name} must be {want} finite non-negative times, got shape "
                             f"{arr.shape}; the table is damaged: rebuild it")
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        for name in ("fixed_ms", "scale", "offset_ms"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v):
                raise _error(f"{name} must be a finite number, got {v!r}")
        if self.fixed_ms < 0 or self.scale <= 0:
            raise _error(f"fixed_ms must be >= 0 and scale > 0, got {self.fixed_ms!r}, "
                         f"{self.scale!r}; the table is damaged: rebuild it")
        if self.scale * self.fixed_ms + self.offset_ms <= 0:  # the fastest plan must take time
            raise _error(f"its calibration (scale {self.scale!r}, offset_ms {self.offset_ms!r}) "
                         "predicts no or negative time for small plans; rebuild it")
        _check_meta(self.meta)

    @property
    def cells(self) -> int:
        """Timed cells (attention, MLP and selection)."""
        return self.attn_ms.size + self.mlp_ms.size + self.select_ms.size

    # ---- prediction ------------------------------------------------------------------------
    def predict(self, shape: VitShape) -> float:
        """Predicted ms of one forward pass (the table's batch) of a model of ``shape``."""
        return self.scale * self.parts(shape) + self.offset_ms

    def parts(self, shape: VitShape) -> float:
        """The uncalibrated sum of the parts' times of a model of ``shape``."""
        counts = token_counts(shape)
        h = np.array([[b.heads for b in shape.blocks]])
        d = np.array([[b.mlp_hidden for b in shape.blocks]])
        n_in = np.array([[c[0] for c in counts]])
        n_out = np.array([[c[1] for c in counts]])
        stage = np.array([[b.keep_patches is not None for b in shape.blocks]])
        return float(self.parts_counts(h, d, n_in, n_out, stage)[0])

    def predict_counts(self, heads: np.ndarray, neurons: np.ndarray, n_in: np.ndarray,
                       n_out: np.ndarray, stage: np.ndarray) -> np.ndarray:
        """Predicted ms of many architectures at once.

        Args:
            heads, neurons: (M, L) heads and MLP units kept per block (0: that half dropped).
            n_in, n_out: (M, L) tokens entering and leaving each block, prefix included.
            stage: (M, L) whether the block has a token-selection stage. Its time is counted
                even where it keeps every token (one stage in place costs the same whatever it
                keeps), so predictions never fall when a plan keeps more tokens.
        Returns:
            (M,) predicted ms.
        """
        return self.scale * self.parts_counts(heads, neurons, n_in, n_out, stage) + self.offset_ms

    def parts_counts(self, heads: np.ndarray, neurons: np.ndarray, n_in: np.ndarray,
                     n_out: np.ndarray, stage: np.ndarray) -> np.ndarray:
        """The uncalibrated sum of the parts' times (see :meth:`predict_counts`)."""
        halves = _halves_ms(self.attn_ms, self.mlp_ms, self.drop_ms,
                            (self.heads, self.neurons, self.tokens), heads, neurons, n_in, n_out)
        sel = np.where(stage, np.interp(n_in, self.tokens, self.select_ms), 0.0)
        return (halves + sel).sum(axis=1) + self.fixed_ms

    # ---- identity and compatibility ----------------------------------------------------------
    def check_model(self, shape: VitShape) -> None:
        """Refuse a table built for another model: width, patches, prefix tokens, depth and head
        width must match; a pruned model of the table's model (fewer heads or neurons) fits.

        Raises:
            ConfigError: what differs, and how to build the right table.
        """
        mine, theirs = self.meta.get("model", {}), model_key(shape)
        diff = _differences(mine, theirs)
        tokens = theirs["num_patches"] + theirs["num_prefix"]
        widest = max(theirs["mlp_hidden"], default=0)
        if not diff and (self.tokens[-1] < tokens or self.neurons[-1] < widest
                         or self.heads[-1] < max(theirs["heads"], default=0)):
            raise _error(f"its grids (tokens up to {self.tokens[-1]}, MLP widths up to "
                         f"{self.neurons[-1]}, heads up to {self.heads[-1]}) do not cover the "
                         f"model ({tokens} tokens, width {widest}); rebuild it")
        _refuse_other(diff, mine, theirs)

    # ---- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta,
                "heads": list(self.heads), "neurons": list(self.neurons),
                "tokens": list(self.tokens), "attn_ms": self.attn_ms.tolist(),
                "mlp_ms": self.mlp_ms.tolist(), "select_ms": self.select_ms.tolist(),
                "drop_ms": self.drop_ms.tolist(),
                "fixed_ms": self.fixed_ms, "scale": self.scale, "offset_ms": self.offset_ms}

    @classmethod
    def from_dict(cls, d: Any) -> LatencyTable:
        """Parse :meth:`to_dict`'s output.

        Raises:
            ConfigError: not a latency table, a newer version, or damaged.
        """
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise _error("it is not a vitprune latency table (no format "
                         f"'{FORMAT}'); make one with vitprune latency-table")
        if not isinstance(d.get("version"), int) or d["version"] > VERSION:
            raise _error(f"format version {d.get('version')!r} is newer than this vitprune "
                         "reads; upgrade vitprune")
        if "stages" in d:  # a hierarchical model's table
            return StagedLatencyTable.from_dict(d)  # type: ignore[return-value]
        try:
            return cls(heads=tuple(d["heads"]), neurons=tuple(d["neurons"]),
                       tokens=tuple(d["tokens"]), attn_ms=np.asarray(d["attn_ms"], dtype=float),
                       mlp_ms=np.asarray(d["mlp_ms"], dtype=float),
                       select_ms=np.asarray(d["select_ms"], dtype=float),
                       drop_ms=(None if d.get("drop_ms") is None
                                else np.asarray(d["drop_ms"], dtype=float)),
                       fixed_ms=float(d["fixed_ms"]), scale=float(d["scale"]),
                       offset_ms=float(d.get("offset_ms", 0.0)),
                       meta=dict(d.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise _error(f"it is damaged ({type(exc).__name__}: {exc}); rebuild it") from None

    @classmethod
    def load(cls, path: Any) -> LatencyTable | StagedLatencyTable:
        """Read a table from a JSON file (see :meth:`from_dict` for the errors)."""
        from pathlib import Path

        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise _error(f"{path} does not exist; make it with vitprune latency-table") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _error(f"{path} is not valid JSON ({exc}); rebuild it") from None
        return cls.from_dict(d)


def _differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The model-key fields in which a table's model (``mine``) and a model (``theirs``) differ;
    a pruned model of the table's (fewer heads or neurons per block) fits."""
    diff = [k for k in ("embed_dim", "num_patches", "num_prefix", "head_dim")
            if mine.get(k) != theirs[k]]
    for k in ("heads", "mlp_hidden"):
        have = mine.get(k) or []
        if len(have) != len(theirs[k]) or any(t > h for t, h in zip(theirs[k], have)):
            diff.append(k)
    return diff


def _refuse_other(diff: list[str], mine: dict[str, Any], theirs: dict[str, Any]) -> None:
    if diff:
        raise _error(f"it was built for another model ({', '.join(diff)} differ: table "
                     f"{ {k: mine.get(k) for k in diff} } vs model "
                     f"{ {k: theirs[k] for k in diff} }); build one for this model with "
                     "vitprune latency-table --model ...")


def _halves_ms(attn_ms: np.ndarray, mlp_ms: np.ndarray, drop_ms: np.ndarray,
               grids: tuple[tuple[int, ...], ...], heads: np.ndarray, neurons: np.ndarray,
               n_in: np.ndarray, n_out: np.ndarray) -> np.ndarray:
    """(M, L) time of each block's attention and MLP halves, interpolated in the grids
    (heads, neurons, tokens); a dropped half (0 kept) costs ``drop_ms`` at its token count."""
    h_grid, d_grid, t_grid = grids
    attn = _grid2(attn_ms, h_grid, t_grid, heads, n_in)
    mlp = _grid2(mlp_ms, d_grid, t_grid, neurons, n_out)
    attn = np.where(heads == 0, np.interp(n_in, t_grid, drop_ms), attn)
    mlp = np.where(neurons == 0, np.interp(n_out, t_grid, drop_ms), mlp)
    return attn + mlp


@dataclass(frozen=True)
class StageGrid:
    """One stage of a hierarchical model (Swin): the attention and MLP halves of its blocks,
    timed at the stage's own token count and width by head count and MLP width.

    Attributes:
        blocks: the model's block indices in this stage.
        heads, neurons: the grid (ascending).
        tokens: the stage's token count (its grid; no token stages in such models).
        attn_ms, mlp_ms: (len(heads),) and (len(neurons),) ms per half.
        drop_ms: ms of a dropped half (0 where the family cannot drop one).
    """

    blocks: tuple[int, ...]
    heads: tuple[int, ...]
    neurons: tuple[int, ...]
    tokens: int
    attn_ms: np.ndarray
    mlp_ms: np.ndarray
    drop_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("blocks", "heads", "neurons"):
            vals = getattr(self, name)
            low = 0 if name == "blocks" else 1
            if (not vals or any(not isinstance(v, (int, np.integer)) or v < low for v in vals)
                    or list(vals) != sorted(set(vals))):
                raise _error(f"a stage's {name} must be distinct integers in rising order, got "
                             f"{list(vals)!r}; rebuild it with vitprune latency-table")
            object.__setattr__(self, name, tuple(int(v) for v in vals))
        for name, n in (("attn_ms", len(self.heads)), ("mlp_ms", len(self.neurons))):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
                raise _error(f"a stage's {name} must be {n} finite non-negative times, got "
                             f"shape {arr.shape}; the table is damaged: rebuild it")
            arr.flags.writeable = False
            object.__setattr__(self, name, arr)
        if not (isinstance(self.tokens, int) and self.tokens >= 1
                and np.isfinite(self.drop_ms) and self.drop_ms >= 0):
            raise _error(f"a stage's tokens ({self.tokens!r}) and drop_ms ({self.drop_ms!r}) "
                         "must be positive and non-negative; rebuild it")

    def parts_counts(self, heads: np.ndarray, neurons: np.ndarray) -> np.ndarray:
        """(M,) time of this stage's blocks for (M, L) kept heads and neurons."""
        cols = list(self.blocks)
        n = np.full((len(heads), len(cols)), self.tokens)
        return _halves_ms(self.attn_ms[:, None], self.mlp_ms[:, None],
                          np.array([self.drop_ms]), (self.heads, self.neurons, (self.tokens,)),
                          heads[:, cols], neurons[:, cols], n, n).sum(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": list(self.blocks), "heads": list(self.heads),
                "neurons": list(self.neurons), "tokens": self.tokens,
                "attn_ms": self.attn_ms.tolist(), "mlp_ms": self.mlp_ms.tolist(),
                "drop_ms": self.drop_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageGrid:
        return cls(blocks=tuple(d["blocks"]), heads=tuple(d["heads"]),
                   neurons=tuple(d["neurons"]), tokens=d["tokens"],
                   attn_ms=np.asarray(d["attn_ms"], dtype=float),
                   mlp_ms=np.asarray(d["mlp_ms"], dtype=float), drop_ms=float(d["drop_ms"]))


@dataclass(frozen=True)
class StagedLatencyTable(_Measured):
    """A latency table of a hierarchical model (Swin): one :class:`StageGrid` per stage (its
    width and token count), the rest of the model (embedding, patch merging, norm, classifier)
    in ``fixed_ms``, and one calibration for the whole. It answers what :class:`LatencyTable`
    does, so searches and commands take either; no token stages (the family has none)."""

    stages: tuple[StageGrid, ...]
    fixed_ms: float
    scale: float = 1.0
    offset_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        blocks = [i for s in self.stages for i in s.blocks]
        if not self.stages or blocks != list(range(len(blocks))):
            raise _error(f"its stages must cover the blocks 0..L-1 in order, got {blocks!r}; "
                         "rebuild it")
        for name in ("fixed_ms", "scale", "offset_ms"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not np.isfinite(v):
                raise _error(f"{name} must be a finite number, got {v!r}")
        if self.fixed_ms < 0 or self.scale <= 0 or self.scale * self.fixed_ms + self.offset_ms <= 0:
            raise _error(f"fixed_ms ({self.fixed_ms!r}), scale ({self.scale!r}) and offset_ms "
                         f"({self.offset_ms!r}) predict no time; the table is damaged: rebuild it")
        _check_meta(self.meta)

    @property
    def cells(self) -> int:
        """Timed cells (attention and MLP, every stage)."""
        return sum(s.attn_ms.size + s.mlp_ms.size for s in self.stages)

    def predict(self, shape: VitShape) -> float:
        return self.scale * self.parts(shape) + self.offset_ms

    def parts(self, shape: VitShape) -> float:
        h = np.array([[b.heads for b in shape.blocks]])
        d = np.array([[b.mlp_hidden for b in shape.blocks]])
        none = np.zeros_like(h)  # each stage's tokens are its own; no token stages
        return float(self.parts_counts(h, d, none, none, none.astype(bool))[0])

    def predict_counts(self, heads: np.ndarray, neurons: np.ndarray, n_in: np.ndarray,
                       n_out: np.ndarray, stage: np.ndarray) -> np.ndarray:
        """:meth:`LatencyTable.predict_counts` (the token counts are each stage's own)."""
        return self.scale * self.parts_counts(heads, neurons, n_in, n_out, stage) + self.offset_ms

    def parts_counts(self, heads: np.ndarray, neurons: np.ndarray, n_in: np.ndarray,
                     n_out: np.ndarray, stage: np.ndarray) -> np.ndarray:
        heads, neurons = np.asarray(heads), np.asarray(neurons)
        return sum(s.parts_counts(heads, neurons) for s in self.stages) + self.fixed_ms

    def check_model(self, shape: VitShape) -> None:
        """As :meth:`LatencyTable.check_model`, each stage's grid covering its blocks."""
        mine, theirs = self.meta.get("model", {}), model_key(shape)
        diff = _differences(mine, theirs)
        if not diff and len(shape.blocks) != sum(len(s.blocks) for s in self.stages):
            diff.append("depth")
        _refuse_other(diff, mine, theirs)
        for s in self.stages:
            blocks = [shape.blocks[i] for i in s.blocks]
            if (max(b.heads for b in blocks) > s.heads[-1]
                    or max(b.mlp_hidden for b in blocks) > s.neurons[-1]):
                raise _error(f"its grid for blocks {s.blocks[0]}-{s.blocks[-1]} (heads up to "
                             f"{s.heads[-1]}, MLP widths up to {s.neurons[-1]}) does not cover "
                             "the model; rebuild it")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "meta": self.meta,
                "stages": [s.to_dict() for s in self.stages], "fixed_ms": self.fixed_ms,
                "scale": self.scale, "offset_ms": self.offset_ms}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StagedLatencyTable:
        try:
            return cls(stages=tuple(StageGrid.from_dict(s) for s in d["stages"]),
                       fixed_ms=float(d["fixed_ms"]), scale=float(d["scale"]),
                       offset_ms=float(d.get("offset_ms", 0.0)), meta=dict(d.get("meta") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise _error(f"it is damaged ({type(exc).__name__}: {exc}); rebuild it") from None


def monotone(grid: np.ndarray) -> np.ndarray:
    """``grid`` made non-decreasing along every axis: each line is replaced by its isotonic
    (least-squares non-decreasing) fit, so one slow outlier is averaged with its neighbours
    instead of raising every larger cell; a running maximum then settles what the passes along
    different axes left."""
    out = np.asarray(grid, dtype=np.float64).copy()
    for axis in range(out.ndim):
        out = np.apply_along_axis(isotonic, axis, out)
    for axis in range(out.ndim):
        out = np.maximum.accumulate(out, axis=axis)
    return out


def isotonic(y: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in least squares (pool adjacent
    violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in np.asarray(y, dtype=np.float64):
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, c in blocks])


def _grid2(values: np.ndarray, rows: tuple[int, ...], cols: tuple[int, ...], r: np.ndarray,
           c: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of ``values`` (len(rows), len(cols)) at points (r, c), linear
    extrapolation below the first row towards 0 at r = 0 (a dropped half costs nothing), clamped
    at the last row and column."""
    r = np.asarray(r, dtype=np.float64)
    c = np.clip(np.asarray(c, dtype=np.float64), cols[0], cols[-1])
    R = np.concatenate([[0.0], np.asarray(rows, dtype=np.float64)])
    V = np.concatenate([np.zeros((1, len(cols))), values], axis=0)  # row 0: nothing kept
    r = np.clip(r, 0.0, R[-1])
    i = np.clip(np.searchsorted(R, r, side="right") - 1, 0, len(R) - 2)
    j = np.clip(np.searchsorted(cols, c, side="right") - 1, 0, max(len(cols) - 2, 0))
    wr = (r - R[i]) / (R[i + 1] - R[i])
    if len(cols) == 1:
        return V[i, 0] + wr * (V[i + 1, 0] - V[i, 0])
    C = np.asarray(cols, dtype=np.float64)
    wc = (c - C[j]) / (C[j + 1] - C[j])
    top = V[i, j] + wc * (V[i, j + 1] - V[i, j])
    bottom = V[i + 1, j] + wc * (V[i + 1, j + 1] - V[i + 1, j])
    return top + wr * (bottom - top)


# what each field of a table's meta holds (None: may be absent or null)
_META_TYPES: dict[str, tuple[type, ...]] = {
    "batch": (int,), "dtype": (str,), "device": (str,), "device_name": (str,),
    "torch": (str,), "threads": (int, type(None)), "dense_ms_measured": (int, float, type(None)),
    "build_s": (int, float), "model": (dict,)}
_MODEL_INTS = ("embed_dim", "num_patches", "num_prefix")


def _check_meta(meta: Any) -> None:
    """Every field of a table's record of its type: a table edited by hand or damaged is
    refused with the field's name, not met later as a TypeError."""
    if not isinstance(meta, dict):
        raise _error(f"its meta must be an object, got {type(meta).__name__}; rebuild it")
    for key, types in _META_TYPES.items():
        v = meta.get(key)
        if key in meta and (not isinstance(v, types) or isinstance(v, bool)):
            raise _error(f"its meta.{key} must be {' or '.join(t.__name__ for t in types)}, got "
                         f"{v!r}; rebuild it")
    if "batch" in meta and meta["batch"] < 1:
        raise _error(f"its meta.batch must be >= 1, got {meta['batch']!r}; rebuild it")
    model = meta.get("model", {})
    for key in _MODEL_INTS:
        if key in model and (not isinstance(model[key], int) or isinstance(model[key], bool)):
            raise _error(f"its meta.model.{key} must be an integer, got {model[key]!r}")
    for key in ("heads", "head_dim", "mlp_hidden"):
        if key in model and not (isinstance(model[key], list)
                                 and all(isinstance(v, int) for v in model[key])):
            raise _error(f"its meta.model.{key} must be a list of integers, got {model[key]!r}")
