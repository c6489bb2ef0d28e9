"""Tests of image folders (vitprune/data/imagefolder.py): layout checks, preprocessing, non-square inputs."""


import numpy as np
import pytest
import torch

from tests.helpers import image_folder
from vitprune.data import load_splits, make_loader
from vitprune.errors import DataError


def _grey_tree(root, value: int = 128, n: int = 2):
    """An ImageFolder tree of uniform images (every pixel ``value`` in every channel)."""
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n + 3 * (split == "train")):
                Image.fromarray(np.full((40, 40, 3), value, dtype=np.uint8)).save(d / f"{i}.png")


def test_imagefolder_needs_train_and_val(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="ImageFolder"):
        load_splits("imagefolder", tmp_path)


def test_imagefolder_tree_loads_with_splits(tmp_path):
    image_folder(tmp_path, size=(40, 50), classes=("cat", "dog"), n=(10, 4))
    s = load_splits("imagefolder", tmp_path, img_size=32, calib_size=3)
    assert (len(s.train), len(s.calib), len(s.test)) == (17, 3, 8)
    # a calibration split asked larger than a fifth of the training images is capped at it,
    # so training keeps four fifths
    s = load_splits("imagefolder", tmp_path, img_size=32, calib_size=1000)
    assert (len(s.train), len(s.calib), len(s.test)) == (16, 4, 8)
    assert (s.num_classes, s.in_chans, s.img_size) == (2, 3, 32)
    x, y = next(iter(make_loader(s.test, 8)))
    assert x.shape == (8, 3, 32, 32) and sorted(y.tolist()) == [0] * 4 + [1] * 4
    assert not set(s.train.indices) & set(s.calib.indices)


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


def test_a_flat_folder_of_unlabeled_images_is_carved_into_three_splits(tmp_path):
    from tests.helpers import unlabeled_folder

    unlabeled_folder(tmp_path / "flat", n=30)
    s = load_splits("imagefolder", tmp_path / "flat", img_size=32, calib_size=4)
    assert (len(s.train), len(s.calib), len(s.test)) == (22, 4, 4)
    assert s.num_classes == 0 and "unlabeled" in s.name
    names = [{f.name for f in part.files} for part in (s.train, s.calib, s.test)]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    x, y = next(iter(make_loader(s.calib, 8)))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [-1] * 4
    again = load_splits("imagefolder", tmp_path / "flat", img_size=32, calib_size=4)
    assert [f.name for f in again.calib.files] == [f.name for f in s.calib.files]  # deterministic


def test_unlabeled_train_with_a_flat_val_folder(tmp_path):
    from tests.helpers import unlabeled_folder

    unlabeled_folder(tmp_path, n=20, test=5)
    s = load_splits("imagefolder", tmp_path, img_size=32, calib_size=3)
    assert (len(s.train), len(s.calib), len(s.test)) == (17, 3, 5)
    assert all(f.parent.name == "val" for f in s.test.files) and s.num_classes == 0


def test_unlabeled_layouts_that_cannot_work_are_refused(tmp_path):
    from tests.helpers import unlabeled_folder

    unlabeled_folder(tmp_path / "few", n=3)
    with pytest.raises(DataError, match="too few"):
        load_splits("imagefolder", tmp_path / "few", img_size=32)
    image_folder(tmp_path / "classes_val", n=(2, 2))
    unlabeled_folder(tmp_path / "u", n=12, test=2)
    (tmp_path / "u" / "val").rename(tmp_path / "u" / "old_val")
    (tmp_path / "classes_val" / "val").rename(tmp_path / "u" / "val")
    with pytest.raises(DataError, match="class folders or no images"):
        load_splits("imagefolder", tmp_path / "u", img_size=32)


def test_a_classifier_is_refused_unlabeled_images(tmp_path):
    from tests.helpers import unlabeled_folder
    from vitprune.models import build_model
    from vitprune.pipeline import fit_data

    unlabeled_folder(tmp_path, n=20)
    s = load_splits("imagefolder", tmp_path, img_size=28)
    with pytest.raises(DataError, match="no labels.*num_classes=0"):
        fit_data(build_model("vit_tiny_patch16_224", img_size=28, patch_size=7, num_classes=3,
                             depth=1), s)
