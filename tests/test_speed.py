"""Speed measurement: structure and bookkeeping only (never a timed assertion)."""

import torch

from vitprune.speed import compare, measure


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls, self.shapes = 0, set()

    def forward(self, x):
        self.calls += 1
        self.shapes.add(tuple(x.shape))
        return x.sum()


def test_compare_times_every_model_the_same_number_of_times():
    a, b = _Counting(), _Counting()
    res = compare({"a": a, "b": b}, (1, 4, 4), 3, rounds=4, reps=2, warmup=1)
    assert a.calls == b.calls == 1 + 4 * 2
    assert a.shapes == b.shapes == {(3, 1, 4, 4)}
    for r in res.values():
        assert r["latency_ms"] > 0 and r["batch"] == 3
        assert abs(r["throughput"] - 3 / (r["latency_ms"] / 1e3)) < 1e-6 * r["throughput"]


def test_measure_restores_the_thread_count():
    before = torch.get_num_threads()
    m = _Counting()
    res = measure(m, (1, 4, 4), 2, warmup=1, repeats=3, threads=before + 1)
    assert torch.get_num_threads() == before
    assert m.calls == 4 and res["threads"] == before + 1 and res["batch"] == 2
