"""vitprune: multi-dimensional (heads, neurons, tokens) compression of Vision Transformers."""

from .errors import VitpruneError
from .io import load, save
from .models import ArchSpec, build_model
from .version import __version__

__all__ = ["ArchSpec", "CompressConfig", "VitpruneError", "build_model", "compress", "load", "save",
           "__version__"]


def __getattr__(name: str):
    # the pipeline pulls in scikit-learn and the search: load it on first use only
    if name in ("compress", "CompressConfig"):
        from . import compression as _module

        return getattr(_module, name)
    raise AttributeError(f"module 'vitprune' has no attribute {name!r}")
