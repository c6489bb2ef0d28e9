"""Knowledge distillation from the dense model (the teacher) into the pruned one (the student)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapters import logits_module
from ..errors import ConfigError, require


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None, *,
            alpha: float = 1.0, temperature: float = 1.0, hard: bool = False,
            label_smoothing: float = 0.0, kind: str = "kl") -> torch.Tensor:
    """``(1 - alpha) * CE(labels, s) + alpha * D(t, s)``, averaged over the batch.

    ``D`` is soft distillation, ``T^2 * KL(softmax(t / T) || softmax(s / T))`` (the ``T^2`` keeps
    gradient scale independent of ``T``), or with ``hard=True`` the cross-entropy against the
    teacher's arg-max class (DeiT's hard distillation), or with ``kind="cosine"``
    ``1 - cos(s, t)``: feature distillation of outputs that are embeddings (per token, averaged,
    for (B, N, D) outputs), or with ``kind="mse"`` their mean squared difference.

    Args:
        student: student logits (B, classes).
        teacher: teacher logits (B, classes); no gradient flows into them.
        labels: true classes (B,), or soft targets (B, classes) of mixed images; needed when
            ``alpha < 1``.
        alpha: weight of the distillation term in [0, 1].
        temperature: softening temperature T > 0 (soft distillation only).
        label_smoothing: applied to the label cross-entropy term.
    """
    require(0.0 <= alpha <= 1.0, "alpha", f"must be in [0, 1], got {alpha!r}")
    require(temperature > 0, "temperature", f"must be > 0, got {temperature!r}")
    teacher = teacher.detach().float()
    student = student.float()
    if kind == "cosine":
        distill = (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    elif kind == "mse":
        distill = F.mse_loss(student, teacher)
    elif hard:
        distill = F.cross_entropy(student, teacher.argmax(-1))
    else:
        t = temperature
        distill = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                           reduction="batchmean", log_target=True) * t * t
    if alpha >= 1.0:
        return distill
    if labels is None:
        raise ConfigError("labels", "are needed when alpha < 1 (the label term has weight "
                          "1 - alpha); pass them, or set alpha to 1")
    # soft targets (B, classes) from Mixup/CutMix carry their own smoothing
    smoothing = 0.0 if labels.ndim == 2 else label_smoothing
    ce = F.cross_entropy(student, labels.float() if labels.ndim == 2 else labels,
                         label_smoothing=smoothing)
    return (1.0 - alpha) * ce + alpha * distill


def classifier(model: torch.nn.Module) -> torch.nn.Linear:
    """The linear classifier whose input is ``model``'s pooled features (timm's and T2T-ViT's
    ``head``, Hugging Face's ``classifier``).

    Raises:
        ConfigError: (field ``kd_features``) the model has no such layer.
    """
    for name in ("head", "classifier"):
        layer = getattr(model, name, None)
        if isinstance(layer, torch.nn.Linear):
            return layer
    raise ConfigError("kd_features", f"needs a linear classifier (a 'head' or 'classifier' "
                      f"layer) to read the pooled features at, and {type(model).__name__} has "
                      "none; leave --kd-features at 0")


class _Tap:
    """Keeps the input of a module's latest forward while attached (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self._handle = module.register_forward_pre_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: tuple) -> None:
        self.value = args[0]

    def remove(self) -> None:
        self._handle.remove()


class Distiller:
    """A training loss ``(logits, labels, images) -> loss`` that runs the frozen teacher.

    The teacher is put in eval mode and run without gradients on the same (augmented) images the
    student sees, so the student matches the teacher's function on them. Its parameters' own
    ``requires_grad`` flags are left as they are: a model pruned from the teacher afterwards must
    still be trainable.

    With ``features > 0`` the loss adds ``features * (1 - cos(f_s, f_t))``, averaged over the
    batch, where ``f`` is the input of each model's classifier (its pooled features), read from
    the forward that made ``logits`` (``student`` is that model; :meth:`close` detaches from
    it when training ends).
    """

    def __init__(self, teacher: torch.nn.Module, *, alpha: float, temperature: float,
                 hard: bool = False, label_smoothing: float = 0.0, kind: str = "kl",
                 features: float = 0.0, student: torch.nn.Module | None = None):
        self.teacher = logits_module(teacher).eval()
        self.alpha, self.temperature, self.hard = alpha, temperature, hard
        self.label_smoothing, self.kind, self.features = label_smoothing, kind, features
        self._student: _Tap | None = None
        self._teacher_head = None
        if features:
            require(student is not None, "student", "is needed to read its features")
            self._teacher_head = classifier(teacher)
            self._student = _Tap(classifier(student))

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        tap = None if self._student is None else _Tap(self._teacher_head)  # this call only
        try:
            with torch.no_grad():
                t = self.teacher(images)
        finally:
            if tap is not None:
                tap.remove()
        loss = kd_loss(logits, t, labels, alpha=self.alpha, temperature=self.temperature,
                       hard=self.hard, label_smoothing=self.label_smoothing, kind=self.kind)
        if tap is None:
            return loss
        return loss + self.features * (1.0 - F.cosine_similarity(
            self._student.value.float(), tap.value.detach().float(), dim=-1)).mean()

    def close(self) -> None:
        """Detach from the student (nothing is left on either model)."""
        if self._student is not None:
            self._student.remove()
            self._student = None
