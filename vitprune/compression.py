"""The end-to-end job: score -> search -> prune -> fine-tune -> evaluate -> report.

It reads top to bottom: each stage is a function of the values the previous ones returned, and
its value is persisted by the run directory (:mod:`vitprune.rundir`), which alone knows file
names, ownership, the lock and which stages are done. Re-running the same command after an
interruption resumes at the first unfinished stage (inside the search and the fine-tuning, at the
last finished evaluation or epoch); a directory holding another run, or other files, is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from . import dist, fsutil
from .adapters import vit_shape
from .config import CompressConfig, parse_budget
from .data import Splits
from .devices import DEFAULT as DEFAULT_DEVICE
from .devices import setup
from .errors import ConfigError, OutputError, VitpruneError
from .io import load, save
from .io.model_dir import read_config
from .models import ArchSpec, ModelSource
from .pipeline import (
    check_budget,
    check_training,
    evaluate_models,
    finetune,
    finetune_for_model,
    fit_data,
    for_model,
    latency_check,
    load_data,
    load_dense,
    model_id,
    policy_search,
    scored,
)
from .plan import PrunePlan
from .profile import device_name
from .records import EpochRecord, EvalRow, Evaluation
from .rundir import (
    FINETUNE,
    METRICS,
    MODEL,
    PLAN,
    REPORT,
    SCORES,
    SEARCH,
    TRIALS,
    RunDir,
    RunState,
    read_state,
)
from .scoring import BlockScores, load_scores, save_scores
from .search.report import SearchSummary, summary
from .search.trials import Trial, read_trials
from .surgery import prune

T = TypeVar("T")


@dataclass(frozen=True)
class CompressResult:
    """What a finished run produced.

    Attributes:
        out: the run directory.
        model_dir: the compressed, fine-tuned model (``vitprune.load(model_dir)``).
        plan: the searched plan.
        metrics: the evaluation (``eval.json``): accuracy, MACs, params and speed, dense vs pruned.
        report: the Markdown report.
        model: the compressed model (eval mode, CPU).
    """

    out: Path
    model_dir: Path
    plan: PrunePlan
    metrics: Evaluation
    report: Path
    model: torch.nn.Module

    def summary(self) -> dict[str, Any]:
        """What ``vitprune compress`` prints: where things are, the MACs kept and test top-1."""
        rows = self.metrics.rows
        what = "test_fidelity" if rows["dense"].backbone else "test_top1"
        return {"out": str(self.out), "model": str(self.model_dir), "report": str(self.report),
                "macs_kept": self.metrics.macs_kept,
                **{f"{what}_{k}": getattr(rows[k], what) for k in ("dense", "pruned", "finetuned")}}


def compress(model: str | Path | ModelSource, data: str | Splits = "fashion-mnist",
             budget: str | float | None = None, out: str | Path = "runs/compress", *,
             checkpoint: str | Path | None = None,
             data_dir: str | Path | None = None, device: str = DEFAULT_DEVICE,
             progress: bool = True, config: CompressConfig | None = None,
             **settings: Any) -> CompressResult:
    """Compress a ViT to ``budget`` and fine-tune it by distillation from the dense model.

    Args:
        model: a registered name, a timm ViT name (with ``checkpoint``) or a saved model
            directory; or a :class:`~vitprune.models.ModelSource` (timm's published weights,
            constructor arguments).
        data: a dataset name (``fashion-mnist``, ``imagefolder``, ``synthetic``), read as the
            command line reads it (:func:`vitprune.pipeline.load_data`: an image folder gets the
            model's own preprocessing), or ready splits.
        budget: fraction of the dense MACs to keep (``0.6``, ``"60%"``) or ``"2.7G"`` (GMACs);
            default :class:`CompressConfig`'s (or ``config``'s, which it may not contradict).
        out: the run directory; re-running with the same arguments resumes it.
        checkpoint: weights for a model given by name.
        data_dir: where the dataset is.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``; every stage runs
            there (under torchrun each rank takes its own GPU).
        config: all settings at once; or give any of them by name in ``settings`` (``trials=30``,
            ``epochs=4``, ``max_ratio=0.9``, ``calib_size=2000``, ``img_size=(160,)``,
            ``split_seed=1`` ...: :meth:`CompressConfig.from_flat`). Not both.
    Returns:
        The :class:`CompressResult`.
    Raises:
        ConfigError: a setting is invalid (checked before anything else).
        BudgetError: no plan in the search space meets the budget (nothing is written).
        OutputError: ``out`` holds another run or other files, is one of the inputs, or another
            process is writing to it.
    """
    cfg = _config(config, budget, data, data_dir, settings)
    device = setup(device)  # checked before any data is read
    src = ModelSource.of(model, checkpoint)
    src.check()
    splits = data if isinstance(data, Splits) else load_data(cfg.data, src)
    torch.manual_seed(cfg.seed)  # a model built by name: its random weights follow the seed
    dense, arch = load_dense(src, splits, device=device, verb="compress")
    splits = fit_data(dense, splits, source=src.name)  # before anything is written
    # a backbone is fine-tuned by feature distillation; its search objective is its features
    cfg = replace(cfg, finetune=finetune_for_model(cfg.finetune, dense),
                  search=for_model(cfg.search, dense))
    check_training(cfg.finetune, splits)
    check_budget(dense, cfg.budget, cfg.search)
    say = _Say(progress)
    identity = {**_identity(cfg.flat()), "model": model_id(src), "data": splits.name}
    defaults = _identity(CompressConfig(budget=cfg.budget).flat())
    with RunDir.claim(out, "compress", identity, inputs=src.inputs(), defaults=defaults,
                      info={"model_path": src.name, "checkpoint": src.checkpoint}
                      ) as run:
        stages = _Stages(run)
        def score_stage() -> tuple[list, dict]:
            say(f"scoring heads and neurons ({cfg.score.criterion}, {cfg.score.score_images} "
                "images)")
            return scored(dense, splits, cfg.score.criterion, n_images=cfg.score.score_images)
            # (dense is on device: scoring runs there)

        scores = stages.scores(score_stage)

        def search_stage() -> tuple[PrunePlan, dict]:
            say(f"searching ({cfg.search.method}, {cfg.search.trials} evaluations)")
            res = policy_search(dense, splits, cfg.budget, run.file(SEARCH), scores=scores,
                                settings=cfg.search, seed=cfg.seed, progress=progress,
                                resume=run.file(SEARCH, TRIALS).exists())
            return res.best_plan, summary(res)

        plan, search_summary = stages.plan(search_stage)
        pruned = prune(dense, plan)  # exact and quick: recomputed, never re-read

        def finetune_stage() -> tuple[torch.nn.Module, dict]:
            say(f"fine-tuning {cfg.finetune.epochs} epochs with distillation from the dense model")
            student, t0 = copy.deepcopy(pruned), time.perf_counter()  # pruned stays as cut
            history = finetune(student, dense, splits, cfg.finetune, run.file(FINETUNE),
                               resume=True, device=device, progress=progress)
            return student, {"finetuned": {"history": [h.to_dict() for h in history],
                                           "config": asdict(cfg.finetune),
                                           "wall_seconds_this_run":
                                               round(time.perf_counter() - t0, 1)}}

        student, trained = stages.model(finetune_stage, arch, plan)
        student = student.to(device)  # read back from its directory (on the CPU) on a resume

        def evaluate_stage() -> Evaluation:
            say(f"evaluating on the test and calibration splits and measuring speed on {device}")
            rows = evaluate_models({"dense": dense, "pruned": pruned, "finetuned": student},
                                   splits, timed=("dense", "finetuned"),
                                   bench_batches=cfg.bench_batches, device=device)
            table = cfg.search.latency()
            return Evaluation(
                rows={k: EvalRow.from_dict(r) for k, r in rows.items()},
                threads=torch.get_num_threads(), device_type=torch.device(device).type,
                device_name=device_name(device),
                finetune_history=tuple(EpochRecord.from_dict(h)
                                       for h in trained["finetuned"]["history"]),
                test_images=rows["dense"]["test_images"],
                # a latency budget: predicted beside measured, at its batch
                latency=None if table is None else latency_check(table, dense, student))

        metrics = stages.metrics(evaluate_stage)

        def write_report(directory: Path) -> Path:
            from .report import write_report

            return write_report(directory, metrics, plan, vit_shape(dense), search_summary,
                                cfg.flat())

        report = stages.report(write_report)
    return CompressResult(run.path, run.file(MODEL), plan, metrics, report, student.cpu().eval())


class _Stages:
    """The typed stages of a compression run in its run directory: each value is computed once,
    written atomically, and read back on a resume (by the readers below, which
    :func:`read_run` shares)."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def scores(self, compute: Callable[[], tuple[list[BlockScores], dict]]) -> list[BlockScores]:
        """The component scores (``scores.json``)."""
        return self.run.stage("scores", compute, lambda v: save_scores(self.run.file(SCORES), *v),
                              lambda: _read_scores(self.run.path))[0]

    def plan(self, compute: Callable[[], tuple[PrunePlan, SearchSummary]]
             ) -> tuple[PrunePlan, SearchSummary]:
        """The searched plan and the search's summary (``plan.json``; the search's own files
        are under ``search/``)."""
        def write(v: tuple[PrunePlan, SearchSummary]) -> None:
            fsutil.write_json(self.run.file(PLAN), {"plan": v[0].to_dict(),
                                                     "search": v[1].to_dict()})

        return self.run.stage("search", compute, write, lambda: _read_plan(self.run.path))

    def model(self, compute: Callable[[], tuple[torch.nn.Module, dict]], arch: ArchSpec,
              plan: PrunePlan) -> tuple[torch.nn.Module, dict]:
        """The fine-tuned model and its metadata (``model/``, a plain model directory)."""
        def write(v: tuple[torch.nn.Module, dict]) -> None:
            save(self.run.file(MODEL), v[0].cpu(), arch, plan=plan, meta=v[1])

        return self.run.stage("finetune", compute, write, lambda: _read_model(self.run.path))

    def report(self, write: Callable[[Path], Path]) -> Path:
        """The report (``report.md`` and its plots), written by ``write(directory)`` once."""
        return self.run.stage("report", lambda: self.run.file(REPORT),
                              lambda _: write(self.run.path), lambda: _read_report(self.run.path))

    def metrics(self, compute: Callable[[], Evaluation]) -> Evaluation:
        """The evaluation (``eval.json``)."""
        return self.run.stage(
            "evaluate", compute, lambda v: fsutil.write_json(self.run.file(METRICS), v.to_dict()),
            lambda: _read_metrics(self.run.path))


