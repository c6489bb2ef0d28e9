"""Fashion-MNIST (70k 28x28 grey images, 10 classes) from the four standard IDX files."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import Splits, TensorImageSet, carve
from .idx import read_idx

DEFAULT_DIRS = ("/usr/share/datasets/fashion-mnist",)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MEAN, STD = (0.2860,), (0.3530,)
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
HOW_TO_GET = (
    "On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` (installs to "
    "/usr/share/datasets/fashion-mnist; `make demo` and `make test` do this where apt exists). "
    "Elsewhere: download the four files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz from the Fashion-MNIST project "
    "(github.com/zalandoresearch/fashion-mnist) into a directory and pass it with --data-dir."
)


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def locate(root: str | Path | None = None) -> Path:
    """The directory holding the four Fashion-MNIST files: ``root``, else the Debian location."""
    candidates = [Path(root)] if root is not None else [Path(d) for d in DEFAULT_DIRS]
    for cand in candidates:
        missing = [s for s in FILES.values() if _find(cand, s) is None]
        if not missing:
            return cand
    where = ", ".join(str(c) for c in candidates)
    detail = f"missing {', '.join(m + '.gz' for m in missing)}" if candidates else ""
    raise DataError(f"Fashion-MNIST not found in {where} ({detail}). {HOW_TO_GET}")


def load(root: str | Path | None = None, calib_size: int = 5000, seed: int = 0) -> Splits:
    """Train / calibration / test splits of Fashion-MNIST.

    The calibration split is ``calib_size`` images carved out of the 60k training images by a
    seeded permutation (held out from training; never overlapping the 10k test images).
    """
    d = locate(root)
    arrays = {k: read_idx(_find(d, stem)) for k, stem in FILES.items()}
    for part in ("train", "test"):
        imgs, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if imgs.ndim != 3 or imgs.shape[1:] != (28, 28) or labels.shape != (imgs.shape[0],):
            raise DataError(
                f"{d}: {part} files have shapes {tuple(imgs.shape)} and {tuple(labels.shape)}; "
                f"expected (N, 28, 28) images and (N,) labels. {HOW_TO_GET}"
            )
        if int(labels.max()) > 9:
            raise DataError(f"{d}: {part} labels go up to {int(labels.max())}; expected 0..9")
    full = TensorImageSet(arrays["train_images"][:, None], arrays["train_labels"].long(), MEAN, STD)
    test = TensorImageSet(arrays["test_images"][:, None], arrays["test_labels"].long(), MEAN, STD)
    train_ids, calib_ids = carve(len(full), calib_size, seed)
    return Splits(full.subset(train_ids), full.subset(calib_ids), test,
                  num_classes=10, in_chans=1, img_size=28, name="fashion-mnist")
