"""Atomic writes: errors of the file system become OutputErrors that say what to do."""

import errno
import os

import pytest

from vitprune import fsutil
from vitprune.errors import OutputError


def test_a_full_disk_is_an_output_error_and_leaves_the_old_file(tmp_path, monkeypatch):
    dest = tmp_path / "a.json"
    fsutil.write_json(dest, {"v": 1})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match="disk is full"):
        fsutil.write_json(dest, {"v": 2})
    assert dest.read_text().strip().endswith("}") and '"v": 1' in dest.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left


def test_a_path_under_a_file_is_an_output_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="a file of that name exists|is a file"):
        fsutil.write_json(tmp_path / "f" / "sub" / "a.json", {})
    assert (tmp_path / "f").read_text() == "x"


def test_a_read_only_file_system_is_an_output_error(tmp_path, monkeypatch):
    def ro(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", ro)
    with pytest.raises(OutputError, match="read-only"):
        fsutil.write_text(tmp_path / "a.txt", "x")


def test_exclusive_write_never_replaces_a_file(tmp_path):
    dest = tmp_path / "scores.json"
    fsutil.atomic_write(dest, lambda p: p.write_text("first"), exclusive=True)
    with pytest.raises(OutputError, match="exists"):
        fsutil.atomic_write(dest, lambda p: p.write_text("second"), exclusive=True)
    assert dest.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


def test_check_writable_finds_a_file_in_the_path_before_anything_is_made(tmp_path):
    from vitprune.fsutil import check_writable

    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="a part of the path is a file"):
        check_writable(tmp_path / "f" / "sub" / "out.onnx")
    check_writable(tmp_path / "new" / "deeper" / "out.onnx")  # makeable: no error
    assert not (tmp_path / "new").exists()  # and nothing was created
