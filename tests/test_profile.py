"""Building latency tables (``vitprune/profile.py``): the grid covers the model, each cell keeps
its fastest pass, and the calibration fit falls back to a ratio when its line would predict no
time. No test asserts a measured time."""

from __future__ import annotations

import numpy as np
import pytest

from vitprune.adapters import vit_shape


def test_the_table_covers_the_model(table, tiny):
    shape = vit_shape(tiny)
    assert table.heads == tuple(range(1, shape.blocks[0].heads + 1))
    assert table.neurons[-1] == shape.blocks[0].mlp_hidden
    assert table.tokens[0] == shape.num_prefix + 1
    assert table.tokens[-1] == shape.num_prefix + shape.num_patches
    assert table.meta["batch"] == 2 and table.meta["threads"] == 1
    assert len(table.meta["calibration"]) == 5  # the dense model and four pruned ones
    assert table.scale > 0


def test_a_calibration_that_would_predict_no_time_falls_back_to_a_ratio():
    from vitprune.profile import fit_calibration

    points = [(10.0, 4.0), (20.0, 6.0), (30.0, 8.0)]  # measured = 5 * parts - 10
    assert fit_calibration(points, floor=3.0) == pytest.approx((5.0, -10.0))  # 5 ms left
    scale, offset = fit_calibration(points, floor=1.0)  # the line would say -5 ms
    assert offset == 0.0 and scale == pytest.approx(np.median([10 / 4, 20 / 6, 30 / 8]))


def test_each_cell_keeps_its_fastest_pass_and_every_half_is_timed_at_every_token_count():
    import torch

    from vitprune.profile import _time_grid

    calls = []

    def timer(fn, *args):  # pass 1 times everything at 5 ms, pass 2 at 3 ms but one cell at 9
        calls.append((fn, args[0].shape[1]))
        second = len(calls) > 2 * 4  # a pass: 2 token counts x (2 attention, 1 MLP, selection)
        return 9.0 if (second and fn == "a1" and args[0].shape[1] == 4) else (3.0 if second else 5.0)

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    halves = {"attn": ["a0", "a1"], "mlp": ["m0"], "drop": []}
    attn, mlp, select, drop = _time_grid(timer, halves, "sel", (3, 4), 2, bar, (2, 8, 24), "cpu",
                                         torch.float32)
    assert len(calls) == 2 * 2 * (2 + 1 + 1)  # passes x tokens x (attention, MLP, selection)
    assert attn.tolist() == [[3.0, 3.0], [3.0, 5.0]]  # the slow second pass kept the first's 5
    assert mlp.tolist() == [[3.0, 3.0]] and select.tolist() == [3.0, 3.0]
    assert np.isinf(drop).all()  # no dropped half to time
    assert bar.n == len(calls)


@pytest.mark.parametrize("bad", [{"batch": 0}, {"dtype": "float16"}, {"token_points": 1},
                                 {"neuron_points": 1}, {"neuron_multiple": 0}, {"repeats": 0}])
def test_the_command_settings_and_the_builder_refuse_alike(tiny_vit, bad):
    """One check: LatencyTableSettings and build_table refuse the same values, same words."""
    from vitprune.config import LatencyTableSettings
    from vitprune.errors import ConfigError
    from vitprune.profile import build_table

    with pytest.raises(ConfigError) as settings:
        LatencyTableSettings(**bad)
    with pytest.raises(ConfigError) as builder:
        build_table(tiny_vit, **{"batch": 1, **bad}, progress=False)
    assert str(settings.value) == str(builder.value) and next(iter(bad)) in str(builder.value)


def test_a_swin_stage_times_its_plain_and_its_shifted_windows(monkeypatch):
    """A Swin stage alternates plain and shifted windows (a roll and a mask more): its grid
    averages the attention of both kinds, timed on the stage's first two blocks."""
    import vitprune.profile as profile
    from vitprune.models import build_model

    model = build_model("swin_tiny_patch4_window7_224", img_size=28, patch_size=2, in_chans=1,
                        embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=7,
                        num_classes=10).eval()
    shifts, real = [], profile._block

    def record(adapter, block, *args, **kwargs):
        if kwargs.get("heads") is not None:
            shifts.append(tuple(block.shift_size))
        return real(adapter, block, *args, **kwargs)

    monkeypatch.setattr(profile, "_block", record)
    table = profile.build_table(model, batch=2, neuron_points=2, repeats=1, passes=1,
                                calibration_plans=2, progress=False)
    assert len(table.stages) == 2
    assert (0, 0) in shifts and any(s != (0, 0) for s in shifts)
