"""Batch augmentations as pure tensor functions (no per-sample Python work)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels in each direction, zero-filling the border.

    Args:
        x: images (B, C, H, W).
        pad: largest shift in pixels.
        generator: source of the per-image offsets.
    Returns:
        shifted images (B, C, H, W).
    """
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    rows = (oy[:, None] + torch.arange(H))[:, :, None]  # (B, H, 1)
    cols = (ox[:, None] + torch.arange(W))[:, None, :]  # (B, 1, W)
    b = torch.arange(B)[:, None, None]
    return padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image (B, C, H, W) left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
