"""The training loop (vitprune/train/loop.py): training lowers the loss, an interrupted run resumes
exactly, a run directory of another configuration is refused; the recipes (DeiT's Mixup/CutMix
with soft targets, RandAugment, random erasing), weight averaging, and loaders with worker
processes that keep resume exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitprune.train.distill as distill
from tests.helpers import image_folder
from vitprune.adapters import vit_shape
from vitprune.cli import main
from vitprune.data import load_splits, make_loader, training_set
from vitprune.errors import ConfigError, OutputError
from vitprune.models import ArchSpec, build_model
from vitprune.search import Ratios, ratios_to_plan
from vitprune.surgery import prune
from vitprune.train import FINETUNE, RECIPES, TrainConfig, evaluate, fit, kd_loss
from vitprune.train.schedule import warmup_cosine


def _model():
    torch.manual_seed(0)
    return build_model("fmnist_vit_tiny")


def test_schedule_warms_up_then_decays_to_zero():
    f = [warmup_cosine(s, 100, 10) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[100] == pytest.approx(0.0, abs=1e-9)


def test_short_training_lowers_loss_and_learns(tmp_path, synth_splits):
    model = _model()
    test = make_loader(synth_splits.test, 128)
    before = evaluate(model, test)
    hist = fit(model, synth_splits, TrainConfig(epochs=3, batch_size=64, lr=2e-3), tmp_path,
               progress=False)
    after = evaluate(model, test)
    assert hist[-1].train_loss < hist[0].train_loss
    assert after["loss"] < before["loss"] - 0.3
    assert after["top1"] > before["top1"] + 20


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, synth_splits):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=2e-3, seed=5)
    full = _model()
    fit(full, synth_splits, cfg, tmp_path / "full", progress=False)

    # Interrupt during the second epoch: only the first epoch's checkpoint survives.
    calls = {"n": 0}

    def dying_loss(logits, y, x):
        calls["n"] += 1
        if calls["n"] > 8 + 3:  # 8 steps per epoch
            raise _Interrupt
        return torch.nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)

    with pytest.raises(_Interrupt):
        fit(_model(), synth_splits, cfg, tmp_path / "cut", loss_fn=dying_loss, progress=False)
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1

    resumed = build_model("fmnist_vit_tiny")  # different init: everything must come from disk
    hist = fit(resumed, synth_splits, cfg, tmp_path / "cut", resume=True, progress=False)
    assert [h.epoch for h in hist] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_out_dir_with_another_run_is_refused_untouched(tmp_path, synth_splits):
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=2)
    fit(_model(), synth_splits, cfg, tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(OutputError, match="--resume"):
        fit(_model(), synth_splits, cfg, tmp_path, progress=False)
    with pytest.raises(OutputError, match="another configuration"):
        fit(_model(), synth_splits, TrainConfig(epochs=2, batch_size=64), tmp_path, resume=True,
            progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_a_truncated_checkpoint_is_refused_with_what_to_do(tmp_path, synth_splits):
    cfg = TrainConfig(epochs=2, batch_size=64, max_steps_per_epoch=2)
    fit(_model(), synth_splits, TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=2),
        tmp_path, progress=False)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(OutputError, match="cannot resume from .*truncated.*Delete it"):
        fit(_model(), synth_splits, cfg, tmp_path, resume=True, progress=False)
    assert len(ckpt.read_bytes()) == 1000  # kept for the user to inspect


@pytest.mark.parametrize("field, value", [("epochs", 0), ("batch_size", -1), ("lr", 0.0),
                                          ("kd_alpha", 1.5), ("warmup_epochs", 9.0),
                                          ("max_steps_per_epoch", 0)])
def test_a_bad_setting_names_its_field(field, value):
    from vitprune.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        TrainConfig(**{"epochs": 2, field: value})
    assert err.value.field == field and str(err.value).startswith(field)


def test_kd_loss_takes_soft_targets_without_smoothing_them_again():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    soft = torch.softmax(torch.randn(4, 5), -1)
    a, T = 0.3, 2.0
    ce = -(soft * torch.log_softmax(s, -1)).sum(-1).mean()
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / T, -1), torch.log_softmax(t / T, -1),
                                    reduction="batchmean", log_target=True) * T * T
    got = kd_loss(s, t, soft, alpha=a, temperature=T, label_smoothing=0.1)
    assert got.item() == pytest.approx(((1 - a) * ce + a * kl).item(), rel=1e-6)


def test_mixed_batches_reach_the_distillation_loss_as_soft_targets(tmp_path, synth_splits,
                                                                   monkeypatch):
    torch.manual_seed(0)
    teacher = build_model("fmnist_vit_tiny").eval()
    student = prune(teacher, ratios_to_plan(vit_shape(teacher), Ratios.uniform(4, heads=0.25)))
    seen: dict[str, list] = {"teacher": [], "student": [], "labels": []}
    teacher.register_forward_pre_hook(lambda m, a: seen["teacher"].append(a[0].clone()))
    student.register_forward_pre_hook(lambda m, a: seen["student"].append(a[0].clone())
                                      if m.training else None)
    real = distill.kd_loss

    def spy(s, t, labels=None, **kw):
        seen["labels"].append(labels)
        return real(s, t, labels, **kw)

    monkeypatch.setattr(distill, "kd_loss", spy)
    cfg = FINETUNE.with_recipe("deit", epochs=1, batch_size=16, max_steps_per_epoch=3)
    fit(student, synth_splits, cfg, tmp_path, teacher=teacher, progress=False)
    assert len(seen["labels"]) == 3
    for labels in seen["labels"]:  # soft targets over the classes, rows summing to one
        assert labels.shape == (16, 10) and torch.allclose(labels.sum(-1), torch.ones(16))
        assert (labels < 1 - 1e-3).all()  # mixed (and smoothed): no one-hot rows
    # the teacher saw exactly the (mixed) images the student trained on
    assert all(torch.equal(a, b) for a, b in zip(seen["teacher"], seen["student"]))
    raw = next(iter(make_loader(synth_splits.train, 16, shuffle=True, seed=cfg.seed)))[0]
    assert not torch.equal(seen["student"][0], raw)


class _Interrupt(Exception):
    pass


def test_deit_recipe_with_weight_averaging_resumes_exactly(tmp_path, synth_splits):
    """Mixup draws, augmentation and the weight average all continue exactly after a crash."""
    cfg = TrainConfig(epochs=2, batch_size=32, seed=3, max_steps_per_epoch=4,
                      ema_decay=0.9).with_recipe("deit")
    torch.manual_seed(1)
    start = build_model("fmnist_vit_tiny").state_dict()

    def model():
        m = build_model("fmnist_vit_tiny")
        m.load_state_dict(start)
        return m

    full = model()
    fit(full, synth_splits, cfg, tmp_path / "full", progress=False)
    calls = {"n": 0}

    def dying(logits, y, x):  # the default loss for soft targets, dying in epoch 2
        calls["n"] += 1
        if calls["n"] > 4 + 2:
            raise _Interrupt
        return torch.nn.functional.cross_entropy(logits.float(), y)

    with pytest.raises(_Interrupt):
        fit(model(), synth_splits, cfg, tmp_path / "cut", loss_fn=dying, progress=False)
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and "ema" in saved
    resumed = build_model("fmnist_vit_tiny")  # other weights: everything must come from disk
    fit(resumed, synth_splits, cfg, tmp_path / "cut", resume=True, progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # the handed-over weights are the average, not the last step's
    plain = model()
    fit(plain, synth_splits, TrainConfig(**{**cfg.__dict__, "ema_decay": 0.0}),
        tmp_path / "plain", progress=False)
    assert not torch.equal(plain.state_dict()["head.weight"], full.state_dict()["head.weight"])


def test_a_mixing_recipe_needs_an_even_batch_per_process(tmp_path, synth_splits):
    cfg = TrainConfig(epochs=1, batch_size=15).with_recipe("deit")
    with pytest.raises(ConfigError, match="even"):
        fit(build_model("fmnist_vit_tiny"), synth_splits, cfg, tmp_path, progress=False)


def _tree(root, n=6):
    return image_folder(root, size=(48, 40), n=(n, 2), suffix=".jpg")


def test_augmented_imagefolder_batches_do_not_depend_on_worker_processes(tmp_path):
    _tree(tmp_path)
    splits = load_splits("imagefolder", tmp_path, img_size=32, calib_size=2,
                         data_config={"mean": [0.5] * 3, "std": [0.5] * 3})
    deit = RECIPES["deit"]
    train = training_set(splits, augment=True, rand_augment=deit["rand_augment"],
                         random_erasing=deit["random_erasing"])
    assert train is not splits.train and splits.train.dataset.transform is not None

    def epoch_batches(workers: int, epoch: int) -> list[torch.Tensor]:
        loader = make_loader(train, 4, shuffle=True, seed=7, drop_last=True,
                             num_workers=workers)
        loader.set_epoch(epoch)
        return [x for x, _ in loader]

    one = epoch_batches(0, 1)
    assert all(torch.equal(a, b) for a, b in zip(one, epoch_batches(2, 1)))
    assert all(torch.equal(a, b) for a, b in zip(one, epoch_batches(0, 1)))
    assert not torch.equal(one[0], epoch_batches(0, 2)[0])  # another epoch, other draws
    # evaluation images stay unaugmented: the same every time
    x1, x2 = splits.test[0][0], splits.test[0][0]
    assert torch.equal(x1, x2) and x1.shape == (3, 32, 32)


def test_recipe_on_the_command_line_sets_defaults_that_options_override(tmp_path, capsys):
    torch.manual_seed(0)
    dense = build_model("fmnist_vit_tiny")
    student = prune(dense, ratios_to_plan(vit_shape(dense), Ratios.uniform(4, heads=0.25)))
    import vitprune

    vitprune.save(tmp_path / "teacher", dense, ArchSpec("fmnist_vit_tiny"))
    vitprune.save(tmp_path / "student", student, ArchSpec("fmnist_vit_tiny"),
                  plan=ratios_to_plan(vit_shape(dense), Ratios.uniform(4, heads=0.25)))
    out = tmp_path / "ft"
    argv = ["finetune", "--student", str(tmp_path / "student"), "--teacher",
            str(tmp_path / "teacher"), "--data", "synthetic", "--recipe", "deit", "--mixup", "0.5",
            "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "1", "--quiet",
            "--out", str(out)]
    # RandAugment and random erasing work on image files: on in-memory data they are refused
    # (never recorded without effect), and the rest of the recipe runs without them
    assert main(argv) == 2 and not out.exists()
    assert main([*argv, "--rand-augment", "", "--random-erasing", "0"]) == 0
    cfg = torch.load(out / "checkpoint.pt", weights_only=True)["config"]
    assert cfg["recipe"] == "deit" and cfg["mixup"] == 0.5 and cfg["cutmix"] == 1.0
    assert cfg["rand_augment"] == "" and cfg["random_erasing"] == 0
    assert cfg["label_smoothing"] == RECIPES["deit"]["label_smoothing"] and cfg["lr"] == FINETUNE.lr


def test_deits_randaugment_runs_with_current_pillow():
    """timm's increasing posterize asks Pillow for 0 bits at magnitude 10, which Pillow 11+
    refuses; the recipe's transform keeps 0 bits as black, as older Pillow did."""
    import random

    from PIL import Image
    from timm.data import create_transform

    from vitprune.data.imagefolder import _keep_bits, _pillow_safe

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    assert np.asarray(_keep_bits(img, 0)).max() == 0 and _keep_bits(img, 8) is img

    def make():
        return create_transform(input_size=(3, 32, 32), is_training=True,
                                auto_augment=RECIPES["deit"]["rand_augment"])

    raw, safe, failed = make(), _pillow_safe(make()), []
    for seed in range(2000):
        random.seed(seed)
        try:
            raw(img)
        except ValueError:
            failed.append(seed)
    for seed in failed:
        random.seed(seed)
        safe(img)  # never raises
    assert 0 < len(failed) < 200  # with the pinned Pillow the rare max-magnitude draws fail


