"""Training, evaluation and distillation fine-tuning (single process or torchrun)."""

from .distill import Distiller, kd_loss
from .loop import TrainConfig, evaluate, fit

__all__ = ["Distiller", "TrainConfig", "evaluate", "fit", "kd_loss"]
