"""vitprune: multi-dimensional (heads, neurons, tokens) compression of Vision Transformers."""

from .errors import VitpruneError
from .io import load, save
from .models import ArchSpec, build_model

__version__ = "0.1.0"
__all__ = ["ArchSpec", "VitpruneError", "build_model", "load", "save", "__version__"]
