"""Atomic file writes: an interrupted run never leaves a half-written file behind.

Each writer writes to a temporary file in the destination directory, flushes it to disk and
renames it over the destination (an atomic operation on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _default_mode()


@contextlib.contextmanager
def _atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _MODE)  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write(dest: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``dest`` only if it succeeded."""
    with _atomic_path(dest) as tmp:
        writer(tmp)


def write_text(dest: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``dest`` atomically."""
    atomic_write(dest, lambda p: p.write_text(text))


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``dest`` atomically."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(dest: str | os.PathLike, record: dict) -> None:
    """Append one JSON line; the whole file is rewritten atomically so no torn line survives."""
    dest = Path(dest)
    old = dest.read_text() if dest.exists() else ""
    write_text(dest, old + json.dumps(record) + "\n")


def torch_save(dest: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (tensors and plain containers only; loaded with weights_only)."""
    atomic_write(dest, lambda p: torch.save(obj, p))
