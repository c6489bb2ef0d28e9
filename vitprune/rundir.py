"""Run directories: output file names, ownership, the lock and what "stage done" means.

Every output file name is a constant written once (a test keeps it so): the stage outputs here,
the search's and the training's files in the layers that write them, re-exported here, so that
the commands and the benchmarks name every file through this module.

Every command that writes a directory claims it first (:meth:`RunDir.claim`):

- **ownership**: the directory must be new, empty, or hold a run of the same command with the
  same settings (recorded in ``run.json``); anything else is refused and left untouched;
- **inputs**: a run never writes into, over, or around one of its own inputs;
- **one writer**: an exclusive ``flock`` on the directory, which the OS releases when the
  process ends, however it ends, so a killed run resumes and a second writer is refused;
- **stages**: a stage's output is written atomically, then the stage is recorded as done in
  ``run.json``; a stage recorded as done is loaded instead of run again (:meth:`RunDir.stage`;
  a command's typed stages are its own, e.g. compress's in :mod:`vitprune.compression`).

Under torchrun, rank 0 claims, locks and writes; the other ranks compute alongside it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import dist, fsutil
from .errors import OutputError, VitpruneError
from .io.model_dir import CONFIG as MODEL_CONFIG
from .report import REPORT

# named by the layers that write them; re-exported so that callers name them through here
from .search.report import BEST_PLAN as BEST_PLAN
from .search.report import SUMMARY as SUMMARY
from .search.trials import TRIALS as TRIALS
from .train.loop import CKPT as CKPT
from .train.loop import LOG as LOG
from .version import __version__

FORMAT = "vitprune.run"
VERSION = 1
MANIFEST = "run.json"
LEGACY_COMPRESS = "compress.json"  # a compress run made before run.json existed

# the outputs of compress's stages, by stage (the report's name is the report's, the search's
# and fine-tuning's files are named by the layers that write them, re-exported here)
SCORES, SEARCH, PLAN, FINETUNE, MODEL, METRICS = (
    "scores.json", "search", "plan.json", "finetune", "model", "eval.json")

T = TypeVar("T")


class RunDir:
    """A claimed run directory; use as a context manager, or call :meth:`release`."""

    def __init__(self, path: Path, kind: str, record: dict[str, Any], fd: int | None):
        self.path, self.kind, self._record, self._fd = path, kind, record, fd

    # -- claiming --------------------------------------------------------------------------
    @classmethod
    def claim(cls, out: str | Path, kind: str, settings: dict[str, Any], *,
              inputs: Iterable[str | Path | None] = (), resume: bool | None = None,
              defaults: dict[str, Any] | None = None, info: dict[str, Any] | None = None
              ) -> RunDir:
        """Make ``out`` this run's directory, or refuse (nothing is changed).

        Args:
            kind: the command (``train``, ``compress`` ...).
            settings: what makes the run what it is; a re-run must match (JSON-ready).
            inputs: paths the run reads; ``out`` may not be one, hold one, or lie inside one.
            resume: True: continue a run in ``out`` (a new one if there is none); False: ``out``
                may not hold a run yet; None: continue a matching run, start one otherwise.
            defaults: values of settings added after older runs were made: a setting missing
                from a recorded run is taken at its default there, not as a difference.
            info: recorded beside the settings, never compared (paths that may move).
        Raises:
            OutputError: see above; also when another process holds the directory.
        """
        out = Path(out)
        settings = json.loads(json.dumps(settings))
        if dist.is_main():
            try:
                run: RunDir | VitpruneError = cls._claim(out, kind, settings, inputs, resume,
                                                         defaults or {}, info or {})
            except VitpruneError as exc:
                run = exc
            shared = dist.broadcast(None if isinstance(run, RunDir) else run)
        else:
            run = shared = dist.broadcast(None)
        if isinstance(shared, VitpruneError):
            if isinstance(run, RunDir):
                run.release()
            raise shared
        if not dist.is_main():
            run = cls(out, kind, _read_manifest(out) or {}, None)
        return run

    @classmethod
    def _claim(cls, out: Path, kind: str, settings: dict, inputs: Iterable, resume: bool | None,
               defaults: dict, info: dict) -> RunDir:
        check_inputs(out, [Path(p) for p in inputs if p is not None])
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} is a file; choose a directory path (new or empty)")
        existed = out.exists()
        fsutil.make_dir(out)
        fd = _lock(out)
        try:
            record = _read_manifest(out)
            if record is None:
                if existed and any(p.name != MANIFEST for p in out.iterdir()):
                    raise OutputError(
                        f"{out} is not empty and was not made by a vitprune {kind} run; choose an "
                        "empty or new --out. Nothing was changed.")
                record = {"format": FORMAT, "version": VERSION, "kind": kind,
                          "settings": settings, "done": [], "info": info,
                          "vitprune": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
                fsutil.write_json(out / MANIFEST, record)
            else:
                _check_same(out, record, kind, settings, defaults, resume)
            _remove_temporaries(out)
            return cls(out, kind, record, fd)
        except BaseException:
            os.close(fd)
            raise

    def release(self) -> None:
        """Give up the lock (also done by the OS when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- stages ----------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        """Whether ``stage`` finished in this directory (in this run or an earlier one)."""
        return stage in self._record.get("done", [])

    def mark_done(self, stage: str) -> None:
        """Record ``stage`` as finished (after its output was written atomically)."""
        if not self.done(stage):
            self._record = {**self._record, "done": [*self._record.get("done", []), stage]}
            if dist.is_main():
                fsutil.write_json(self.path / MANIFEST, self._record)

    def stage(self, name: str, compute: Callable[[], T], write: Callable[[T], None],
              read: Callable[[], T]) -> T:
        """``compute()``'s value, written by ``write`` (rank 0) and recorded as done; or, when
        the stage is done already, ``read()``'s."""
        if self.done(name):
            try:
                return read()
            except (OSError, ValueError, VitpruneError) as exc:  # its output removed or damaged
                if dist.is_main():
                    print(f"[{self.kind}] the output of the finished stage {name!r} in "
                          f"{self.path} is missing or unreadable ({fsutil.first_line(exc)}); "
                          "computing it again", file=sys.stderr, flush=True)
                self._record = {**self._record,
                                "done": [d for d in self._record["done"] if d != name]}
        value = compute()
        if dist.is_main():
            write(value)
        self.mark_done(name)
        dist.barrier()
        return value

    def file(self, *names: str) -> Path:
        """The path of output ``names`` (this module's constants: ``file(SEARCH, TRIALS)``)."""
        return self.path.joinpath(*names)


@dataclass(frozen=True)
class RunState:
    """A run directory's manifest (``run.json``), read without claiming the directory.

    Attributes:
        kind: the command that made it (``compress``, ``train`` ...).
        settings: what makes the run what it is.
        done: its finished stages, in order.
        info: what was recorded beside the settings (paths that may move).
    """

    kind: str
    settings: dict[str, Any]
    done: tuple[str, ...]
    info: dict[str, Any]


def read_state(out: str | Path) -> RunState | None:
    """The run in ``out`` (None: no vitprune run is there yet). Never locks or changes it.

    Raises:
        OutputError: its manifest is damaged or from a newer vitprune.
    """
    out = Path(out)
    record = _read_manifest(out) if out.is_dir() else None
    if record is None:
        return None
    return RunState(kind=record.get("kind", ""), settings=record.get("settings", {}),
                    done=tuple(record.get("done", [])), info=record.get("info", {}))


def _remove_temporaries(out: Path) -> None:
    """Delete the partial files of a writer that died mid-write (``kill -9``): the caller holds
    the directory's lock, so no live writer owns them."""
    for tmp in out.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()


def check_inputs(out: Path, inputs: Sequence[Path]) -> None:
    """Refuse an ``out`` that is, holds or lies inside one of ``inputs`` (the existing ones)."""
    o = out.resolve()
    for p in inputs:
        if not p.exists():
            continue
        i = p.resolve()
        if o == i or o in i.parents or i in o.parents:
            how = ("is" if o == i else "holds" if o in i.parents else "lies inside")
            raise OutputError(f"--out {out} {how} the input {p}: a run never writes over, "
                              "around or into its own input. Choose another --out. Nothing "
                              "was changed.")


def _lock(out: Path) -> int:
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise OutputError(f"another vitprune process is writing to {out}; wait for it to "
                              "finish (or stop it), or choose another --out") from None
        raise fsutil.unwritable(out, exc) from exc
    return fd


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return _legacy_compress(out)
    return fsutil.read_record(path, FORMAT, VERSION,
                              lambda why: OutputError(f"{why}; choose another --out"))


def _legacy_compress(out: Path) -> dict | None:
    """A compress run directory made before ``run.json``: its manifest, its finished stages
    read from which outputs exist (as that version decided them)."""
    path = out / LEGACY_COMPRESS
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
        settings = {"model": old["model"], "data": old["data"], **old["config"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise OutputError(f"{path} is damaged ({exc}); choose another --out") from exc
    done = []  # the stages before the first missing output (later ones are run again)
    for stage, output in (("scores", SCORES), ("search", "search/search.json"),
                          ("finetune", f"{MODEL}/{MODEL_CONFIG}"), ("evaluate", METRICS),
                          ("report", REPORT)):
        if not (out / output).exists():
            break
        done.append(stage)
    if "search" in done:  # that version kept the plan in the search's own files
        from .search.report import read_outputs

        plan, summary = read_outputs(out / SEARCH)
        fsutil.write_json(out / PLAN, {"plan": plan.to_dict(), "search": summary.to_dict()})
    return {"format": FORMAT, "version": VERSION, "kind": "compress", "settings": settings,
            "done": done, "info": old.get("info", {}), "legacy": LEGACY_COMPRESS}


def _with_defaults(recorded: dict, defaults: dict) -> dict:
    """``recorded`` with the ``defaults`` of settings it does not hold, nested objects merged
    key by key (a training config recorded before a field was added takes its default)."""
    out = dict(defaults)
    for k, v in recorded.items():
        out[k] = (_with_defaults(v, out[k]) if isinstance(v, dict) and isinstance(out.get(k), dict)
                  else v)
    return out


def _check_same(out: Path, record: dict, kind: str, settings: dict, defaults: dict,
                resume: bool | None) -> None:
    if record.get("kind") != kind:
        raise OutputError(f"{out} holds a vitprune {record.get('kind')} run, not a {kind} run; "
                          "choose another --out. Nothing was changed.")
    prior = _with_defaults(record.get("settings", {}), defaults)
    diff = sorted(k for k in set(prior) | set(settings) if prior.get(k) != settings.get(k))
    if diff:
        raise OutputError(
            f"{out} holds another {kind} run (differs in: {', '.join(diff)}). Re-run with that "
            "run's settings to continue it, or choose another --out. Nothing was changed.")
    if resume is False:
        raise OutputError(f"{out} already holds this {kind} run; continue it with --resume "
                          "(resume=True in Python), or choose another --out. Nothing was changed.")