def test_feature_distillation_moves_a_backbones_embedding_towards_its_teachers(synth_splits,
                                                                                tmp_path):
    """kd_loss='cosine' with kd_alpha=1 on a model without a classifier: the loss is
    1 - cos(student, teacher) of the embeddings, no label is read, and fine-tuning raises the
    pruned backbone's feature fidelity."""
    from vitprune.adapters import vit_shape
    from vitprune.models import build_model
    from vitprune.pipeline import MaskedAccuracy, calibration_batches, finetune
    from vitprune.search import Ratios, ratios_to_plan
    from vitprune.surgery import prune
    from vitprune.train.distill import kd_loss

    s, t = torch.randn(4, 8), torch.randn(4, 8)
    assert kd_loss(s, t, kind="cosine").item() == pytest.approx(
        (1 - torch.nn.functional.cosine_similarity(s, t, dim=-1)).mean().item())
    torch.manual_seed(0)
    dense = build_model("vit_small_patch14_dinov2", img_size=28, patch_size=7, in_chans=1,
                        depth=2, embed_dim=32, num_heads=4, num_classes=0, init_values=1.0).eval()
    shape = vit_shape(dense)
    small = prune(dense, ratios_to_plan(shape, Ratios.uniform(2, 0.5, 0.6), token_blocks=()))
    batches = [(x, torch.full_like(y, -1)) for x, y in calibration_batches(synth_splits, 64)]

    from vitprune.plan import PrunePlan

    teacher = MaskedAccuracy(dense, batches, objective="features")
    target = teacher.dense  # the teacher's features on the calibration images
    teacher.close()

    def fidelity(model):
        probe = MaskedAccuracy(model, batches, objective="features")
        probe.dense = target
        value = probe(PrunePlan.dense(vit_shape(model)))
        probe.close()
        return value

    before = fidelity(small)
    cfg = TrainConfig(epochs=2, lr=2e-3, kd_alpha=1.0, kd_loss="cosine", max_steps_per_epoch=8)
    finetune(small, dense, synth_splits, cfg, tmp_path / "ft", progress=False)
    assert fidelity(small) > before
    with pytest.raises(ConfigError, match="kd_hard"):
        TrainConfig(kd_alpha=1.0, kd_loss="cosine", kd_hard=True)
