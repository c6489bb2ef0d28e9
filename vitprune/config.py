"""The settings of every job, as one tree of frozen dataclasses that validate themselves.

A default lives here and only here: the command line builds its options from these fields
(their ``help`` metadata is the option's help), the Python API takes the same names, and the
benchmarks start from the same defaults. A configuration is checked whole when it is built, so a
bad setting is refused before any data is loaded or any directory is claimed.

Names are the same at every layer: ``trials`` (evaluations), ``init`` (random ones before the
GP), ``max_ratio`` (largest prune ratio), ``objective`` (what the search maximises),
``calib_images`` (calibration images per search evaluation), ``score_images`` (calibration images
scored) and ``calib_size`` (images carved from the training split as the calibration split).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import devices, profile, speed
from .data import DATASETS
from .errors import ConfigError, is_int, is_number, require
from .io.export import DEFAULT_OPSET, FORMATS
from .io.export import check_settings as check_export_settings
from .latency import LatencyTable
from .runtime import RUNTIMES
from .scoring import SCORE_IMAGES, available_criteria
from .search.config import DIMS, METHODS, OBJECTIVES, Budget, SearchConfig
from .search.space import MAX_RATIO
from .search.surrogate import check_dependencies
from .train import FINETUNE, TrainConfig

CHOICES = ("best", "distilled")  # how the search's final plan is chosen


def parse_budget(text: str | float) -> Budget:
    """A budget as a person writes it.

    ``0.6`` or ``60%`` keeps 60% of the dense cost (MACs, or under a latency table the dense
    model's time measured when the table was built); ``2.7G`` is an absolute 2.7 GMACs per
    image; ``12ms`` an absolute 12 ms per batch (latency budgets).

    Raises:
        ConfigError: (field ``budget``) anything else.
    """
    if isinstance(text, Budget):
        return text
    raw = str(text).strip()
    low = raw.lower()
    try:
        if low.endswith("ms"):
            value, unit = float(low[:-2]), "ms"
        elif low.endswith("g"):
            value, unit = float(low[:-1]), "gmacs"
        elif low.endswith("%"):
            value, unit = float(low[:-1]) / 100.0, "fraction"
        else:
            value, unit = float(low), "fraction"
    except ValueError:
        value, unit = math.nan, "fraction"
    ok = math.isfinite(value) and value > 0 and (unit != "fraction" or value <= 1.0)
    require(ok, "budget", f"must be a fraction of the dense cost in (0, 1] (0.6 or 60%), "
            f"GMACs per image (2.7G) or milliseconds per batch (12ms), got {raw!r}")
    return Budget(value, unit=unit)


MAX_IMG_SIZE = 4096  # larger inputs would ask for hundreds of GB before the first batch


def _img_size(value: Any) -> tuple[int, ...]:
    """An input size as one size (square) or (height, width), checked."""
    size = (value,) if is_int(value) else tuple(value)
    require(len(size) in (1, 2) and all(is_int(v) and 1 <= v <= MAX_IMG_SIZE for v in size),
            "img_size", f"takes one size or two (height width) from 1 to {MAX_IMG_SIZE}, got "
            f"{value!r}")
    return size


def _as_timm_size(size: tuple[int, ...] | None) -> int | tuple[int, int] | None:
    return None if size is None else size[0] if len(size) == 1 else (size[0], size[1])


@dataclass(frozen=True)
class DataConfig:
    """Which data, and how it is split (train / calibration / test)."""

    data: str = field(default="fashion-mnist", metadata={
        "help": "dataset", "choices": DATASETS})
    data_dir: str | None = field(default=None, metadata={
        "help": "dataset directory (fashion-mnist: the Debian package's by default)"})
    calib_size: int | None = field(default=None, metadata={
        "help": "images carved from the training split as the calibration split, used by "
                "scoring and search and never for training (default 5000 / 1000 / 128 for "
                "fashion-mnist / imagefolder / synthetic)"})
    img_size: tuple[int, ...] | None = field(default=None, metadata={
        "help": "input size for imagefolder data: one value (square) or H W (default: the "
                "model's own input size, else 224)", "metavar": "SIZE"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/calibration carve"})
    workers: int | None = field(default=None, metadata={
        "help": "loader worker processes per training process for imagefolder data (default: "
                "the CPU cores shared among this machine's processes, at most 8; 0: load in "
                "the main process)"})

    @property
    def size(self) -> int | tuple[int, int] | None:
        """The input size as timm takes it: an int (square) or (height, width); None: the
        model's own."""
        return _as_timm_size(self.img_size)

    def __post_init__(self) -> None:
        require(self.data in DATASETS, "data", f"must be one of {', '.join(DATASETS)}, got "
                f"{self.data!r}")
        c = self.calib_size
        require(c is None or (is_int(c) and c >= 1), "calib_size", f"must be >= 1, got {c!r}")
        if self.img_size is not None:
            size = _img_size(self.img_size)
            require(self.data == "imagefolder", "img_size",
                    f"applies to imagefolder data only; {self.data} images have their own size "
                    "(build the model for it instead)")
            object.__setattr__(self, "img_size", size)
        require(is_int(self.split_seed), "split_seed", f"must be an integer, got {self.split_seed!r}")
        w = self.workers
        require(w is None or (is_int(w) and w >= 0), "workers", f"must be >= 0, got {w!r}")


@dataclass(frozen=True)
class ScoreConfig:
    """How heads and neurons are ranked."""

    criterion: str = field(default="hsic", metadata={
        "help": "ranks heads and neurons", "choices": tuple(available_criteria())})
    score_images: int = field(default=SCORE_IMAGES, metadata={"help": "calibration images scored"})

    def __post_init__(self) -> None:
        names = available_criteria()
        require(self.criterion in names, "criterion", f"must be one of {', '.join(names)}, got "
                f"{self.criterion!r}")
        require(is_int(self.score_images) and self.score_images >= 2, "score_images",
                f"must be an integer >= 2, got {self.score_images!r}")


@dataclass(frozen=True)
class SearchSettings:
    """How much to cut in each block: the policy search under a budget."""

    method: str = field(default="gp-ei", metadata={
        "help": "gp-ei (Gaussian process + expected improvement), random, or uniform (one "
                "ratio everywhere)", "choices": METHODS})
    trials: int = field(default=SearchConfig.trials, metadata={
        "help": "evaluations in all, init included"})
    init: int = field(default=SearchConfig.init, metadata={
        "help": "feasible evaluations before the GP (the anchors first, then random ones)"})
    anchors: bool = field(default=SearchConfig.anchors, metadata={
        "help": "gp-ei: start the initial population with uniform plans (one ratio in every "
                "block, along a few mixes of heads, neurons and tokens) before the random ones; "
                "on by default, chosen on the calibration split (docs/search_anchors.md); "
                "--no-anchors: random ones only"})
    calib_images: int = field(default=2000, metadata={
        "help": "calibration images per evaluation"})
    max_ratio: float = field(default=MAX_RATIO, metadata={
        "help": "largest prune ratio of any block and dimension, in (0, 1); the method's "
                "authors used 0.5"})
    dims: tuple[str, ...] = field(default=DIMS, metadata={
        "help": "dimensions to prune (the others stay whole)", "choices": DIMS})
    token_blocks: tuple[int, ...] | None = field(default=None, metadata={
        "help": "0-indexed blocks with a token-selection stage (default: spread over the "
                "depth, e.g. 3 6 9 of 12; give none to prune no tokens)", "metavar": "B"})
    objective: str = field(default="top1", metadata={
        "help": "masked calibration top-1, minus the KL divergence from the dense model, or "
                "the fidelity of the output features to the dense model's (100 x mean cosine "
                "similarity: backbones without a classifier)",
        "choices": OBJECTIVES})
    budget_metric: str = field(default="macs", metadata={
        "help": "what the budget bounds: MACs, or the time a latency table predicts (needs "
                "--latency-table)", "choices": ("macs", "latency")})
    latency_table: str | None = field(default=None, metadata={
        "help": "latency table JSON of this model (vitprune latency-table) for "
                "--budget-metric latency", "metavar": "FILE"})
    depth: bool = field(default=False, metadata={
        "help": "depth pruning: the search may also drop a block's attention or MLP whole (a "
                "ratio from 0.95 up), which removes per-operation overhead that narrower blocks "
                "keep; timm-built families (ViT/DeiT, T2T-ViT)"})
    neuron_multiple: int = field(default=1, metadata={
        "help": "keep each block's MLP width a multiple of this (8, 16, 64: widths the "
                "hardware's kernels may prefer); inside the search space, so the budget sees it"})
    choice: str = field(default="best", metadata={
        "help": "the final plan: best (the trial with the highest objective) or distilled (the "
                "5 best trials and the anchors each distilled from the dense model for "
                "--choice-steps steps, the best on calibration images the search did not use; "
                "the objective before training is a weak guide to the fine-tuned accuracy: "
                "docs/ft_proxy.md)", "choices": CHOICES})
    choice_steps: int = field(default=40, metadata={
        "help": "distillation steps per candidate of --choice distilled (the fine-tuning "
                "recipe's batch)"})
    latency_rounds: int = field(default=3, metadata={
        "help": "searches at most under a latency budget: after each, the chosen plan is timed "
                "against the dense model, and where its measured time misses the budget by more "
                "than 5% the search runs again at the budget scaled by the miss (1: search "
                "once; only with a table measured on this machine and device)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", tuple(self.dims))
        if self.token_blocks is not None:
            object.__setattr__(self, "token_blocks", tuple(self.token_blocks))
        require(is_int(self.trials) and self.trials >= 1, "trials",
                f"must be an integer >= 1, got {self.trials!r}")
        self.loop_config(0)  # the search layer's own checks (init against trials ...)
        check_dependencies(self.method)  # before any work, not after scoring
        require(is_int(self.calib_images) and self.calib_images >= 1, "calib_images",
                f"must be an integer >= 1, got {self.calib_images!r}")
        require(is_number(self.max_ratio) and 0 < self.max_ratio < 1, "max_ratio",
                f"must be in (0, 1): 0.5 lets the search remove up to half of each block's "
                f"heads and neurons and of the tokens; got {self.max_ratio!r}")
        require(len(self.dims) >= 1 and set(self.dims) <= set(DIMS)
                and len(set(self.dims)) == len(self.dims), "dims",
                f"must name distinct dimensions among {', '.join(DIMS)}, got {list(self.dims)}")
        tb = self.token_blocks
        require(tb is None or (all(is_int(b) and b >= 0 for b in tb) and len(set(tb)) == len(tb)),
                "token_blocks", f"must be distinct block indices >= 0, got {tb!r}")
        require(self.objective in OBJECTIVES, "objective",
                f"must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        require(self.budget_metric in ("macs", "latency"), "budget_metric",
                f"must be macs or latency, got {self.budget_metric!r}")
        require(self.budget_metric == "macs" or self.latency_table is not None, "latency_table",
                "is needed for --budget-metric latency: build one with vitprune latency-table")
        require(self.budget_metric == "latency" or self.latency_table is None, "budget_metric",
                "must be latency when a --latency-table is given (or leave the table out)")
        require(is_int(self.neuron_multiple) and self.neuron_multiple >= 1, "neuron_multiple",
                f"must be an integer >= 1, got {self.neuron_multiple!r}")
        require(self.choice in CHOICES, "choice",
                f"must be one of {', '.join(CHOICES)}, got {self.choice!r}")
        require(is_int(self.choice_steps) and self.choice_steps >= 1, "choice_steps",
                f"must be an integer >= 1, got {self.choice_steps!r}")
        require(is_int(self.latency_rounds) and self.latency_rounds >= 1, "latency_rounds",
                f"must be an integer >= 1 (1: search once), got {self.latency_rounds!r}")

    def latency(self) -> LatencyTable | None:
        """The latency table the budget is measured against (None: a MACs budget)."""
        return None if self.latency_table is None else LatencyTable.load(self.latency_table)

    def loop_config(self, seed: int) -> SearchConfig:
        """The search loop's configuration for these settings."""
        return SearchConfig(method=self.method, trials=self.trials, init=self.init, seed=seed,
                            objective=self.objective, anchors=self.anchors)


@dataclass(frozen=True)
class LatencyTableSettings:
    """How ``latency-table`` times a model's parts (see :func:`vitprune.profile.build_table`)."""

    batch: int = field(default=1, metadata={"help": "images per forward pass"})
    dtype: str = field(default="float32", metadata={
        "help": "the dtype the model will run in", "choices": tuple(profile.DTYPES)})
    token_points: int | None = field(default=None, metadata={
        "help": "grid points along the tokens (default: every count up to 64 patches, else 24)"})
    neuron_points: int = field(default=profile.NEURON_POINTS, metadata={
        "help": "grid points along MLP width"})
    neuron_multiple: int = field(default=1, metadata={
        "help": "put the MLP-width grid on multiples of this"})
    repeats: int = field(default=profile.REPEATS, metadata={
        "help": "timed calls per cell (fastest kept)"})

    def __post_init__(self) -> None:
        profile.check_settings(**dataclasses.asdict(self))


@dataclass(frozen=True)
class EvalSettings:
    """What ``eval`` measures a model against besides its labels."""

    reference: str | None = field(default=None, metadata={
        "help": "for a model without a classifier (num_classes=0): the dense model (a saved "
                "directory, or a name) whose output features its fidelity is measured against",
        "metavar": "MODEL"})


@dataclass(frozen=True)
class BenchSettings:
    """How ``bench`` times a model: the runtime, and warm-up and median of repeats."""

    runtime: str = field(default="eager", metadata={
        "help": "eager PyTorch, torch.compile (fullgraph) or onnxruntime (exported to a "
                "temporary file, needs vitprune[export])", "choices": RUNTIMES})
    int8: bool = field(default=False, metadata={
        "help": "dynamically quantized int8 linear layers (eager or onnxruntime, CPU)"})
    batch: int = field(default=1, metadata={"help": "images per forward pass"})
    warmup: int = field(default=speed.WARMUP, metadata={
        "help": "untimed forwards first (compile happens in the first)"})
    repeats: int = field(default=speed.REPEATS, metadata={
        "help": "timed forwards (median reported)"})

    def __post_init__(self) -> None:
        require(self.runtime in RUNTIMES, "runtime",
                f"must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        require(isinstance(self.int8, bool), "int8", f"must be true or false, got {self.int8!r}")
        _positive(self, "batch", "warmup", "repeats")


@dataclass(frozen=True)
class ExportSettings:
    """What ``export`` writes: the format, opset and batch of the graph."""

    format: str = field(default="onnx", metadata={"help": "export format", "choices": FORMATS})
    opset: int = field(default=DEFAULT_OPSET, metadata={"help": "ONNX opset version"})
    dynamic_batch: bool = field(default=False, metadata={
        "help": "let the batch size vary at run time (default: fixed at --batch)"})
    batch: int = field(default=1, metadata={
        "help": "batch size of the exported graph (the first one checked)"})
    int8: bool = field(default=False, metadata={
        "help": "dynamically quantize the linear layers to int8 (onnxruntime)"})

    def __post_init__(self) -> None:
        check_export_settings(self.format, self.opset)
        for name in ("dynamic_batch", "int8"):
            v = getattr(self, name)
            require(isinstance(v, bool), name, f"must be true or false, got {v!r}")
        _positive(self, "batch")


def _positive(settings: Any, *names: str) -> None:
    for name in names:
        v = getattr(settings, name)
        require(is_int(v) and v >= 1, name, f"must be an integer >= 1, got {v!r}")


@dataclass(frozen=True)
class DeviceSettings:
    """Where a job runs: the device and the CPU threads (:func:`vitprune.devices.setup`)."""

    device: str = field(default=devices.DEFAULT, metadata={"help": devices.HELP})
    threads: int | None = field(default=None, metadata={
        "help": "CPU threads for torch (default: torch's)"})

    def __post_init__(self) -> None:
        t = self.threads
        require(t is None or (is_int(t) and t >= 1), "threads", f"must be >= 1, got {t!r}")


@dataclass(frozen=True)
class OutputSettings:
    """What a writing command creates and how it reports: ``out`` (a run directory or a file,
    by command), whether to continue an interrupted run there, and whether to show progress."""

    out: Path | None = field(default=None, metadata={
        "help": "the run directory or file to create", "required": True})
    resume: bool = field(default=False, metadata={
        "help": "continue the interrupted run in --out exactly"})
    quiet: bool = field(default=False, metadata={
        "help": "no progress bars or progress lines"})


@dataclass(frozen=True)
class ShapeSettings:
    """How a model given by name or directory is prepared before a command looks at it: a plan
    applied to it, and the input size of a model built by name."""

    plan: str | None = field(default=None, metadata={"help": "plan JSON to apply first"})
    img_size: tuple[int, ...] | None = field(default=None, metadata={
        "help": "input size for a model given by name: one value (square) or H W",
        "metavar": "SIZE"})

    def __post_init__(self) -> None:
        if self.img_size is not None:
            object.__setattr__(self, "img_size", _img_size(self.img_size))

    @property
    def size(self) -> int | tuple[int, int] | None:
        """The input size as timm takes it: an int (square) or (height, width)."""
        return _as_timm_size(self.img_size)


@dataclass(frozen=True)
class InputFiles:
    """Files a command can take from an earlier one instead of computing them."""

    scores: Path | None = field(default=None, metadata={
        "help": "scores JSON from `vitprune score` (default: score with --criterion here)"})
    latency_table: Path | None = field(default=None, metadata={
        "help": "also predict the time per batch from this latency table", "metavar": "FILE"})


@dataclass(frozen=True)
class CompressConfig:
    """Settings of a compression run (recorded in its run directory; a re-run must match).

    Build it from the flat names the command line and :func:`vitprune.compress` use with
    :meth:`from_flat` (``CompressConfig.from_flat(budget="0.4", trials=30, epochs=4)``).
    """

    budget: str = field(default="0.6", metadata={
        "help": "0.6 or 60% keeps 60% of the dense MACs (or of the dense model's time measured "
                "with the latency table, with --budget-metric latency); 2.7G is 2.7 GMACs per "
                "image; 12ms is 12 ms per batch of the latency table"})
    seed: int = field(default=0, metadata={
        "help": "seeds the search and the fine-tuning (and the weights of a model built by name "
                "without a checkpoint)"})
    data: DataConfig = field(default_factory=DataConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    search: SearchSettings = field(default_factory=SearchSettings)
    finetune: TrainConfig = FINETUNE
    bench_batches: tuple[int, ...] = field(default=(1, 64), metadata={
        "help": "batch sizes of the CPU speed measurement (latency at the first)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", str(self.budget))
        parse_budget(self.budget)
        require(is_int(self.seed), "seed", f"must be an integer, got {self.seed!r}")
        object.__setattr__(self, "bench_batches", tuple(self.bench_batches))
        require(len(self.bench_batches) >= 1 and all(is_int(b) and b >= 1
                                                     for b in self.bench_batches),
                "bench_batches", f"must be batch sizes >= 1, got {self.bench_batches!r}")
        if self.finetune.seed != self.seed:  # one seed for the whole run
            object.__setattr__(self, "finetune", dataclasses.replace(self.finetune, seed=self.seed))
        require(self.finetune.kd_alpha > 0, "kd_alpha",
                "must be > 0: fine-tuning distils from the dense model")

    @classmethod
    def from_flat(cls, **settings: Any) -> CompressConfig:
        """A configuration from flat setting names (:func:`flat_fields`); unknown names are
        refused with the known ones."""
        groups: dict[str, dict[str, Any]] = {"": {}, "data": {}, "score": {}, "search": {},
                                             "finetune": {}}
        where = {name: group for group, names in _FLAT.items() for name in names}
        for name, value in settings.items():
            if name not in where:
                raise ConfigError(name, f"is not a compression setting; known: "
                                  f"{', '.join(sorted(where))}")
            groups[where[name]][name] = value
        return cls(**groups[""], data=DataConfig(**groups["data"]),
                   score=ScoreConfig(**groups["score"]),
                   search=SearchSettings(**groups["search"]),
                   finetune=FINETUNE.with_recipe(groups["finetune"].pop("recipe", "small"),
                                                 **groups["finetune"]))

    @staticmethod
    def names() -> tuple[str, ...]:
        """Every flat setting name :meth:`from_flat` accepts."""
        return tuple(n for names in _FLAT.values() for n in names)

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name, JSON-ready (what a run directory records)."""
        out = {}
        for group, names in _FLAT.items():
            source = getattr(self, group) if group else self
            out.update({n: getattr(source, n) for n in names})
        return json.loads(json.dumps(out))


def flat_fields(cls: type, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Names of ``cls``'s fields that are settings (not nested configurations)."""
    nested = (DataConfig, ScoreConfig, SearchSettings, TrainConfig)
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip
                 and not isinstance(f.default, nested) and f.default_factory not in nested)


_FLAT = {"": flat_fields(CompressConfig), "data": flat_fields(DataConfig),
         "score": flat_fields(ScoreConfig),
         "search": flat_fields(SearchSettings), "finetune": flat_fields(TrainConfig, ("seed",))}
