"""Saving and loading models: safetensors weights plus a JSON architecture record."""

from .model_dir import load, resolve_model, save

__all__ = ["load", "resolve_model", "save"]
