"""Tests of splits, the calibration carve and loaders (vitprune/data/base.py)."""


import pytest
import torch

from vitprune.data import load_splits, make_loader
from vitprune.data.base import carve
from vitprune.errors import DataError


def test_carve_is_disjoint_complete_and_deterministic():
    tr, ca = carve(1000, 100, seed=3)
    assert len(set(tr.tolist()) & set(ca.tolist())) == 0
    assert sorted(tr.tolist() + ca.tolist()) == list(range(1000))
    tr2, ca2 = carve(1000, 100, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(ca, ca2)
    _, ca3 = carve(1000, 100, seed=4)
    assert not torch.equal(ca, ca3)


def test_loader_order_is_a_function_of_seed_and_epoch(synth_splits):
    def first_labels(seed, epoch):
        ld = make_loader(synth_splits.train, 32, shuffle=True, seed=seed, augment=True)
        ld.set_epoch(epoch)
        x, y = next(iter(ld))
        return x, y

    a, b = first_labels(0, 1), first_labels(0, 1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = first_labels(0, 2)
    assert not torch.equal(a[0], c[0])


def test_unshuffled_loader_covers_every_sample_once(synth_splits):
    ys = torch.cat([y for _, y in make_loader(synth_splits.test, 50)])
    assert torch.equal(ys, synth_splits.test.labels)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown dataset"):
        load_splits("mnist-ish")