# each stage's output, read back from a run directory
def _read_scores(out: Path) -> tuple[list[BlockScores], dict]:
    return load_scores(out / SCORES)


def _read_plan(out: Path) -> tuple[PrunePlan, SearchSummary]:
    d = json.loads((out / PLAN).read_text())
    return PrunePlan.from_dict(d["plan"]), SearchSummary.from_dict(d["search"])


def _read_model(out: Path) -> tuple[torch.nn.Module, dict]:
    return load(out / MODEL), read_config(out / MODEL)["meta"]


def _read_report(out: Path) -> Path:
    if not (out / REPORT).is_file():
        raise OSError(f"{out / REPORT} is missing")
    return out / REPORT


def _read_metrics(out: Path) -> Evaluation:
    return Evaluation.from_dict(json.loads((out / METRICS).read_text()))


@dataclass(frozen=True)
class CompressRun:
    """What a compress run directory holds so far, read through its records (:func:`read_run`);
    a stage not finished yet is None.

    Attributes:
        state: the run's manifest (settings, finished stages).
        scores_meta: how the components were scored (criterion, images, device ...).
        plan, search: the searched plan and the search's summary.
        trials: every evaluation of the search so far (also while it runs).
        metrics: the evaluation of the dense, pruned and fine-tuned models.
        report: the Markdown report.
    """

    state: RunState
    scores_meta: dict[str, Any] | None
    plan: PrunePlan | None
    search: SearchSummary | None
    trials: tuple[Trial, ...]
    metrics: Evaluation | None
    report: Path | None

    @property
    def finished(self) -> bool:
        """Every stage done: the same command again would only read."""
        return "report" in self.state.done


