"""Heads, neurons and tokens: physical pruning (a new, smaller model) and masked execution."""

from .masked import Masker
from .prune import as_plan, prune, restructure
from .tokens import TokenSelectBlock, cls_attention, select_tokens

__all__ = ["Masker", "TokenSelectBlock", "as_plan", "cls_attention", "prune", "restructure",
           "select_tokens"]
