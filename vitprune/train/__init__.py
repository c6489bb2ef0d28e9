"""Training, evaluation and (later) distillation fine-tuning."""

from .loop import TrainConfig, evaluate, fit

__all__ = ["TrainConfig", "evaluate", "fit"]
