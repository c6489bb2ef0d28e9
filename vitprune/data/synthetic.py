"""A small learnable synthetic image dataset for tests: each class is a noisy fixed template."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Splits, TensorImageSet


def make_set(n: int, num_classes: int, img_size: int, in_chans: int, seed: int,
             noise: float = 0.2) -> TensorImageSet:
    """``n`` uint8 images; class ``c`` is template ``c`` (fixed by ``seed``) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    # Smooth, left-right symmetric templates: like real images they survive small shifts and
    # flips, so the training augmentation does not destroy the class signal.
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=torch.Generator().manual_seed(12345))
    templates = F.interpolate(coarse, size=(img_size, img_size), mode="bilinear", align_corners=False)
    templates = 0.5 * (templates + templates.flip(-1))
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    x = templates[labels] + noise * torch.randn(n, in_chans, img_size, img_size, generator=gen)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorImageSet(images, labels, (0.5,) * in_chans, (0.25,) * in_chans)


def load(n_train: int = 512, n_calib: int = 128, n_test: int = 256, num_classes: int = 10,
         img_size: int = 28, in_chans: int = 1, seed: int = 0) -> Splits:
    """Disjoint synthetic train / calibration / test splits (different noise seeds)."""
    mk = lambda n, s: make_set(n, num_classes, img_size, in_chans, seed * 3 + s)  # noqa: E731
    return Splits(mk(n_train, 0), mk(n_calib, 1), mk(n_test, 2), num_classes=num_classes,
                  in_chans=in_chans, img_size=img_size, name="synthetic")
