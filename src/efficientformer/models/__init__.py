from .base import EfficientFormerBase, ModelSpec
from .checkpoint import LoadReport, load_checkpoint
from .efficientformer import EfficientFormer
from .efficientformer_v2 import EfficientFormerV2
from .registry import ALIASES, VARIANTS, UnknownModelError, create_model, list_models, resolve_name

__all__ = [
    "ALIASES",
    "VARIANTS",
    "EfficientFormer",
    "EfficientFormerBase",
    "EfficientFormerV2",
    "LoadReport",
    "ModelSpec",
    "UnknownModelError",
    "create_model",
    "list_models",
    "load_checkpoint",
    "resolve_name",
]
