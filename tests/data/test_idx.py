"""Tests of the IDX reader (vitprune/data/idx.py)."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vitprune.data import fashion_mnist
from vitprune.data.idx import read_idx
from vitprune.errors import DataError


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _fake_fmnist(d: Path, n_train=100, n_test=40) -> None:
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(d / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(d / f"{part}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    _write_idx(tmp_path / "b", arr, gz=False)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(arr))
    assert torch.equal(read_idx(tmp_path / "b"), torch.from_numpy(arr))


def test_truncated_gz_is_a_clear_error(tmp_path):
    _fake_fmnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        fashion_mnist.load(tmp_path, calib_size=10)


def test_idx_with_missing_bytes_is_a_clear_error(tmp_path):
    arr = np.zeros((5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "x", arr, gz=False)
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "x")
