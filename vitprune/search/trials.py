"""The trials file: one JSON line per evaluation, appended atomically, read back to resume.

Every line is a whole JSON object: :func:`vitprune.fsutil.append_jsonl` rewrites the file through
a temporary file and a rename, so a run killed mid-write leaves the previous file intact.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import fsutil
from ..errors import OutputError, SearchError

# fields that measure the machine, not the search: a resumed run matches all the others
#: the trials file a search appends each evaluation to
TRIALS = "trials.jsonl"

TIMING_FIELDS = ("wall_s", "propose_s")


@dataclass(frozen=True)
class Trial:
    """One evaluation of the objective.

    Attributes:
        trial: index, from 0.
        method: the search method (``gp-ei``, ``random``, ``uniform``).
        source: how the point was proposed: ``init`` (random, before the GP), ``anchor`` (a
            uniform plan, before the GP), ``ei``, ``random`` or ``uniform``.
        seed: the search's seed.
        ratios: the point, ``[heads..., neurons..., tokens]`` (2L + 1 prune ratios).
        macs: MACs per image of its integer architecture.
        macs_fraction: ``macs`` over the dense model's.
        value: the objective (higher is better).
        wall_s: seconds the objective took.
        propose_s: seconds spent proposing the point (GP fit and acquisition).
        run: fingerprint of the search configuration that wrote it.
        latency_ms: predicted ms per batch (a search under a latency table), else None.
    """

    trial: int
    method: str
    source: str
    seed: int
    ratios: tuple[float, ...]
    macs: int
    macs_fraction: float
    value: float
    wall_s: float
    propose_s: float
    run: str
    latency_ms: float | None = None

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict (floats round-trip exactly through JSON)."""
        d = asdict(self)
        d["ratios"] = list(self.ratios)
        if self.latency_ms is None:  # records of MACs searches stay as they were
            del d["latency_ms"]
        return d

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Trial:
        """Parse :meth:`to_record`'s output."""
        return cls(trial=int(d["trial"]), method=str(d["method"]), source=str(d["source"]),
                   seed=int(d["seed"]), ratios=tuple(float(r) for r in d["ratios"]),
                   macs=int(d["macs"]), macs_fraction=float(d["macs_fraction"]),
                   value=float(d["value"]), wall_s=float(d["wall_s"]),
                   propose_s=float(d["propose_s"]), run=str(d["run"]),
                   latency_ms=None if d.get("latency_ms") is None else float(d["latency_ms"]))


def fingerprint(description: dict[str, Any]) -> str:
    """A short hash of a JSON-ready description of the search configuration."""
    text = json.dumps(description, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def append_trial(path: str | Path, trial: Trial) -> None:
    """Append ``trial`` to the trials file at ``path`` atomically."""
    if not math.isfinite(trial.value):
        raise SearchError(f"trial {trial.trial} has a non-finite value {trial.value!r}; the "
                          "objective must return a finite number")
    fsutil.append_jsonl(path, trial.to_record())


def read_trials(path: str | Path, run: str | None = None) -> list[Trial]:
    """The trials stored at ``path`` (empty if it does not exist).

    Args:
        run: if given, every trial must carry this fingerprint.
    Raises:
        OutputError: a line is not a trial record, indices are not 0, 1, 2, ..., or a trial
            was written by another search configuration.
    """
    path = Path(path)
    if not path.exists():
        return []
    trials = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            t = Trial.from_record(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise OutputError(f"{path}:{n} is not a trial record ({exc}); the file is not a "
                              "vitprune trials file, or was edited") from exc
        if t.trial != len(trials):
            raise OutputError(f"{path}:{n} holds trial {t.trial}, expected {len(trials)}: trials "
                              "must be consecutive from 0")
        if run is not None and t.run != run:
            raise OutputError(
                f"{path}:{n} was written by another search configuration (fingerprint {t.run}, "
                f"this search {run}: method, seed, budget, space or tuning differ). Resume with "
                "the same settings, or use a new trials path."
            )
        trials.append(t)
    return trials
