"""ImageFolder trees: ``root/train/<class>/*.png`` and ``root/val/<class>/*`` (or ``test/``)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Subset

from ..errors import DataError
from .base import Splits, carve

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load(root: str | Path, img_size: int = 224, calib_size: int = 1000, seed: int = 0) -> Splits:
    """Splits of an ImageFolder tree, resized to ``img_size`` and ImageNet-normalised.

    The calibration split is carved from ``train`` (deterministic for ``seed``); the test split
    is ``val`` or ``test``.
    """
    from torchvision import datasets, transforms

    root = Path(root)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise DataError(
            f"{root} is not an ImageFolder tree: expected {root}/train/<class>/... and "
            f"{root}/val/<class>/... (or test/). Arrange the images that way or use --data fashion-mnist."
        )
    tf = transforms.Compose([
        transforms.Resize(int(img_size * 256 / 224)), transforms.CenterCrop(img_size),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    train_full = datasets.ImageFolder(root / "train", transform=tf)
    test = datasets.ImageFolder(test_dir, transform=tf)
    if train_full.classes != test.classes:
        raise DataError(f"{root}: train and {test_dir.name} have different class folders")
    train_ids, calib_ids = carve(len(train_full), min(calib_size, len(train_full) // 5), seed)
    return Splits(Subset(train_full, train_ids.tolist()), Subset(train_full, calib_ids.tolist()),
                  test, num_classes=len(train_full.classes), in_chans=3, img_size=img_size,
                  name=f"imagefolder:{root}")
