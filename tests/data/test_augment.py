"""Tests of in-memory augmentation (vitprune/data/augment.py)."""


import torch

from vitprune.data.augment import random_flip, random_shift


def test_random_shift_moves_content_and_flip_mirrors():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 3] = 1.0
    gen = torch.Generator().manual_seed(0)
    shifted = random_shift(x.repeat(64, 1, 1, 1), pad=1, generator=gen)
    assert shifted.shape == (64, 1, 6, 6)
    pos = {tuple(torch.nonzero(s[0])[0].tolist()) for s in shifted}
    assert pos <= {(2 + dy, 3 + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)} and len(pos) > 1
    flipped = random_flip(x.repeat(64, 1, 1, 1), generator=gen, p=1.0)
    assert torch.equal(flipped, x.flip(-1).repeat(64, 1, 1, 1))