def read_run(out: str | Path) -> CompressRun:
    """A compress run directory as its records say (never locks, runs or changes anything):
    the way benchmarks and scripts read runs, instead of by file name.

    Raises:
        OutputError: ``out`` holds no compress run, or a finished stage's output is damaged.
    """
    out = Path(out)
    state = read_state(out)
    if state is None or state.kind != "compress":
        what = "nothing vitprune made" if state is None else f"a {state.kind} run"
        raise OutputError(f"{out} holds {what}, not a compress run; run `vitprune compress "
                          f"... --out {out}` to make one")

    def done(stage: str, reader: Callable[[Path], T]) -> T | None:
        if stage not in state.done:
            return None
        try:
            return reader(out)
        except (OSError, ValueError, KeyError, VitpruneError) as exc:
            raise OutputError(f"the output of the finished stage {stage!r} in {out} is missing "
                              f"or damaged ({fsutil.first_line(exc)}); run the same compress "
                              "command again to compute it again") from exc

    scores, plan = done("scores", _read_scores), done("search", _read_plan)
    return CompressRun(state=state, scores_meta=None if scores is None else scores[1],
                       plan=None if plan is None else plan[0],
                       search=None if plan is None else plan[1],
                       trials=tuple(read_trials(out / SEARCH / TRIALS)),
                       metrics=done("evaluate", _read_metrics), report=done("report", _read_report))


