"""Typed records that stages hand each other and write as JSON: the evaluation of a compression
run (``eval.json``), its rows (one per model) and the fine-tuning history.

Each record round-trips through :meth:`to_dict` / :meth:`from_dict` to the JSON layout the run
directories have always held, so runs written before the records existed read back; the CLI, the
report and the benchmarks read these fields instead of nested dictionaries.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

_ROW = ("test_images", "macs", "params")
# measured where they apply: top-1 and loss for a classifier; for a model without one (a
# backbone) the fidelity of its features to the dense model's and, on labelled images, a k-NN
# top-1 (vitprune.train.features)
_OPTIONAL = ("test_top1", "test_loss", "calib_top1", "test_fidelity", "calib_fidelity",
             "test_knn_top1")


@dataclass(frozen=True)
class EvalRow:
    """One model's evaluation.

    Attributes:
        test_images: images in the test split.
        macs, params: MACs per image and parameters (counted from the tensors).
        test_top1, test_loss: on the test split (top-1 in %); None for a model without a
            classifier.
        calib_top1: top-1 on the calibration split, like with like with the fine-tuning curve
            (None in runs made before it was measured, and for a backbone).
        test_fidelity, calib_fidelity: a backbone's feature fidelity to the dense model
            (100 x mean cosine similarity) on the test and calibration splits; None for a
            classifier.
        test_knn_top1: a backbone's k-NN top-1 on the test split against the labelled
            calibration images (None: a classifier, or images without labels).
        speed: by device type (``cpu``, ``cuda``), by ``batch<B>``: the measurement
            (``latency_ms``, ``throughput`` ...); empty for a model that was not timed.
    """

    test_images: int
    macs: int
    params: int
    test_top1: float | None = None
    test_loss: float | None = None
    calib_top1: float | None = None
    test_fidelity: float | None = None
    calib_fidelity: float | None = None
    test_knn_top1: float | None = None
    speed: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def backbone(self) -> bool:
        """A model without a classifier (measured by its feature fidelity)."""
        return self.test_top1 is None

    @property
    def quality(self) -> float:
        """The row's headline measure: test top-1, or a backbone's test feature fidelity."""
        return self.test_fidelity if self.backbone else self.test_top1

    def timed(self, kind: str, batch: int) -> dict[str, Any] | None:
        """The measurement on device type ``kind`` at ``batch`` (None: not timed)."""
        return self.speed.get(kind, {}).get(f"batch{batch}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {k: getattr(self, k) for k in (*_OPTIONAL[:2], *_ROW)}
        if self.backbone:
            del d["test_top1"], d["test_loss"]
        d.update({k: getattr(self, k) for k in _OPTIONAL[2:] if getattr(self, k) is not None})
        return {**d, **self.speed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalRow:
        speed = {k: v for k, v in d.items() if k not in (*_ROW, *_OPTIONAL) and isinstance(v, dict)}
        return cls(**{k: d[k] for k in _ROW}, **{k: d.get(k) for k in _OPTIONAL}, speed=speed)


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training or fine-tuning: its mean training loss, the calibration top-1 and
    loss after it (for a model without a classifier: its feature fidelity to the teacher on the
    calibration split instead), and its wall time (s)."""

    epoch: int
    train_loss: float
    calib_top1: float | None
    calib_loss: float | None
    seconds: float
    calib_fidelity: float | None = None

    @property
    def quality(self) -> float:
        """Calibration top-1, or a backbone's calibration feature fidelity."""
        return self.calib_top1 if self.calib_fidelity is None else self.calib_fidelity

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.calib_fidelity is None:
            del d["calib_fidelity"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        need = ("epoch", "train_loss", "seconds")
        return cls(**{f.name: d[f.name] if f.name in need else d.get(f.name)
                      for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class Evaluation:
    """The evaluation stage of a compression run (``eval.json``).

    Attributes:
        rows: ``dense``, ``pruned`` (before fine-tuning) and ``finetuned``.
        threads: CPU threads the speed was measured with.
        device_type, device_name: where the models were evaluated and timed.
        finetune_history: one record per fine-tuning epoch.
        test_images: images in the test split.
        latency: under a latency budget, the table's prediction beside the measured time.
    """

    rows: dict[str, EvalRow]
    threads: int
    device_type: str
    device_name: str | None
    finetune_history: tuple[EpochRecord, ...]
    test_images: int
    latency: dict[str, Any] | None = None

    @property
    def macs_kept(self) -> float:
        """The fine-tuned model's MACs as a fraction of the dense model's."""
        return self.rows["finetuned"].macs / self.rows["dense"].macs

    def to_dict(self) -> dict[str, Any]:
        d = {"rows": {k: r.to_dict() for k, r in self.rows.items()}, "threads": self.threads,
             "device_type": self.device_type, "device_name": self.device_name,
             "finetune_history": [h.to_dict() for h in self.finetune_history],
             "test_images": self.test_images}
        return d if self.latency is None else {**d, "latency": self.latency}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        """Read :meth:`to_dict`'s layout (runs made before the device was recorded ran on the
        CPU)."""
        return cls(rows={k: EvalRow.from_dict(r) for k, r in d["rows"].items()},
                   threads=d["threads"], device_type=d.get("device_type", "cpu"),
                   device_name=d.get("device_name"),
                   finetune_history=tuple(EpochRecord.from_dict(h) for h in d["finetune_history"]),
                   test_images=d["test_images"], latency=d.get("latency"))
