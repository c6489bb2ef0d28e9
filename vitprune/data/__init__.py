"""Datasets: Fashion-MNIST, ImageFolder trees and a synthetic set, as train/calib/test splits."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from . import fashion_mnist, imagefolder, synthetic
from .base import Splits, TensorImageSet, make_loader

DATASETS = ("fashion-mnist", "imagefolder", "synthetic")


def load_splits(name: str, data_dir: str | Path | None = None, *, calib_size: int | None = None,
                img_size: int = 224, seed: int = 0, data_config: dict | None = None) -> Splits:
    """Load a dataset by name as deterministic train / calibration / test splits.

    Args:
        name: ``fashion-mnist``, ``imagefolder`` or ``synthetic``.
        data_dir: where the files are (Fashion-MNIST: defaults to the Debian package's location;
            ImageFolder: required).
        calib_size: images carved from train for scoring and search (default 5000 / 1000 / 128).
        img_size: resize target for ImageFolder images.
        seed: seed of the train/calibration carve.
        data_config: the model's preprocessing for ImageFolder images (see
            ``vitprune.data.imagefolder.load``); the in-memory datasets have their own.
    """
    if name == "fashion-mnist":
        return fashion_mnist.load(data_dir, calib_size=calib_size or 5000, seed=seed)
    if name == "imagefolder":
        if data_dir is None:
            raise DataError("--data imagefolder needs --data-dir pointing at a train/ + val/ tree")
        return imagefolder.load(data_dir, img_size=img_size, calib_size=calib_size or 1000,
                                seed=seed, data_config=data_config)
    if name == "synthetic":
        return synthetic.load(n_calib=calib_size or 128, seed=seed)
    raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "Splits", "TensorImageSet", "load_splits", "make_loader"]
