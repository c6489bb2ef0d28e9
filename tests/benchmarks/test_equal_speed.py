"""Equal-speed matching (benchmarks/equal_speed.py): the least-pruned model at least as fast as
the target, found by bisection on a method's own knob."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from equal_speed import match_speedup, speedup  # noqa: E402

from vitprune.models import build_model  # noqa: E402


class _Knob(torch.nn.Module):
    def __init__(self, x: float):
        super().__init__()
        self.x = x


def test_bisection_finds_the_least_pruned_model_that_reaches_the_target():
    built = []

    def build(x):
        built.append(x)
        return _Knob(x)

    def measure(_dense, model):  # a speed-up that grows with the knob: 1 + 2x
        return 1.0 + 2.0 * model.x

    x, got, model = match_speedup(build, None, 1.5, batch=1, iters=10, measure=measure)
    assert 0.25 <= x <= 0.25 + 0.9 / 2 ** 10 and got >= 1.5 and model.x == x
    assert len(built) == len(set(built))  # no candidate is built twice
    assert match_speedup(build, None, 0.5, batch=1, measure=measure)[0] == 0.0  # dense suffices
    with pytest.raises(ValueError, match="below the target"):
        match_speedup(build, None, 5.0, batch=1, measure=measure)


def test_the_speedup_is_dense_time_over_model_time_timed_in_one_comparison(monkeypatch):
    import equal_speed

    calls = []

    def fake_compare(models, shape, batch, **kw):
        calls.append((sorted(models), shape, batch))
        return {"dense": {"latency_ms": 30.0}, "model": {"latency_ms": 12.0}}

    monkeypatch.setattr(equal_speed, "compare", fake_compare)
    model = build_model("fmnist_vit_tiny").eval()
    assert speedup(model, model, batch=8) == pytest.approx(2.5)
    assert calls == [(["dense", "model"], (1, 28, 28), 8)]  # both in one interleaved run


def test_a_group_is_timed_in_one_pass_and_each_model_keeps_its_own_ratio(monkeypatch):
    import equal_speed

    calls = []

    ms = {"dense": 30.0, "a": 10.0, "b": 20.0, "c": 30.0}

    def fake_compare(models, shape, batch, **kw):  # latency: 30 ms dense, 10-30 ms the models
        calls.append(list(models))
        return {k: {"latency_ms": ms[k]} for k in models}

    monkeypatch.setattr(equal_speed, "compare", fake_compare)
    model = build_model("fmnist_vit_tiny").eval()
    got = equal_speed.group_speedup(model, {"a": model, "b": model, "c": model}, batch=4)
    assert got == pytest.approx({"a": 3.0, "b": 1.5, "c": 1.0})  # in the order given
    assert len(calls) == 1 and len(calls[0]) == 4  # dense and the three, one interleaved pass
