"""Datasets: Fashion-MNIST, ImageFolder trees and a synthetic set, as train/calib/test splits."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError
from . import fashion_mnist, imagefolder, synthetic
from .base import Splits, TensorImageSet, default_workers, make_loader

DATASETS = ("fashion-mnist", "imagefolder", "synthetic")


def load_splits(name: str, data_dir: str | Path | None = None, *, calib_size: int | None = None,
                img_size: int | tuple[int, int] = 224, seed: int = 0, data_config: dict | None = None,
                workers: int | None = None) -> Splits:
    """Load a dataset by name as deterministic train / calibration / test splits.

    Args:
        name: ``fashion-mnist``, ``imagefolder`` or ``synthetic``.
        data_dir: where the files are (Fashion-MNIST: defaults to the Debian package's location;
            ImageFolder: required).
        calib_size: images carved from train for scoring and search (default 5000 / 1000 / 128).
        img_size: input size for ImageFolder images: an int (square) or (height, width).
        seed: seed of the train/calibration carve.
        data_config: the model's preprocessing for ImageFolder images (see
            ``vitprune.data.imagefolder.load``); the in-memory datasets have their own.
        workers: loader worker processes for ImageFolder data (None: :func:`default_workers`
            for this machine's processes); in-memory sets need none.
    """
    if name == "fashion-mnist":
        return fashion_mnist.load(data_dir, calib_size=calib_size or 5000, seed=seed)
    if name == "imagefolder":
        if data_dir is None:
            raise DataError("--data imagefolder needs --data-dir pointing at a train/ + val/ tree")
        splits = imagefolder.load(data_dir, img_size=img_size, calib_size=calib_size or 1000,
                                  seed=seed, data_config=data_config)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # processes on this machine
        splits.workers = default_workers(local) if workers is None else workers
        return splits
    if name == "synthetic":
        return synthetic.load(n_calib=calib_size or 128, seed=seed)
    raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")


def training_set(splits: Splits, *, augment: bool, rand_augment: str = "",
                 random_erasing: float = 0.0):
    """The training split as a training run reads it: for ImageFolder data with ``augment``,
    through timm's training transform (see :func:`vitprune.data.imagefolder.training_view`);
    otherwise as it is (in-memory sets are augmented by their loader)."""
    if augment and splits.data_config is not None and not isinstance(splits.train, TensorImageSet):
        return imagefolder.training_view(splits.train, splits.data_config,
                                         rand_augment=rand_augment, random_erasing=random_erasing)
    return splits.train


__all__ = ["DATASETS", "Splits", "TensorImageSet", "load_splits", "make_loader", "training_set"]
