"""Training, evaluation and distillation fine-tuning (single process or torchrun)."""

from .distill import Distiller, kd_loss
from .loop import EVAL_BATCH, FINETUNE, RECIPES, TrainConfig, evaluate, fit

__all__ = ["EVAL_BATCH", "FINETUNE", "RECIPES", "Distiller", "TrainConfig", "evaluate", "fit", "kd_loss"]
