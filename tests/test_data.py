import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vitprune.data import fashion_mnist, load_splits, make_loader
from vitprune.data.augment import random_flip, random_shift
from vitprune.data.base import carve
from vitprune.data.idx import read_idx
from vitprune.errors import DataError

FMNIST = Path("/usr/share/datasets/fashion-mnist")
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _fake_fmnist(d: Path, n_train=100, n_test=40) -> None:
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(d / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(d / f"{part}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,), dtype=np.uint8))


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    _write_idx(tmp_path / "b", arr, gz=False)
    assert torch.equal(read_idx(tmp_path / "a.gz"), torch.from_numpy(arr))
    assert torch.equal(read_idx(tmp_path / "b"), torch.from_numpy(arr))


def test_truncated_gz_is_a_clear_error(tmp_path):
    _fake_fmnist(tmp_path)
    f = tmp_path / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        fashion_mnist.load(tmp_path, calib_size=10)


def test_idx_with_missing_bytes_is_a_clear_error(tmp_path):
    arr = np.zeros((5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "x", arr, gz=False)
    (tmp_path / "x").write_bytes((tmp_path / "x").read_bytes()[:-7])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "x")


def test_missing_files_say_how_to_get_them(tmp_path):
    _fake_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        fashion_mnist.load(tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" in str(err.value)
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    assert "--data-dir" in str(err.value)


def test_user_directory_is_loaded(tmp_path):
    _fake_fmnist(tmp_path, n_train=100, n_test=40)
    s = fashion_mnist.load(tmp_path, calib_size=20)
    assert (len(s.train), len(s.calib), len(s.test)) == (80, 20, 40)


@needs_fmnist
def test_fashion_mnist_shapes_and_labels():
    s = load_splits("fashion-mnist")
    assert (len(s.train), len(s.calib), len(s.test)) == (55000, 5000, 10000)
    assert (s.num_classes, s.in_chans, s.img_size) == (10, 1, 28)
    x, y = next(iter(make_loader(s.test, 64)))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    for part in (s.train, s.calib, s.test):
        assert int(part.labels.min()) == 0 and int(part.labels.max()) == 9
    # every class is present in the calibration split, in roughly equal shares
    counts = torch.bincount(s.calib.labels, minlength=10)
    assert counts.min() > 350 and counts.max() < 650


def test_carve_is_disjoint_complete_and_deterministic():
    tr, ca = carve(1000, 100, seed=3)
    assert len(set(tr.tolist()) & set(ca.tolist())) == 0
    assert sorted(tr.tolist() + ca.tolist()) == list(range(1000))
    tr2, ca2 = carve(1000, 100, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(ca, ca2)
    _, ca3 = carve(1000, 100, seed=4)
    assert not torch.equal(ca, ca3)


def test_calibration_never_overlaps_test(tmp_path):
    # make every image unique so overlap can be checked by content
    n_train, n_test = 100, 40
    imgs = np.zeros((n_train + n_test, 28, 28), dtype=np.uint8)
    imgs.reshape(len(imgs), -1)[:, :2] = np.stack(np.divmod(np.arange(len(imgs)), 256), 1)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs[:n_train])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[n_train:])
    for part, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", np.zeros(n, dtype=np.uint8))
    s = fashion_mnist.load(tmp_path, calib_size=30)
    key = lambda ds: {bytes(im.numpy().tobytes()) for im in ds.images}  # noqa: E731
    assert not key(s.calib) & key(s.test)
    assert not key(s.calib) & key(s.train)
    assert len(key(s.calib) | key(s.train)) == n_train


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


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown dataset"):
        load_splits("mnist-ish")


def test_imagefolder_needs_train_and_val(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="ImageFolder"):
        load_splits("imagefolder", tmp_path)


def test_imagefolder_tree_loads_with_splits(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 4)):
        for cls in ("cat", "dog"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(d / f"{i}.png")
    s = load_splits("imagefolder", tmp_path, img_size=32, calib_size=4)
    assert (len(s.train), len(s.calib), len(s.test)) == (16, 4, 8)
    assert (s.num_classes, s.in_chans, s.img_size) == (2, 3, 32)
    x, y = next(iter(make_loader(s.test, 8)))
    assert x.shape == (8, 3, 32, 32) and sorted(y.tolist()) == [0] * 4 + [1] * 4
    assert not set(s.train.indices) & set(s.calib.indices)


def _grey_tree(root, value: int = 128, n: int = 2):
    """An ImageFolder tree of uniform images (every pixel ``value`` in every channel)."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n + 3 * (split == "train")):
                Image.fromarray(np.full((40, 40, 3), value, dtype=np.uint8)).save(d / f"{i}.png")


def test_a_clip_vit_sees_images_normalised_with_clips_mean_and_std(tmp_path):
    """The model's own preprocessing (timm's pretrained config), not ImageNet's for every model."""
    from timm.data import IMAGENET_DEFAULT_MEAN, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from vitprune.models import ModelSource
    from vitprune.pipeline import source_data_config

    _grey_tree(tmp_path)
    clip = source_data_config(ModelSource("vit_base_patch16_clip_224.openai", args={"depth": 1}))
    assert clip["mean"] == list(OPENAI_CLIP_MEAN) and clip["crop_pct"] == 0.9
    s = load_splits("imagefolder", tmp_path, img_size=32, data_config=clip)
    x, _ = s.test[0]
    expected = (128 / 255 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(OPENAI_CLIP_STD)
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)
    # without the model's configuration: timm's ImageNet defaults, which differ
    x0, _ = load_splits("imagefolder", tmp_path, img_size=32).test[0]
    assert not torch.allclose(x0.mean(dim=(1, 2)), expected, atol=1e-3)
    assert source_data_config("deit_tiny_patch16_224")["mean"] == list(IMAGENET_DEFAULT_MEAN)
    # no preprocessing of its own (its dataset brings it): only its input size, so an image
    # folder is read at 28x28 in one grey channel for it
    assert source_data_config("fmnist_vit_tiny") == {"input_size": [1, 28, 28]}


def test_non_square_image_folders_train_a_non_square_model(tmp_path):
    from vitprune.cli import main
    from vitprune.io.model_dir import read_config

    _grey_tree(tmp_path / "data")
    out = tmp_path / "m"
    argv = ["train", "--model", "deit_tiny_patch16_224", "--model-args", "depth=1",
            "--data", "imagefolder", "--data-dir", str(tmp_path / "data"), "--img-size", "32", "48",
            "--calib-size", "2", "--epochs", "1", "--batch-size", "4", "--workers", "0",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    cfg = read_config(out)
    assert cfg["arch"]["kwargs"]["img_size"] == [32, 48]
    assert cfg["data_config"]["input_size"] == [3, 32, 48]
    s = load_splits("imagefolder", tmp_path / "data", img_size=(32, 48), calib_size=2)
    assert s.test[0][0].shape == (3, 32, 48)