def _config(config: CompressConfig | None, budget: str | float | None, data: str | Splits,
            data_dir: str | Path | None, settings: dict[str, Any]) -> CompressConfig:
    """The run's settings from either ``config`` or flat names, with the dataset named by
    ``data`` and ``data_dir``; settings given twice are refused rather than one dropped."""
    named = {} if isinstance(data, Splits) else {"data": data}
    if data_dir is not None:
        named["data_dir"] = str(data_dir)
    if config is None:
        given = {} if budget is None else {"budget": str(budget)}
        return CompressConfig.from_flat(**given, **named, **settings)
    if budget is not None and parse_budget(budget) != parse_budget(config.budget):
        raise ConfigError("budget", f"{budget!r} contradicts config's budget {config.budget!r}: "
                          "give it in one place")
    if settings:
        raise ConfigError(next(iter(settings)), "was given beside config=: put every setting in "
                          "the CompressConfig (CompressConfig.from_flat(...)) or none")
    clash = {k: v for k, v in named.items() if getattr(config.data, k) != v}
    if clash:
        return dataclasses.replace(config, data=dataclasses.replace(config.data, **clash))
    return config


# where the data is and how it is loaded do not change a run's results: the splits' name
# stands for the dataset, and the loader's batches do not depend on its workers
_NOT_IDENTITY = ("data", "data_dir", "workers")


def _identity(flat: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flat.items() if k not in _NOT_IDENTITY}


class _Say:
    """Progress lines of the job (rank 0 only)."""

    def __init__(self, on: bool):
        self.on = on and dist.is_main()

    def __call__(self, text: str) -> None:
        if self.on:
            print(f"[compress] {text}", flush=True)

