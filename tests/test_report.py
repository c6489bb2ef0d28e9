"""The compression report (``vitprune/report.py``): its table is computed from the evaluation
record, speed-ups as ratios of the rows measured in one run."""

from vitprune.records import Evaluation
from vitprune.report import _summary

ROW = {"test_loss": 0.3, "test_images": 1000, "params": 3_000_000}
CONFIG = {"budget": "0.6", "criterion": "hsic", "method": "gp-ei", "trials": 50, "epochs": 8,
          "kd_alpha": 0.5, "kd_temperature": 2.0, "bench_batches": [1, 64]}


def _timed(latency_b1: float, throughput_b64: float) -> dict:
    return {"cpu": {"batch1": {"latency_ms": latency_b1, "throughput": 1e3 / latency_b1},
                    "batch64": {"latency_ms": 64e3 / throughput_b64,
                                "throughput": throughput_b64}}}


def _evaluation(device_type: str = "cpu") -> Evaluation:
    return Evaluation.from_dict({
        "rows": {"dense": {**ROW, "test_top1": 90.0, "macs": 100_000_000, **_timed(4.0, 1000.0)},
                 "pruned": {**ROW, "test_top1": 80.0, "macs": 60_000_000},
                 "finetuned": {**ROW, "test_top1": 89.5, "macs": 60_000_000,
                               **_timed(2.0, 1500.0)}},
        "threads": 2, "device_type": device_type, "device_name": "a CPU", "test_images": 1000,
        "finetune_history": []})


def test_the_table_reports_ratios_of_the_rows_and_the_accuracy_change():
    text = "\n".join(_summary(_evaluation(), CONFIG))
    assert "| pruned + fine-tuned | 60.0 | 60.0% | 3.000 | 89.50 | 2.00 | 1500 | 2.00x / 1.50x |" in text
    assert "| pruned, before fine-tuning | 60.0 | 60.0% | 3.000 | 80.00 | - | - | - |" in text
    assert "Accuracy change after fine-tuning: -0.50 points; before fine-tuning: -10.00." in text
    assert "CPU speed with 2 threads" in text


def test_speed_measured_elsewhere_is_named_and_not_read_as_the_cpus():
    text = "\n".join(_summary(_evaluation("cuda"), CONFIG))
    assert "Speed on a CPU (bf16 autocast)" in text  # the recorded device name
    assert "| dense | 100.0 | 100.0% | 3.000 | 90.00 | - | - | - |" in text  # no cuda rows
