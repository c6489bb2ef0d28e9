"""Heads, neurons and tokens: physical pruning (a new, smaller model) and masked execution."""

from ..adapters.tokens import TokenSelecting, cls_attention, select_tokens
from .masked import Masker
from .prune import as_plan, count_params, prune, restructure

__all__ = ["Masker", "TokenSelecting", "as_plan", "cls_attention", "count_params", "prune", "restructure",
           "select_tokens"]
