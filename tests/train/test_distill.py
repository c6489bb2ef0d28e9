"""Distillation loss and fine-tuning of a pruned model from its dense teacher."""

import math

import pytest
import torch

from vitprune.adapters import vit_shape
from vitprune.errors import ModelError
from vitprune.models import build_model
from vitprune.pipeline import finetune
from vitprune.search import Ratios, ratios_to_plan
from vitprune.surgery import prune
from vitprune.train import TrainConfig, fit, kd_loss


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    T, a = 2.0, 0.3
    kl = ce = 0.0
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist()):
        p, q = _softmax(trow, T), _softmax(srow, T)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        ce += -math.log(_softmax(srow, 1.0)[label])
    kl, ce = kl / 2, ce / 2
    expected = (1 - a) * ce + a * T * T * kl
    assert kd_loss(s, t, y, alpha=a, temperature=T).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(s, t, alpha=1.0, temperature=T).item() == pytest.approx(T * T * kl, rel=1e-6)
    # hard distillation: cross-entropy against the teacher's arg-max classes (0 and 0)
    hard = -(math.log(_softmax(s[0].tolist(), 1)[0]) + math.log(_softmax(s[1].tolist(), 1)[0])) / 2
    assert kd_loss(s, t, alpha=1.0, hard=True).item() == pytest.approx(hard, rel=1e-6)
    assert kd_loss(t, t, alpha=1.0, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="labels"):
        kd_loss(s, t, alpha=0.5)


def _pair(seed=0):
    torch.manual_seed(seed)
    teacher = build_model("fmnist_vit_tiny").eval()
    plan = ratios_to_plan(vit_shape(teacher), Ratios((0.5,) * 4, (0.5,) * 4, 0.3))
    return teacher, prune(teacher, plan)


def _kd_on(student, teacher, batch):
    x, y = batch
    with torch.no_grad():
        return kd_loss(student(x), teacher(x), y, alpha=0.5, temperature=2.0).item()


def test_fine_tuning_lowers_the_distillation_loss(tmp_path, synth_splits):
    teacher, student = _pair()
    batch = (synth_splits.train.normalise(synth_splits.train.images[:256]), synth_splits.train.labels[:256])
    before = _kd_on(student.eval(), teacher, batch)
    weights = [v.clone() for v in teacher.state_dict().values()]
    cfg = TrainConfig(epochs=1, batch_size=64, lr=2e-3, kd_alpha=0.5, kd_temperature=2.0,
                      max_steps_per_epoch=6, augment=False)
    hist = finetune(student, teacher, synth_splits, cfg, tmp_path, progress=False)
    assert len(hist) == 1
    assert _kd_on(student.eval(), teacher, batch) < before - 0.05
    assert all(torch.equal(p, q) for p, q in zip(teacher.state_dict().values(), weights))
    # the teacher is not trained, and its flags are untouched: a model pruned from it afterwards
    # (the next budget of a sweep) must still be trainable
    assert all(p.requires_grad for p in teacher.parameters())
    again = prune(teacher, ratios_to_plan(vit_shape(teacher), Ratios((0.25,) * 4, (0.25,) * 4, 0.0)))
    finetune(again, teacher, synth_splits, cfg, tmp_path / "again", progress=False)


def test_a_model_with_nothing_to_train_is_refused(tmp_path, synth_splits):
    teacher, student = _pair()
    student.requires_grad_(False)
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps_per_epoch=1, augment=False, kd_alpha=0.5)
    with pytest.raises(ModelError, match="requires_grad"):
        finetune(student, teacher, synth_splits, cfg, tmp_path, progress=False)


class _Interrupt(Exception):
    pass


class _DyingTeacher(torch.nn.Module):
    """Runs the teacher, and raises once it has been called ``limit`` times."""

    def __init__(self, teacher, limit):
        super().__init__()
        self.teacher, self.limit, self.calls = teacher, limit, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.limit:
            raise _Interrupt
        return self.teacher(x)


