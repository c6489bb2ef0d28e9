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
            Its ``input_size`` says the channels: 1 reads every image as grey (Pillow's "L"
            conversion, the obvious one for a grey model; a 3-value mean and std become their
            averages), otherwise as RGB.

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
    for split in (root / "train", test_dir):
        check_images(split)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    chans = 1 if (data_config or {}).get("input_size", (3,))[0] == 1 else 3
    size = (chans, h, w)
    cfg = {**resolve_data_config({"input_size": size}), **(data_config or {}), "input_size": size}
    if chans == 1:
        cfg.update(mean=(_average(cfg["mean"]),), std=(_average(cfg["std"]),))
    tf = create_transform(**_tuples(cfg), is_training=False)
    loader = load_grey if chans == 1 else load_image
    train_full = datasets.ImageFolder(root / "train", transform=tf, loader=loader)
    test = datasets.ImageFolder(test_dir, transform=tf, loader=loader)
    if train_full.classes != test.classes:
        raise DataError(f"{root}: train and {test_dir.name} have different class folders")
    train_ids, calib_ids = carve(len(train_full), min(calib_size, len(train_full) // 5), seed)
    return Splits(Subset(train_full, train_ids.tolist()), Subset(train_full, calib_ids.tolist()),
                  test, num_classes=len(train_full.classes), in_chans=chans, img_size=img_size,
                  name=f"imagefolder:{root}", data_config=cfg)


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
    every = [f for fs in files.values() for f in fs]
    if len(every) <= FULL_SCAN:
        bad = [f for f in every if not _whole_image(f)]
        if bad:
            raise DataError(f"{len(bad)} file(s) in {split} are not whole images, e.g. "
                            f"{', '.join(str(b) for b in bad[:5])}; replace or remove them")


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

    base = train.dataset
    cfg = {k: v for k, v in _tuples(data_config).items() if k not in ("crop_pct", "crop_mode")}
    tf = _pillow_safe(create_transform(**cfg, is_training=True, auto_augment=rand_augment or None,
                                       re_prob=random_erasing))
    view = datasets.ImageFolder(base.root, transform=tf, loader=base.loader)
    return Subset(view, train.indices)
