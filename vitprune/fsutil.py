"""Atomic file writes: an interrupted run never leaves a half-written file behind.

Each writer writes to a temporary file in the destination directory, flushes it to disk and
renames it over the destination (an atomic operation on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import OutputError


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _default_mode()


def unwritable(path: str | os.PathLike, exc: OSError) -> OutputError:
    """The :class:`OutputError` for an ``OSError`` met while writing ``path``."""
    why = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied",
           errno.ENOTDIR: "a part of the path is a file, not a directory"}.get(
        exc.errno, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {why}. Free space or choose a writable --out; "
                       "files already written are complete (writes are atomic)")


def check_writable(path: str | os.PathLike) -> None:
    """Raise the :class:`OutputError` that writing the new file ``path`` would meet (a file
    where a directory must be, no permission), before any work is done; creates nothing."""
    path = Path(path).absolute()
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise unwritable(path, OSError(errno.ENOTDIR, "not a directory"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise unwritable(path, OSError(errno.EACCES, "permission denied"))


def make_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``, with an :class:`OutputError` that says why it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise OutputError(f"cannot make directory {path}: a file of that name exists; choose "
                          "another --out") from exc
    except OSError as exc:
        raise unwritable(path, exc) from exc
    return path


@contextlib.contextmanager
def _atomic_path(dest: str | os.PathLike, *, exclusive: bool = False) -> Iterator[Path]:
    dest = Path(dest)
    make_dir(dest.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise unwritable(dest, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _MODE)  # mkstemp makes 0600 files; outputs are ordinary files
        if exclusive:  # a hard link fails if dest exists: no writer replaces another's file
            os.link(tmp_path, dest)
        else:
            os.replace(tmp_path, dest)
    except FileExistsError as exc:
        raise OutputError(f"{dest} exists (another process wrote it first); nothing was "
                          "overwritten") from exc
    except OSError as exc:
        raise unwritable(dest, exc) from exc
    except OutputError:
        raise
    except Exception as exc:
        # torch's zip writer ("unexpected pos") and safetensors report a failed write as their
        # own errors, not OSError: on a full disk, say so
        if _nearly_full(tmp_path.parent):
            raise unwritable(dest, OSError(errno.ENOSPC, "no space left")) from exc
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _nearly_full(d: Path) -> bool:
    """Less than 1 MiB left on ``d``'s file system (a write there has just failed)."""
    try:
        return shutil.disk_usage(d).free < (1 << 20)
    except OSError:
        return False


def atomic_write(dest: str | os.PathLike, writer: Callable[[Path], None], *,
                 exclusive: bool = False) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``dest`` only if it succeeded.

    Args:
        exclusive: refuse (:class:`OutputError`) if ``dest`` exists when the result is moved
            there, instead of replacing it.
    Raises:
        OutputError: ``dest`` cannot be written (full disk, read-only, a file in the path).
    """
    with _atomic_path(dest, exclusive=exclusive) as tmp:
        writer(tmp)


def write_text(dest: str | os.PathLike, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``dest`` atomically (``exclusive``: see :func:`atomic_write`)."""
    atomic_write(dest, lambda p: p.write_text(text), exclusive=exclusive)


def write_json(dest: str | os.PathLike, obj: Any, *, exclusive: bool = False) -> None:
    """Write ``obj`` as indented JSON to ``dest`` atomically (``exclusive``: see
    :func:`atomic_write`)."""
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n", exclusive=exclusive)


def append_jsonl(dest: str | os.PathLike, record: dict) -> None:
    """Append one JSON line; the whole file is rewritten atomically so no torn line survives."""
    dest = Path(dest)
    old = dest.read_text() if dest.exists() else ""
    write_text(dest, old + json.dumps(record) + "\n")


def torch_save(dest: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (tensors and plain containers only; loaded with weights_only)."""
    atomic_write(dest, lambda p: torch.save(obj, p))


def read_record(path: str | os.PathLike, fmt: str, version: int,
                error: Callable[[str], Exception]) -> dict:
    """The JSON object at ``path`` whose ``format`` is ``fmt`` and ``version`` at most
    ``version``; anything else raises ``error(reason)`` (a reason says what to do)."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise error(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{path} is not a {fmt} record")
    if not isinstance(record.get("version", 0), int) or record.get("version", 0) > version:
        raise error(f"{path} has format version {record.get('version')!r}, newer than this "
                    "vitprune reads; upgrade vitprune")
    return record


def torch_load(path: str | os.PathLike, error: Callable[[str], Exception]) -> Any:
    """``torch.load(path, weights_only=True)``; a file it cannot read raises ``error(reason)``.

    The reason never repeats torch's own advice to load with ``weights_only=False``: a file that
    holds anything but tensors and plain containers may run code when unpickled, and vitprune
    never does that.
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise error("it holds Python objects other than tensors and plain containers, which "
                        "vitprune never unpickles (unpickling can run code)") from None
        raise error(f"it is truncated or not a torch file ({first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise error(f"it is truncated or not a torch file ({first_line(exc)})") from None


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's contents, read in chunks (what identifies an input by content)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