def test_resumed_fine_tuning_equals_an_uninterrupted_one(tmp_path, synth_splits):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=2e-3, kd_alpha=0.7, kd_temperature=2.0, seed=3,
                      max_steps_per_epoch=4)
    teacher, full = _pair()
    finetune(full, teacher, synth_splits, cfg, tmp_path / "full", progress=False)

    _, cut = _pair()
    with pytest.raises(_Interrupt):  # dies in epoch 2, after epoch 1's checkpoint
        fit(cut, synth_splits, cfg, tmp_path / "cut", teacher=_DyingTeacher(teacher, 4 + 2),
            progress=False)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    _, resumed = _pair(seed=9)  # other weights: everything must come from the checkpoint
    hist = finetune(resumed, teacher, synth_splits, cfg, tmp_path / "cut", resume=True,
                    progress=False)
    assert [h.epoch for h in hist] == [1, 2, 3]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_incompatible_teacher_is_refused(tmp_path, synth_splits):
    _, student = _pair()
    other = build_model("fmnist_vit_tiny", num_classes=7)
    with pytest.raises(ModelError, match="incompatible"):
        finetune(student, other, synth_splits, TrainConfig(epochs=1, kd_alpha=0.5), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def _pooled(model, x):
    return model.forward_head(model.forward_features(x), pre_logits=True)


def test_the_feature_term_adds_one_minus_the_cosine_of_the_pooled_features():
    from vitprune.train import Distiller

    teacher, student = _pair()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    plain = Distiller(teacher, alpha=0.5, temperature=2.0)
    feat = Distiller(teacher, alpha=0.5, temperature=2.0, features=0.7, student=student)
    logits = student(x)  # the forward the feature term reads
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(_pooled(student, x), _pooled(teacher, x), -1)
    base = plain(logits, y, x)
    got = feat(logits, y, x)
    assert got.item() == pytest.approx(base.item() + 0.7 * (1 - cos).mean().item(), rel=1e-5)
    assert got.item() > base.item() + 1e-4  # a pruned student's features differ from the teacher's
    got.backward()  # the term's gradient reaches the student through its features
    assert student.blocks[0].attn.qkv.weight.grad is not None
    # the teacher is hooked only while it runs; the student until the distiller is closed
    assert not teacher.head._forward_pre_hooks and student.head._forward_pre_hooks
    feat.close()
    assert not student.head._forward_pre_hooks


def test_feature_distillation_trains_and_leaves_no_hook(tmp_path, synth_splits):
    teacher, student = _pair()
    cfg = TrainConfig(epochs=1, batch_size=64, lr=2e-3, kd_alpha=0.5, kd_temperature=2.0,
                      max_steps_per_epoch=4, augment=False, kd_features=1.0)
    x = synth_splits.train.normalise(synth_splits.train.images[:128])
    with torch.no_grad():
        before = torch.nn.functional.cosine_similarity(_pooled(student, x), _pooled(teacher, x),
                                                       -1).mean()
    finetune(student, teacher, synth_splits, cfg, tmp_path, progress=False)
    with torch.no_grad():
        after = torch.nn.functional.cosine_similarity(_pooled(student.eval(), x),
                                                      _pooled(teacher, x), -1).mean()
    assert after > before  # the student's features moved towards the teacher's
    assert not student.head._forward_pre_hooks and not teacher.head._forward_pre_hooks


def test_feature_distillation_settings_are_checked():
    from vitprune.errors import ConfigError
    from vitprune.train import Distiller

    with pytest.raises(ConfigError, match="kd_features"):
        TrainConfig(kd_features=-1.0, kd_alpha=0.5)
    with pytest.raises(ConfigError, match="needs a teacher"):
        TrainConfig(kd_features=1.0, kd_alpha=0.0)
    teacher, _ = _pair()
    backbone = build_model("fmnist_vit_tiny", num_classes=0)  # its head is no linear layer
    with pytest.raises(ConfigError, match="linear classifier"):
        Distiller(teacher, alpha=0.5, temperature=2.0, features=1.0, student=backbone)
