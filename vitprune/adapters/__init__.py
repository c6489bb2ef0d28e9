"""The only code that knows timm's ViT internals (blocks, attention, MLP, prefix tokens)."""

from .timm_vit import check_prunable, data_config, input_shape, token_stage, vit_shape

__all__ = ["check_prunable", "data_config", "input_shape", "token_stage", "vit_shape"]
