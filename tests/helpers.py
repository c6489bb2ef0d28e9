"""Helpers shared by test modules: random plans, and ViTs whose attention is not flat."""

from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import torch

from vitprune.adapters import vit_shape
from vitprune.cost import VitShape, token_counts
from vitprune.models import build_model
from vitprune.plan import BlockPlan, PrunePlan, TokenStage
from vitprune.surgery import prune


def random_plan(shape: VitShape, seed: int, stages: tuple[int, ...] = (),
                keep_rate: float = 0.6) -> PrunePlan:
    """Random kept heads and neurons in every block (always fewer than all), plus token stages.

    The last stage does not fuse, so both kinds of stage are exercised.
    """
    rng = random.Random(seed)
    blocks = []
    for b in shape.blocks:
        heads = rng.sample(range(b.heads), rng.randint(1, max(1, b.heads - 1)))
        neurons = rng.sample(range(b.mlp_hidden), rng.randint(1, b.mlp_hidden - 1))
        blocks.append(BlockPlan(heads, neurons))
    tokens = tuple(TokenStage(s, keep_rate, fuse=s != stages[-1]) for s in stages)
    return PrunePlan(tuple(blocks), tokens)


def sharpen(model: torch.nn.Module, factor: float = 4.0) -> torch.nn.Module:
    """Scale every block's query and key weights by ``factor`` (in place).

    Randomly initialised ViTs attend almost uniformly, so class-token scores near the keep
    boundary differ by ~1e-5 relative; float noise between masked and pruned execution (~1e-7)
    could then flip a selection. Trained ViTs attend sharply; this makes the random ones do too,
    so the comparison tests the arithmetic, not luck.
    """
    from vitprune.adapters import adapter_for

    adapter = adapter_for(model)
    with torch.no_grad():
        for b in adapter.blocks(model):
            qkv = adapter.parts(b).qkv
            if len(qkv) == 1:  # fused (q | k | v) rows
                qkv[0].weight[: 2 * qkv[0].out_features // 3] *= factor
            else:
                qkv[0].weight *= factor
                qkv[1].weight *= factor
    return model


# Small versions of the layouts deployment must handle: a distilled DeiT (two heads, two prefix
# tokens), a register-token ViT (five prefix tokens, layer scale), a global-average-pool ViT
# without class token, an EVA-02 (gated MLP, rotary positions). Each is pruned with heads,
# neurons and tokens cut.


FAMILIES = {
    "deit_distilled": ("deit_tiny_distilled_patch16_224",
                       dict(img_size=48, depth=3, num_classes=10)),
    "register_tokens": ("vit_small_patch14_reg4_dinov2",
                        dict(img_size=42, depth=3, num_classes=10, init_values=0.5)),
    "avg_pool": ("vit_small_patch16_224",
                 dict(img_size=48, depth=3, class_token=False, global_pool="avg",
                      num_classes=10)),
    # EVA-02: packed SwiGLU MLP, separate q/v biases, rotary position embeddings
    "eva02": ("eva02_tiny_patch14_224",
              dict(img_size=56, depth=3, num_classes=10, ref_feat_shape=(4, 4))),
}


def pruned_family(family: str) -> torch.nn.Module:
    name, kw = FAMILIES[family]
    torch.manual_seed(0)
    dense = sharpen(build_model(name, **kw).eval())
    with torch.no_grad():  # logits of order one, so that a 1e-4 agreement means something
        for head in (dense.head, getattr(dense, "head_dist", None)):
            if head is not None:
                head.weight.normal_(0, 1.0)
    plan = random_plan(vit_shape(dense), 0, stages=(1, 2))
    model = prune(dense, plan).eval()
    assert token_counts(vit_shape(model))[-1] < token_counts(vit_shape(dense))[-1]
    return model


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    """``arr`` (uint8) as an IDX file, gzipped unless ``gz`` is False."""
    code = {np.uint8: 0x08}[arr.dtype.type]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_fmnist(d: Path, n_train=100, n_test=40) -> None:
    """Random Fashion-MNIST files (the four IDX files of its layout) in ``d``."""
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("t10k", n_test)):
        write_idx(d / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(d / f"{part}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))


def image_folder(root: Path, *, size: tuple[int, int] = (40, 48), channels: int = 3,
                 classes: tuple[str, ...] = ("a", "b"), n: tuple[int, int] = (6, 2),
                 suffix: str = ".png") -> Path:
    """An ImageFolder tree under ``root``: ``train/`` and ``val/`` with ``n`` random images of
    ``size`` (H, W) per class (RGB, or grey with ``channels=1``), the same images for the same
    arguments."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, k in zip(("train", "val"), n):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(k):
                shape = (*size, channels) if channels == 3 else size
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}{suffix}")
    return root


def unlabeled_folder(root: Path, n: int = 24, *, size: tuple[int, int] = (32, 32),
                     test: int = 0) -> Path:
    """Unlabeled images: ``n`` random RGB images in ``root`` itself (a flat folder) or, with
    ``test``, in ``root/train/`` with ``test`` more in ``root/val/``; the same images for the
    same arguments."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for d, k in ((root / "train", n), (root / "val", test)) if test else ((root, n),):
        d.mkdir(parents=True, exist_ok=True)
        for i in range(k):
            # smooth images (a few blobs), so that a model's features depend on their content
            img = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(img).resize(size[::-1], Image.BICUBIC).save(d / f"img{i:03d}.png")
    return root


def synthetic_table(shape):
    """A table whose times follow the work (ms ~ heads x tokens, width x tokens): deterministic,
    for tests of the arithmetic on tables."""
    import numpy as np

    from vitprune.latency import LatencyTable, model_key

    b = shape.blocks[0]
    heads, neurons = tuple(range(1, b.heads + 1)), (8, 16, 32, b.mlp_hidden)
    tokens = tuple(range(2, shape.num_prefix + shape.num_patches + 1))
    return LatencyTable(heads=heads, neurons=neurons, tokens=tokens,
                        attn_ms=0.01 * np.outer(heads, tokens) + 0.005,
                        mlp_ms=0.001 * np.outer(neurons, tokens) + 0.005,
                        select_ms=0.0005 * np.array(tokens), fixed_ms=0.05,
                        meta={"model": model_key(shape), "batch": 2, "dtype": "float32"})


def synthetic_staged_table(shape):
    """:func:`synthetic_table` for a hierarchical model (Swin): a grid per stage whose times
    follow the stage's work (heads x tokens, width x tokens)."""
    import numpy as np

    from vitprune.latency import StagedLatencyTable, StageGrid, model_key
    from vitprune.profile import stage_groups

    stages = []
    for g in stage_groups(shape):
        b = shape.blocks[g[0]]
        n = b.grid[0] * b.grid[1]
        heads, neurons = tuple(range(1, b.heads + 1)), (b.mlp_hidden // 2, b.mlp_hidden)
        stages.append(StageGrid(g, heads, neurons, n, 0.01 * n * np.array(heads) + 0.005,
                                0.001 * n * np.array(neurons) + 0.005))
    return StagedLatencyTable(tuple(stages), fixed_ms=0.05,
                              meta={"model": model_key(shape), "batch": 2, "dtype": "float32"})


def measured_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """MACs that torch's FlopCounterMode counts for ``module(x)`` (FLOPs / 2), with fused
    attention turned off (the counter does not see CPU scaled_dot_product_attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    for m in module.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() // 2


def masked_and_pruned(model: torch.nn.Module, plan: PrunePlan, x: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module, torch.Tensor]:
    """(dense logits, logits under a Masker set to ``plan``, the pruned model, its logits),
    checking that the input model is untouched afterwards."""
    from vitprune.surgery import Masker

    with torch.no_grad():
        dense = model(x)
        with Masker(model) as masker:
            masker.set(plan)
            masked = model(x)
        small = prune(model, plan).eval()
        assert torch.equal(model(x), dense)  # the input model is untouched, the Masker gone
        return dense, masked, small, small(x)
