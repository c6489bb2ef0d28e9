"""Saving and loading models: safetensors weights plus a JSON architecture record."""

from .model_dir import load, resolve_for_data, resolve_model, save

__all__ = ["load", "resolve_for_data", "resolve_model", "save"]
