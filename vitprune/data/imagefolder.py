"""ImageFolder trees: ``root/train/<class>/*.png`` and ``root/val/<class>/*`` (or ``test/``),
and unlabeled images (for a backbone fine-tuned by feature distillation): a flat folder
``root/*.png``, or ``root/train/*.png`` with an optional flat ``root/val/`` (or ``test/``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from ..errors import DataError
from .base import Splits, carve


def load(root: str | Path, img_size: int | tuple[int, int] = 224, calib_size: int = 1000, seed: int = 0, *,
         data_config: dict | None = None) -> Splits:
    """Splits of an ImageFolder tree, prepared as the model expects.

    Args:
        data_config: the model's preprocessing (``vitprune.adapters.data_config``: interpolation,
            crop_pct, crop_mode, mean, std), turned into timm's evaluation transform at
            ``img_size``; None: timm's ImageNet defaults (bicubic, crop 0.875, ImageNet mean/std).
            Its ``input_size`` says the channels: 1 reads every image as grey (Pillow's "L"
            conversion, the obvious one for a grey model; a 3-value mean and std become their
            averages), otherwise as RGB.

    The calibration split is carved from ``train`` (deterministic for ``seed``); the test split
    is ``val`` or ``test``.
    """
    root = Path(root)
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    train_dir = root / "train"
    if _is_flat(train_dir if train_dir.is_dir() else root):
        return _unlabeled(root, test_dir, img_size, calib_size, seed, data_config)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"{root} is not an ImageFolder tree: expected {root}/train/<class>/... and "
            f"{root}/val/<class>/... (or test/), or unlabeled images ({root}/*.png or "
            f"{root}/train/*.png) for a model without a classifier. Arrange the images that way "
            "or use --data fashion-mnist."
        )
    for split in (train_dir, test_dir):
        check_images(split)
    cfg, tf, loader = _transform(img_size, data_config)
    train_full = datasets_folder(train_dir, tf, loader)
    test = datasets_folder(test_dir, tf, loader)
    if train_full.classes != test.classes:
        raise DataError(f"{root}: train and {test_dir.name} have different class folders")
    train_ids, calib_ids = carve(len(train_full), min(calib_size, len(train_full) // 5), seed)
    return Splits(Subset(train_full, train_ids.tolist()), Subset(train_full, calib_ids.tolist()),
                  test, num_classes=len(train_full.classes), in_chans=cfg["input_size"][0],
                  img_size=img_size, name=f"imagefolder:{root}", data_config=cfg)


def datasets_folder(root: Path, tf, loader):
    """torchvision's ImageFolder of ``root`` (its class folders) with ``tf`` and ``loader``."""
    from torchvision import datasets

    return datasets.ImageFolder(root, transform=tf, loader=loader)


def _transform(img_size: int | tuple[int, int], data_config: dict | None) -> tuple:
    """(the data config at ``img_size``, timm's evaluation transform of it, the image loader)."""
    from timm.data import create_transform, resolve_data_config

    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    chans = 1 if (data_config or {}).get("input_size", (3,))[0] == 1 else 3
    size = (chans, h, w)
    cfg = {**resolve_data_config({"input_size": size}), **(data_config or {}), "input_size": size}
    if chans == 1:
        cfg.update(mean=(_average(cfg["mean"]),), std=(_average(cfg["std"]),))
    tf = create_transform(**_tuples(cfg), is_training=False)
    return cfg, tf, load_grey if chans == 1 else load_image


class UnlabeledImages(Dataset):
    """Image files without classes, as ``(image, -1)`` pairs (no label: -1).

    Attributes:
        files: the image paths, sorted.
        transform, loader: as torchvision's ImageFolder takes them.
    """

    def __init__(self, files: list[Path], transform, loader) -> None:
        self.files, self.transform, self.loader = files, transform, loader

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return self.transform(self.loader(str(self.files[i]))), -1

    def with_transform(self, transform) -> UnlabeledImages:
        """The same files through another transform."""
        return UnlabeledImages(self.files, transform, self.loader)


def _images_in(folder: Path) -> list[Path]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)


def _is_flat(folder: Path) -> bool:
    """``folder`` holds images itself and no class folders (an unlabeled set)."""
    return (folder.is_dir() and not any(d.is_dir() for d in folder.iterdir())
            and bool(_images_in(folder)))


