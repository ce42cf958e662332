"""EfficientFormer (L1, L3, L7) and EfficientFormerV2 (S0, S1, S2, L): models, checkpoints, training, deployment."""

from .deploy import deploy as deploy_model
from .deploy import load_deployed, save_deployed
from .inference import inference_model
from .models import (
    EfficientFormer,
    EfficientFormerBase,
    EfficientFormerV2,
    LoadReport,
    UnknownModelError,
    create_model,
    list_models,
    load_checkpoint,
    model_preprocessing,
    push_to_hub,
    save_pretrained,
)
from .models.checkpoint import CheckpointError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "EfficientFormer",
    "EfficientFormerBase",
    "EfficientFormerV2",
    "LoadReport",
    "UnknownModelError",
    "__version__",
    "create_model",
    "deploy_model",
    "inference_model",
    "load_deployed",
    "save_deployed",
    "list_models",
    "load_checkpoint",
    "model_preprocessing",
    "push_to_hub",
    "save_pretrained",
]
