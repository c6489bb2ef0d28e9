"""The only code that knows timm's ViT internals (blocks, attention, MLP, prefix tokens)."""

from .timm_vit import vit_shape

__all__ = ["vit_shape"]
