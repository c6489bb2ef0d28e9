"""Training, evaluation and distillation fine-tuning (single process or torchrun)."""

from .distill import Distiller, kd_loss
from .loop import EVAL_BATCH, FINETUNE, TrainConfig, evaluate, fit

__all__ = ["EVAL_BATCH", "FINETUNE", "Distiller", "TrainConfig", "evaluate", "fit", "kd_loss"]
