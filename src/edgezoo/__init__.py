"""edgezoo: efficient vision models — pick, understand, train and ship.

Public API (stable): :func:`list_models`, :func:`create_model`, :func:`convert_state_dict`.
"""
from . import models as _models  # noqa: F401  (populates the registry)
from .convert import convert_state_dict
from .factory import create_model
from .registry import list_models

__version__ = "0.1.0"
__all__ = ["__version__", "convert_state_dict", "create_model", "list_models"]
