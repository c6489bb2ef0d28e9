import io
import sys

from vitprune.progress import min_interval


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_bars_redraw_rarely_in_a_log_file_and_smoothly_in_a_terminal(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert min_interval() == 30.0
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert min_interval() == 0.1


def test_a_training_run_logged_to_a_file_does_not_redraw_every_step(monkeypatch, tmp_path, synth_splits):
    """The loss postfix must not force a redraw per step (tqdm's set_postfix refreshes by default)."""
    import torch

    from vitprune.models import build_model
    from vitprune.train import TrainConfig, fit

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3, max_steps_per_epoch=12, augment=False)
    fit(build_model("fmnist_vit_tiny"), synth_splits, cfg, tmp_path, progress=True)
    redraws = log.getvalue().count("\r")
    assert 0 < redraws < 12, redraws  # one line at the start and one at the close, not one per step
