"""A model without a classifier (DINOv2-style, num_classes=0) compressed end to end on
unlabeled images: feature objective, feature distillation, fidelity evaluation, k-NN top-1."""

from __future__ import annotations

import json

import pytest
import torch

import vitprune
from tests.helpers import image_folder, unlabeled_folder
from vitprune.cli import main
from vitprune.errors import ConfigError

DINO = dict(img_size=28, patch_size=7, in_chans=3, depth=3, embed_dim=32, num_heads=4,
            num_classes=0, init_values=1.0)
QUICK = dict(trials=4, init=2, calib_images=64, score_images=64, epochs=3, max_steps_per_epoch=4,
             batch_size=8, lr=2e-3, progress=False, img_size=(28,))


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    from vitprune.models import ArchSpec, build_model

    torch.manual_seed(0)
    model = build_model("vit_small_patch14_dinov2", **DINO).eval()
    out = tmp_path_factory.mktemp("dino") / "dense"
    vitprune.save(out, model, ArchSpec("vit_small_patch14_dinov2", DINO))
    return out


@pytest.fixture(scope="module")
def run(dense_dir, tmp_path_factory):
    data = unlabeled_folder(tmp_path_factory.mktemp("images") / "flat", n=48, size=(28, 28))
    torch.manual_seed(0)
    return vitprune.compress(str(dense_dir), "imagefolder", 0.5,
                             tmp_path_factory.mktemp("c") / "run", data_dir=data,
                             calib_size=8, **QUICK)


def test_a_backbone_compresses_on_unlabeled_images_and_fine_tuning_raises_its_fidelity(run):
    rows = run.metrics.rows
    assert all(r.backbone and r.test_top1 is None for r in rows.values())
    assert rows["dense"].test_fidelity == pytest.approx(100.0, abs=1e-3)
    assert rows["finetuned"].test_knn_top1 is None  # no labels: no k-NN
    # distillation on the features moved the pruned model towards the dense one
    assert rows["finetuned"].test_fidelity > rows["pruned"].test_fidelity
    assert rows["finetuned"].calib_fidelity > rows["pruned"].calib_fidelity
    hist = run.metrics.finetune_history
    assert [h.calib_top1 for h in hist] == [None] * 3
    assert all(h.calib_fidelity is not None for h in hist)
    assert hist[-1].calib_fidelity == pytest.approx(rows["finetuned"].calib_fidelity, abs=1e-3)
    assert 0.45 <= run.metrics.macs_kept <= 0.5
    saved = json.loads((run.out / "run.json").read_text())
    flat = json.dumps(saved)
    assert '"objective": "features"' in flat and '"kd_loss": "cosine"' in flat
    report = (run.out / "report.md").read_text()
    assert "test fidelity" in report and "Feature fidelity" in report
    assert "best masked calibration feature fidelity" in report
    summary = run.summary()
    assert summary["test_fidelity_finetuned"] == rows["finetuned"].test_fidelity
    again = vitprune.load(run.model_dir)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(again(x), run.model(x))


def test_eval_reports_knn_top1_and_fidelity_against_the_reference(run, dense_dir, tmp_path,
                                                                  capsys):
    data = image_folder(tmp_path / "labelled", size=(28, 28), classes=("a", "b", "c"), n=(8, 4))
    assert main(["eval", "--model", str(run.model_dir), "--data", "imagefolder", "--data-dir",
                 str(data), "--reference", str(dense_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert "top1" not in res and 0 <= res["knn_top1"] <= 100
    assert 0 < res["fidelity"] < 100 and 0 < res["calib_fidelity"] < 100
    # the dense model against itself: fidelity 100
    assert main(["eval", "--model", str(dense_dir), "--data", "imagefolder", "--data-dir",
                 str(data), "--reference", str(dense_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fidelity"] == pytest.approx(100.0, abs=1e-3)


def test_knn_top1_reads_the_labels_of_the_nearest_bank_images():
    from vitprune.train.features import knn_top1

    class Embed(torch.nn.Module):  # a model of no family: its forward is its features
        def forward(self, x):
            return x.flatten(1)

    centres = torch.eye(3)
    bank = [(centres.repeat(4, 1) + 0.01 * torch.randn(12, 3), torch.arange(3).repeat(4))]
    query = [(centres[[2, 0, 1]] + 0.01 * torch.randn(3, 3), torch.tensor([2, 0, 1]))]
    assert knn_top1(Embed(), bank, query, "cpu", k=4) == 100.0
    wrong = [(query[0][0], torch.tensor([0, 1, 2]))]
    assert knn_top1(Embed(), bank, wrong, "cpu", k=4) == 0.0


def test_a_backbone_cannot_be_trained_without_a_teacher(tmp_path):
    from vitprune.data import load_splits
    from vitprune.jobs import train
    from vitprune.train import TrainConfig

    splits = load_splits("imagefolder", unlabeled_folder(tmp_path / "u", n=20, size=(28, 28)),
                         img_size=28)
    with pytest.raises(ConfigError, match="no labels to learn"):
        train(vitprune.models.ModelSource("vit_small_patch14_dinov2", args=DINO), splits,
              TrainConfig(epochs=1), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before the output was claimed


def test_model_args_take_num_classes_0(capsys):
    assert main(["cost", "--model", "vit_small_patch14_dinov2", "--model-args",
                 "num_classes=0", "img_size=28", "patch_size=7", "depth=2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_m"] > 0
    assert main(["cost", "--model", "vit_small_patch14_dinov2", "--model-args",
                 "num_classes=-1"]) == 2
    assert "num_classes=-1: must be 0 (no classifier) or more" in capsys.readouterr().err


def test_mse_feature_distillation_and_the_settings_a_backbone_refuses():
    from vitprune.models import build_model
    from vitprune.pipeline import finetune_for_model
    from vitprune.train import TrainConfig, kd_loss
    from vitprune.train.loop import check_backbone_training

    s, t = torch.randn(4, 8), torch.randn(4, 8)
    assert kd_loss(s, t, kind="mse").item() == pytest.approx(((s - t) ** 2).mean().item())
    backbone = build_model("vit_small_patch14_dinov2", **{**DINO, "depth": 1})
    cfg = finetune_for_model(TrainConfig(kd_alpha=0.5, mixup=0.8), backbone)
    assert (cfg.kd_loss, cfg.kd_alpha, cfg.mixup, cfg.cutmix) == ("cosine", 1.0, 0.0, 0.0)
    assert finetune_for_model(TrainConfig(kd_loss="mse"), backbone).kd_loss == "mse"
    classifier = build_model("fmnist_vit_tiny")
    assert finetune_for_model(TrainConfig(kd_alpha=0.5), classifier).kd_alpha == 0.5
    for bad, match in ((dict(kd_loss="kl", kd_alpha=1.0), "kd-loss cosine"),
                       (dict(kd_loss="cosine", kd_alpha=0.5), "kd-alpha 1"),
                       (dict(kd_loss="cosine", kd_alpha=1.0, mixup=0.8), "mixup 0")):
        with pytest.raises(ConfigError, match=match):
            check_backbone_training(TrainConfig(**bad), has_teacher=True)
