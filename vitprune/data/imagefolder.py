"""ImageFolder trees: ``root/train/<class>/*.png`` and ``root/val/<class>/*`` (or ``test/``)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset

from ..errors import DataError
from .base import Splits, carve


def load(root: str | Path, img_size: int | tuple[int, int] = 224, calib_size: int = 1000, seed: int = 0, *,
         data_config: dict | None = None) -> Splits:
    """Splits of an ImageFolder tree, prepared as the model expects.

    Args:
        data_config: the model's preprocessing (``vitprune.adapters.data_config``: interpolation,
            crop_pct, crop_mode, mean, std), turned into timm's evaluation transform at
            ``img_size``; None: timm's ImageNet defaults (bicubic, crop 0.875, ImageNet mean/std).

    The calibration split is carved from ``train`` (deterministic for ``seed``); the test split
    is ``val`` or ``test``.
    """
    from timm.data import create_transform, resolve_data_config
    from torchvision import datasets

    root = Path(root)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(
            f"{root} is not an ImageFolder tree: expected {root}/train/<class>/... and "
            f"{root}/val/<class>/... (or test/). Arrange the images that way or use --data fashion-mnist."
        )
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    size = (3, h, w)
    cfg = {**resolve_data_config({"input_size": size}), **(data_config or {}), "input_size": size}
    tf = create_transform(**_tuples(cfg), is_training=False)
    train_full = datasets.ImageFolder(root / "train", transform=tf)
    test = datasets.ImageFolder(test_dir, transform=tf)
    if train_full.classes != test.classes:
        raise DataError(f"{root}: train and {test_dir.name} have different class folders")
    train_ids, calib_ids = carve(len(train_full), min(calib_size, len(train_full) // 5), seed)
    return Splits(Subset(train_full, train_ids.tolist()), Subset(train_full, calib_ids.tolist()),
                  test, num_classes=len(train_full.classes), in_chans=3, img_size=img_size,
                  name=f"imagefolder:{root}", data_config=cfg)


def _keep_bits(img, bits_to_keep: int, **_):
    """Posterize that keeps 0 bits as a black image, as Pillow did before version 11.

    timm's increasing posterize keeps 4 - int(4 * magnitude / 10) bits, 0 at magnitude 10,
    which current Pillow refuses (ValueError); with mstd0.5 noise around m9 about 2% of the
    posterize draws reach 10.
    """
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _pillow_safe(tf):
    """``tf`` with its RandAugment's posterize ops able to keep 0 bits (this object only)."""
    from timm.data.auto_augment import RandAugment

    for t in getattr(tf, "transforms", ()):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = _keep_bits
    return tf


def _tuples(cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def training_view(train: Subset, data_config: dict, *, rand_augment: str = "",
                  random_erasing: float = 0.0) -> Subset:
    """The same training images through timm's training transform (random resized crop, flip,
    RandAugment ``rand_augment``, random erasing with probability ``random_erasing``; the
    model's interpolation, mean and std), as a new dataset; ``train`` is left as it is."""
    from timm.data import create_transform
    from torchvision import datasets

    base = train.dataset
    cfg = {k: v for k, v in _tuples(data_config).items() if k not in ("crop_pct", "crop_mode")}
    tf = _pillow_safe(create_transform(**cfg, is_training=True, auto_augment=rand_augment or None,
                                       re_prob=random_erasing))
    view = datasets.ImageFolder(base.root, transform=tf)
    return Subset(view, train.indices)
