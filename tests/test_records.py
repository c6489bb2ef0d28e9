"""Typed stage records (``vitprune/records.py``): JSON layouts of run directories, both ways."""

from vitprune.records import EpochRecord, EvalRow, Evaluation

ROW = {"test_top1": 90.1, "test_loss": 0.3, "test_images": 10000, "macs": 1200, "params": 3400}
TIMED = {"cpu": {"batch1": {"latency_ms": 2.5, "throughput": 400.0}}}


def test_an_eval_row_keeps_its_speed_by_device_and_batch():
    row = EvalRow.from_dict({**ROW, "calib_top1": 89.0, **TIMED})
    assert (row.test_top1, row.calib_top1, row.macs) == (90.1, 89.0, 1200)
    assert row.timed("cpu", 1)["latency_ms"] == 2.5 and row.timed("cuda", 1) is None
    assert row.to_dict() == {**ROW, "calib_top1": 89.0, **TIMED}
    assert "calib_top1" not in EvalRow.from_dict(ROW).to_dict()  # older rows stay as they were


def test_an_evaluation_written_before_the_device_was_recorded_reads_as_the_cpus():
    old = {"rows": {"dense": {**ROW, **TIMED}, "pruned": ROW,
                    "finetuned": {**ROW, "macs": 600, **TIMED}},
           "threads": 2, "test_images": 10000,
           "finetune_history": [{"epoch": 1, "train_loss": 1.0, "calib_top1": 88.0,
                                 "calib_loss": 0.4, "seconds": 30.0}]}
    ev = Evaluation.from_dict(old)
    assert (ev.device_type, ev.device_name, ev.latency) == ("cpu", None, None)
    assert ev.macs_kept == 0.5
    assert ev.finetune_history == (EpochRecord(1, 1.0, 88.0, 0.4, 30.0),)
    again = Evaluation.from_dict(ev.to_dict())
    assert again == ev
    assert ev.to_dict()["rows"] == old["rows"]
