"""Datasets as splits: train, calibration (carved from train, for scoring and search), test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .augment import random_flip, random_shift

# (seed, epoch, rank) -> one torch seed; the strides are primes, so distinct triples give distinct
# seeds for any realistic number of epochs and processes
SEED_STRIDE, RANK_STRIDE = 100_003, 7_919


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The torch seed of ``epoch`` on process ``rank`` of a run seeded ``seed``."""
    return seed * SEED_STRIDE + epoch + RANK_STRIDE * rank


def _shard(n: int, rank: int, world: int) -> slice:
    """The contiguous part of a batch of ``n`` that ``rank`` of ``world`` takes."""
    per = -(-n // world)
    return slice(min(rank * per, n), min((rank + 1) * per, n))


class TensorImageSet(Dataset):
    """Images held in memory as uint8 ``(N, C, H, W)`` with int64 labels ``(N,)``.

    Samples come out normalised to float32 with the set's per-channel ``mean``/``std``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 mean: tuple[float, ...], std: tuple[float, ...]):
        assert images.dtype == torch.uint8 and images.ndim == 4, "images: uint8 (N, C, H, W)"
        assert labels.shape == (images.shape[0],), "labels: (N,)"
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def normalise(self, images_u8: torch.Tensor) -> torch.Tensor:
        return (images_u8.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.normalise(self.images[i : i + 1])[0], int(self.labels[i])

    def to_rgb(self) -> TensorImageSet:
        """The grey images as three equal channels (as timm's loaders convert grey images);
        a view, no copy of the images."""
        assert self.images.shape[1] == 1, "to_rgb takes one-channel images"
        out = TensorImageSet.__new__(TensorImageSet)
        out.images = self.images.expand(-1, 3, -1, -1)
        out.labels, out.mean, out.std = self.labels, self.mean.expand(1, 3, 1, 1), \
            self.std.expand(1, 3, 1, 1)
        return out

    def subset(self, idx: torch.Tensor) -> TensorImageSet:
        out = TensorImageSet.__new__(TensorImageSet)
        out.images, out.labels, out.mean, out.std = self.images[idx], self.labels[idx], self.mean, self.std
        return out


@dataclass
class Splits:
    """The three splits of a dataset and what a model needs to know about its images."""

    train: Dataset
    calib: Dataset
    test: Dataset
    num_classes: int
    in_chans: int
    img_size: int | tuple[int, int]  # an int: square
    name: str
    workers: int = 0  # loader worker processes for sets read from disk (in-memory sets: none)
    # how the model wants its images (ImageFolder sets: the training transform is built from it)
    data_config: dict | None = None


class _TensorBatches:
    """Fast batches over a :class:`TensorImageSet`: one indexing op per batch, no collation."""

    def __init__(self, ds: TensorImageSet, batch_size: int, shuffle: bool, seed: int,
                 augment: bool, drop_last: bool, rank: int = 0, world: int = 1):
        self.ds, self.bs, self.shuffle, self.seed = ds, batch_size, shuffle, seed
        self.augment, self.drop_last = augment, drop_last
        self.rank, self.world, self.epoch = rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        """Make the order (and augmentation) of the next pass a function of (seed, epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        n = len(self.ds)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        for b in range(len(self)):
            idx = order[b * self.bs : (b + 1) * self.bs]
            x = self.ds.normalise(self.ds.images[idx])  # (B, C, H, W) float32
            if self.augment:  # the whole global batch: the random draws match a 1-process run
                x = random_flip(random_shift(x, pad=2, generator=gen), generator=gen)
            part = _shard(len(idx), self.rank, self.world)
            if part.stop > part.start:
                yield x[part], self.ds.labels[idx[part]]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s random augmentation in ``epoch`` of a run seeded ``seed``."""
    return (epoch_seed(seed, epoch) * SEED_STRIDE + index) % (2**63)


class _Seeded(Dataset):
    """``ds[i]`` with every random number generator an augmentation may use (torch, numpy,
    ``random``: timm's RandAugment uses the latter) seeded from (seed, epoch, i).

    The augmentation of a sample is then the same whichever worker process draws it and however
    many there are, which keeps a resumed run exact with persistent worker processes.
    """

    def __init__(self, ds: Dataset, seed: int):
        self.ds, self.seed = ds, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]):
        import random

        import numpy as np

        i, epoch = key
        s = sample_seed(self.seed, epoch, i)
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % (2**32))
        return self.ds[i]


class _EpochBatches:
    """Batch sampler: each global batch's ``(index, epoch)`` keys, cut to this rank's part; the
    order is a function of (seed, epoch) (a distributed batch sampler with ``set_epoch``)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool,
                 rank: int, world: int):
        self.n, self.bs, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, \
            drop_last
        self.rank, self.world, self.epoch = rank, world, 0

    def __len__(self) -> int:
        return self.n // self.bs if self.drop_last else -(-self.n // self.bs)

    def __iter__(self):
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = (torch.randperm(self.n, generator=gen) if self.shuffle
                 else torch.arange(self.n)).tolist()
        for b in range(len(self)):
            idx = order[b * self.bs : (b + 1) * self.bs]
            part = idx[_shard(len(idx), self.rank, self.world)]
            if part:
                yield [(i, self.epoch) for i in part]


class _EpochLoader:
    """A torch DataLoader over a generic dataset (an ImageFolder tree) whose batches and random
    augmentation are functions of (seed, epoch), with worker processes that stay alive between
    epochs, pinned memory on CUDA machines and prefetching."""

    def __init__(self, ds: Dataset, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool, num_workers: int, rank: int = 0, world: int = 1):
        self.sampler = _EpochBatches(len(ds), batch_size, shuffle, seed, drop_last, rank, world)
        extra = {"persistent_workers": True, "prefetch_factor": PREFETCH} if num_workers else {}
        self.loader = DataLoader(_Seeded(ds, seed), batch_sampler=self.sampler,
                                 num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                                 **extra)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return iter(self.loader)


# batches each worker process prepares ahead
PREFETCH = 4


def default_workers(world: int = 1) -> int:
    """Loader worker processes per training process: the CPU cores shared among the processes
    on this machine, at most 8 each (JPEG decoding and augmentation scale to about that)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cores or 1) // max(1, world) - 1))


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False, drop_last: bool = False, num_workers: int = 0,
                rank: int = 0, world: int = 1):
    """Batches of ``(images (B, C, H, W) float32, labels (B,) int64)``.

    The returned loader has ``set_epoch(e)``: with the same seed and epoch, the same batches come
    out, which is what makes an interrupted and resumed training run reproduce an uninterrupted one.
    Augmentation (random 2-pixel shifts and horizontal flips) applies to in-memory sets only.

    With ``world > 1`` (torchrun), ``batch_size`` is the global batch: rank ``r`` gets the
    ``r``-th contiguous part of each one, so the ranks together see exactly the batches that a
    single process would.
    """
    if world > 1 and drop_last and batch_size % world:
        raise DataError(f"batch size {batch_size} does not split evenly over {world} processes")
    if isinstance(ds, TensorImageSet):
        return _TensorBatches(ds, batch_size, shuffle, seed, augment, drop_last, rank, world)
    return _EpochLoader(ds, batch_size, shuffle, seed, drop_last, num_workers, rank, world)


def image_range(ds: Dataset, lo: int, hi: int) -> Dataset:
    """Images ``lo`` to ``hi - 1`` of ``ds`` (an in-memory set stays one, indexed at once)."""
    if isinstance(ds, TensorImageSet):
        return ds.subset(torch.arange(lo, hi))
    return torch.utils.data.Subset(ds, list(range(lo, hi)))


def carve(n: int, calib_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train ids, calibration ids), deterministically for a seed."""
    if not 0 < calib_size < n:
        raise DataError(f"calibration size {calib_size} must be between 1 and {n - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[calib_size:].sort().values, perm[:calib_size].sort().values
