"""Tests of the IDX reader (vitprune/data/idx.py)."""


import numpy as np
import pytest
import torch

from tests.helpers import fake_fmnist, write_idx
from vitprune.data import fashion_mnist
from vitprune.data.idx import read_idx
from vitprune.errors import DataError


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    write_idx(tmp_path / "b", arr, gz=False)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(arr))
    assert torch.equal(read_idx(tmp_path / "b"), torch.from_numpy(arr))


def test_truncated_gz_is_a_clear_error(tmp_path):
    fake_fmnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        fashion_mnist.load(tmp_path, calib_size=10)


def test_idx_with_missing_bytes_is_a_clear_error(tmp_path):
    arr = np.zeros((5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "x", arr, gz=False)
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "x")
