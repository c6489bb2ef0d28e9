"""Tests of Fashion-MNIST (vitprune/data/fashion_mnist.py): reading, errors, the calibration carve."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import fake_fmnist, write_idx
from vitprune.data import fashion_mnist, load_splits, make_loader
from vitprune.errors import DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")


needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def test_missing_files_say_how_to_get_them(tmp_path):
    fake_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        fashion_mnist.load(tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "--data-dir" in str(err.value)


def test_user_directory_is_loaded(tmp_path):
    fake_fmnist(tmp_path, n_train=100, n_test=40)
    s = fashion_mnist.load(tmp_path, calib_size=20)
    assert (len(s.train), len(s.calib), len(s.test)) == (80, 20, 40)


@needs_fmnist
def test_fashion_mnist_shapes_and_labels():
    s = load_splits("fashion-mnist")
    assert (len(s.train), len(s.calib), len(s.test)) == (55000, 5000, 10000)
    assert (s.num_classes, s.in_chans, s.img_size) == (10, 1, 28)
    x, y = next(iter(make_loader(s.test, 64)))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    for part in (s.train, s.calib, s.test):
        assert int(part.labels.min()) == 0 and int(part.labels.max()) == 9
    # every class is present in the calibration split, in roughly equal shares
    counts = torch.bincount(s.calib.labels, minlength=10)
    assert counts.min() > 350 and counts.max() < 650


def test_calibration_never_overlaps_test(tmp_path):
    # make every image unique so overlap can be checked by content
    n_train, n_test = 100, 40
    imgs = np.zeros((n_train + n_test, 28, 28), dtype=np.uint8)
    imgs.reshape(len(imgs), -1)[:, :2] = np.stack(np.divmod(np.arange(len(imgs)), 256), 1)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs[:n_train])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[n_train:])
    for part, n in (("train", n_train), ("t10k", n_test)):
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", np.zeros(n, dtype=np.uint8))
    s = fashion_mnist.load(tmp_path, calib_size=30)
    key = lambda ds: {bytes(im.numpy().tobytes()) for im in ds.images}  # noqa: E731
    assert not key(s.calib) & key(s.test)
    assert not key(s.calib) & key(s.train)
    assert len(key(s.calib) | key(s.train)) == n_train
