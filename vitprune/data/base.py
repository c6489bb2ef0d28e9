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
    img_size: int
    name: str


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


class _EpochLoader:
    """A torch DataLoader whose shuffling is a function of (seed, epoch), for generic datasets."""

    def __init__(self, ds: Dataset, batch_size: int, shuffle: bool, seed: int,
                 drop_last: bool, num_workers: int, rank: int = 0, world: int = 1):
        self.ds, self.bs, self.shuffle, self.seed = ds, batch_size, shuffle, seed
        self.drop_last, self.num_workers, self.epoch = drop_last, num_workers, 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.ds)
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def _batches(self) -> list[list[int]]:
        """Each global batch's indices, cut to this rank's part (a distributed batch sampler)."""
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        n = len(self.ds)
        order = (torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)).tolist()
        out = []
        for b in range(len(self)):
            idx = order[b * self.bs : (b + 1) * self.bs]
            part = idx[_shard(len(idx), self.rank, self.world)]
            if part:
                out.append(part)
        return out

    def __iter__(self):
        return iter(DataLoader(self.ds, batch_sampler=self._batches(), num_workers=self.num_workers))


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


def carve(n: int, calib_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into (train ids, calibration ids), deterministically for a seed."""
    if not 0 < calib_size < n:
        raise DataError(f"calibration size {calib_size} must be between 1 and {n - 1}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[calib_size:].sort().values, perm[:calib_size].sort().values
