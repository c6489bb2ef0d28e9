"""The results benchmark's bookkeeping: which cells run in which order, and that processes sharing
the cells never run one twice."""

import fcntl
import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import results  # noqa: E402
from results_report import _run_flags  # noqa: E402


def _args(tmp_path, **kw):
    return Namespace(**{"methods": None, "budgets": [0.6, 0.4], "seeds": [0, 1],
                        "runs": tmp_path, **kw})


def test_cells_run_the_issues_methods_first_and_uniform_once(tmp_path):
    order = results.cells(_args(tmp_path))
    names = [(m.name, b, s) for m, b, s in order]
    n_methods = len(results.METHODS)
    n_extra = sum(m.extra for m in results.METHODS)
    # uniform and training-free ToMe have no second seed; the dense reference runs once a
    # seed, at no budget
    assert len(names) == 2 * 2 * n_methods - 2 - 2 - 2
    seed0 = names[:2 * n_methods - 1]  # every method at both budgets, the reference at one
    assert {s for *_, s in seed0} == {0}
    extras = {m.name for m in results.METHODS if m.extra}
    assert {n for n, *_ in seed0[-2 * n_extra:]} == extras  # the extras close each seed
    assert not extras & {n for n, *_ in seed0[:-2 * n_extra]}
    assert ("uniform", 0.6, 1) not in names and ("uniform", 0.6, 0) in names
    dense = [(b, s) for n, b, s in names if n == "dense, same fine-tuning"]
    assert dense == [(0.6, 0), (0.6, 1)]


def test_test_predictions_are_one_class_per_test_image_in_order(synth_splits, tiny_vit):
    import numpy as np
    import torch

    pred = results.test_predictions(tiny_vit, synth_splits)
    assert pred.dtype == np.uint8 and pred.shape == (len(synth_splits.test),)
    from vitprune.pipeline import test_metrics

    labels = torch.as_tensor([int(synth_splits.test[i][1]) for i in range(len(synth_splits.test))])
    top1 = 100.0 * (torch.from_numpy(pred).long() == labels).float().mean().item()
    assert top1 == pytest.approx(test_metrics(tiny_vit, synth_splits)["test_top1"])


def test_a_cell_held_by_another_process_is_skipped(tmp_path, monkeypatch):
    runner = object.__new__(results.Runner)
    runner.args = _args(tmp_path)
    ran = []
    monkeypatch.setattr(results.Runner, "_run", lambda self, m, b, s, cell: ran.append(m.name))
    ours = results.METHODS[0]
    cell = tmp_path / "ours" / "b0.6" / "s0"
    cell.mkdir(parents=True)
    with open(cell / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        runner.run(ours, 0.6, 0)
        assert ran == []
    runner.run(ours, 0.6, 0)  # released: this process takes it
    assert ran == ["ours"]
    (cell / "result.json").write_text("{}")
    runner.run(ours, 0.6, 0)  # finished cells are never run again
    assert ran == ["ours"]


@pytest.mark.parametrize("rows,flags", [
    ([{"seed": 0, "epochs": 1, "kd_alpha": 0.5, "augment": False}], ""),
    ([{"seed": 0, "epochs": 2, "kd_alpha": 1.0, "augment": True},
      {"seed": 1, "epochs": 2, "kd_alpha": 1.0, "augment": True}],
     " --seeds 0 1 --epochs 2 --kd-alpha 1.0 --augment"),
])
def test_the_report_states_the_runs_flags(rows, flags):
    assert _run_flags(rows) == flags
