import pytest
import torch

from vitprune.data import make_loader
from vitprune.errors import OutputError
from vitprune.models import build_model
from vitprune.train import TrainConfig, evaluate, fit
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
