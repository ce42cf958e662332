"""EfficientFormer (L1, L3, L7) and EfficientFormerV2 (S0, S1, S2, L): models, checkpoints, training, deployment."""

from .models import (
    EfficientFormer,
    EfficientFormerBase,
    EfficientFormerV2,
    LoadReport,
    UnknownModelError,
    create_model,
    list_models,
    load_checkpoint,
)
from .models.checkpoint import CheckpointError


def __getattr__(name: str):
    # Heavier entry points are imported on first use so that `import efficientformer` stays light.
    if name == "inference_model":
        from .inference import inference_model

        return inference_model
    if name in ("deploy", "save_deployed", "load_deployed"):
        import importlib

        return getattr(importlib.import_module(".deploy", __name__), name)
    raise AttributeError(f"module 'efficientformer' has no attribute {name!r}")


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
    "deploy",
    "inference_model",
    "load_deployed",
    "save_deployed",
    "list_models",
    "load_checkpoint",
]
