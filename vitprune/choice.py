"""The search's final choice by a short distillation (``--choice distilled``).

The search maximises the masked model's calibration objective before any training, and that is
a weak guide to a plan's accuracy after fine-tuning: on the 197-token benchmark model at 40% of
the dense time, the rank correlation over 13 plans between that objective and the fine-tuned
test top-1 is +0.21, and between the top-1 after 40 steps of distillation and the fine-tuned one
+0.84 (docs/ft_proxy.md). So the choice distils a few candidates briefly and keeps the one that
recovers best: the search's :data:`CHOICE_TOP` best trials and its anchors (the uniform plans),
each pruned, distilled from the dense model for ``choice_steps`` steps (the fine-tuning recipe)
and measured on calibration images the search did not use. The candidates' results go to
``choice.json`` in the search directory as each finishes, so a resumed search continues them.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import dist, fsutil
from .adapters import vit_shape
from .config import SearchSettings
from .data import Splits
from .data.base import image_range
from .errors import ConfigError, require
from .plan import PrunePlan
from .search.result import SearchResult
from .search.trials import Trial
from .train import FINETUNE, fit

CHOICE_TOP = 5  # the best trials distilled (with the anchors)
CHOICE_IMAGES = 1000  # calibration images the candidates are measured on, after the search's
CHOICE_FILE = "choice.json"


def check_choice(model: torch.nn.Module, splits: Splits, settings: SearchSettings) -> None:
    """Before any work: the distilled choice needs a classifier, one process, and calibration
    images beyond those the search evaluates on."""
    if settings.choice != "distilled":
        return
    if not vit_shape(model).num_classes:
        raise ConfigError("--choice distilled measures top-1, and this model has no classifier: "
                          "use --choice best for a backbone")
    if dist.world() > 1:
        raise ConfigError("--choice distilled runs in one process: run the search without "
                          "torchrun, or use --choice best")
    require(len(splits.calib) > settings.calib_images, "calib_images",
            f"leaves no calibration images for --choice distilled: the calibration split holds "
            f"{len(splits.calib)} and the search evaluates on {settings.calib_images}; lower "
            "--calib-images or give a larger calibration split")


def candidates(result: SearchResult) -> list[Trial]:
    """The trials the choice distils: the :data:`CHOICE_TOP` best, then every anchor, one per
    distinct plan."""
    best = sorted(result.trials, key=lambda t: -t.value)[:CHOICE_TOP]  # stable: first of equals
    out, seen = [], set()
    for t in best + [t for t in result.trials if t.source == "anchor"]:
        key = json.dumps(result.space.plan(np.array(t.ratios)).to_dict(), sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def choose_distilled(model: torch.nn.Module, splits: Splits, result: SearchResult,
                     settings: SearchSettings, out: Path, *, seed: int = 0, resume: bool = False,
                     measure: Callable[[PrunePlan], float] | None = None,
                     target: float | None = None, miss: float = 0.05) -> SearchResult:
    """``result`` with its plan replaced by the candidate that distils best (see the module's
    text); ``choice.json`` records every candidate. ``model`` is the dense model (the teacher).

    Under a latency budget the search checks by timing (``measure``: a plan's measured time as
    a fraction of the dense model's, ``target`` the fraction asked), a candidate is distilled
    only where its measured time is within ``miss`` of the target, as the search's own plan's
    is: the choice must not trade the asked speed for accuracy. The search's plan is always a
    candidate."""
    from .search.report import write_outputs
    from .surgery import prune

    lo = settings.calib_images
    hi = min(len(splits.calib), lo + CHOICE_IMAGES)
    # each candidate's epoch ends measured on them
    unseen = dataclasses.replace(splits, calib=image_range(splits.calib, lo, hi))
    cfg = dataclasses.replace(FINETUNE, epochs=1, max_steps_per_epoch=settings.choice_steps,
                              seed=seed)
    record_path = out / CHOICE_FILE
    done: dict[int, dict[str, Any]] = {}
    settings_key = {"steps": settings.choice_steps, "images": [lo, hi]}
    if resume and record_path.exists():
        old = json.loads(record_path.read_text())
        if {k: old.get(k) for k in settings_key} == settings_key:
            done = {c["trial"]: c for c in old["candidates"]}
    rows = []
    for t in candidates(result):
        row = done.get(t.trial, {"trial": t.trial, "source": t.source, "value": t.value})
        plan = result.space.plan(np.array(t.ratios))
        if measure is not None and "measured_fraction" not in row:
            row["measured_fraction"] = measure(plan)
        held = (measure is None or t.trial == result.best.trial
                or abs(row["measured_fraction"] / target - 1) <= miss)
        row["held"] = held
        if held and "distilled_top1" not in row:
            student = prune(model, plan)
            with tempfile.TemporaryDirectory() as tmp:
                record = fit(student, unseen, cfg, tmp, teacher=model, progress=False)[-1]
            row["distilled_top1"] = record.calib_top1
        rows.append(row)
        done[t.trial] = row
        fsutil.write_json(record_path, {**settings_key, "candidates": rows, "chosen": None})
    pick = max((r for r in rows if r["held"]),  # the first of equals
               key=lambda r: r["distilled_top1"])
    chosen = next(t for t in result.trials if t.trial == pick["trial"])
    fsutil.write_json(record_path, {**settings_key, "candidates": rows, "chosen": chosen.trial})
    result = dataclasses.replace(result, best=chosen,
                                 best_plan=result.space.plan(np.array(chosen.ratios)))
    write_outputs(result, out)
    return result