def _unlabeled(root: Path, test_dir: Path | None, img_size: int | tuple[int, int],
               calib_size: int, seed: int, data_config: dict | None) -> Splits:
    """Splits of unlabeled images: calibration (and, without a flat val/ or test/, test)
    images carved from the training ones, deterministically for ``seed``; every label -1 and
    ``num_classes`` 0 (for a model without a classifier)."""
    train_dir = root / "train" if (root / "train").is_dir() else root
    files = _images_in(train_dir)
    _check_whole(train_dir, files)
    if test_dir is not None and train_dir != root:
        if not _is_flat(test_dir):
            raise DataError(f"{root}/train holds unlabeled images but {test_dir} does not (it "
                            f"has class folders or no images); put its images in {test_dir} "
                            "itself, or remove it to carve a test split from train")
        test_files = _images_in(test_dir)
        _check_whole(test_dir, test_files)
    else:
        test_files = []
    n = len(files)
    held = min(calib_size, n // 5) * (1 if test_files else 2)
    if n < 3 or held < 1 + (0 if test_files else 1):
        raise DataError(f"{train_dir} holds {n} unlabeled image(s): too few to carve calibration "
                        "and test images from (at least 5 are needed, 10 without val/); add images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = held if test_files else held // 2
    calib = [files[i] for i in sorted(perm[:k])]
    test = test_files or [files[i] for i in sorted(perm[k:held])]
    train = [files[i] for i in sorted(perm[held:])]
    cfg, tf, loader = _transform(img_size, data_config)
    return Splits(UnlabeledImages(train, tf, loader), UnlabeledImages(calib, tf, loader),
                  UnlabeledImages(test, tf, loader), num_classes=0, in_chans=cfg["input_size"][0],
                  img_size=img_size, name=f"imagefolder:{root} (unlabeled)", data_config=cfg)


def _check_whole(folder: Path, files: list[Path]) -> None:
    if len(files) <= FULL_SCAN:
        bad = [f for f in files if not _whole_image(f)]
        if bad:
            raise DataError(f"{len(bad)} file(s) in {folder} are not whole images, e.g. "
                            f"{', '.join(str(b) for b in bad[:5])}; replace or remove them")


# a folder up to this many images is read whole before any work (a few seconds); a larger
# one names a bad image when a loader meets it (a finished epoch resumes once it is replaced)
FULL_SCAN = 50_000
_ENDS = {".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9", ".png": b"IEND\xaeB`\x82"}


def check_images(split: Path) -> None:
    """Refuse a split with no class folder, an empty class folder, or (up to
    :data:`FULL_SCAN` images) files that are not whole images, listing them.

    Raises:
        DataError: what is wrong, naming the folders or files.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = sorted(d for d in split.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{split} has no class folders; put the images in {split}/<class>/")
    files = {c: [f for f in c.iterdir() if f.suffix.lower() in IMG_EXTENSIONS] for c in classes}
    empty = [c.name for c, fs in files.items() if not fs]
    if empty:
        raise DataError(f"{split}: class folder(s) {', '.join(empty[:5])} hold no images; add "
                        "images or remove the folders (train and test need the same classes)")
    _check_whole(split, [f for fs in files.values() for f in fs])


def _whole_image(path: Path) -> bool:
    """The file opens as an image and, for JPEG and PNG, ends with its end marker (a truncated
    file does not): a header read and a tail read, not a decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 (the header parsed)
        end = _ENDS.get(path.suffix.lower())
        if end is None:
            return True
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64))
            return end in fh.read()
    except (OSError, UnidentifiedImageError, ValueError):
        return False


def _average(values) -> float:
    values = [values] if isinstance(values, (int, float)) else list(values)
    return float(sum(values) / len(values))


def load_grey(path: str):
    """:func:`load_image` converted to one grey channel (Pillow's "L": ITU-R 601 luma)."""
    return load_image(path).convert("L")


def load_image(path: str):
    """torchvision's loader (an RGB PIL image), with an unreadable file named in a
    :class:`DataError` rather than a decoder's error mid-epoch."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); replace or remove it, then "
                        "run the same command again (it resumes)") from None


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

    cfg = {k: v for k, v in _tuples(data_config).items() if k not in ("crop_pct", "crop_mode")}
    tf = _pillow_safe(create_transform(**cfg, is_training=True, auto_augment=rand_augment or None,
                                       re_prob=random_erasing))
    if isinstance(train, UnlabeledImages):
        return train.with_transform(tf)
    base = train.dataset
    return Subset(datasets.ImageFolder(base.root, transform=tf, loader=base.loader), train.indices)
