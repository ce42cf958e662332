from .base import EfficientFormerBase, ModelSpec
from .checkpoint import LoadReport, load_checkpoint
from .efficientformer import EfficientFormer
from .efficientformer_v2 import EfficientFormerV2
from .factory import ModelPreprocessing, create_model, model_preprocessing
from .facts import FACTS, ModelFacts
from .hub import HubError, push_to_hub, save_pretrained
from .registry import ALIASES, VARIANTS, UnknownModelError, list_models, resolve_name

# The Hub's usual spelling, model.save_pretrained(folder) / model.push_to_hub(repo_id): the same two functions
# (they live in hub.py, which imports base.py, so base.py cannot name them itself).
EfficientFormerBase.save_pretrained = save_pretrained
EfficientFormerBase.push_to_hub = push_to_hub

__all__ = [
    "ALIASES",
    "VARIANTS",
    "EfficientFormer",
    "EfficientFormerBase",
    "EfficientFormerV2",
    "FACTS",
    "HubError",
    "ModelFacts",
    "LoadReport",
    "ModelPreprocessing",
    "ModelSpec",
    "UnknownModelError",
    "create_model",
    "list_models",
    "load_checkpoint",
    "model_preprocessing",
    "push_to_hub",
    "resolve_name",
    "save_pretrained",
]
