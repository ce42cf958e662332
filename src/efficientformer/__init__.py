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
    if name in ("deploy_model", "save_deployed", "load_deployed"):
        # Not called `deploy` here: `efficientformer.deploy` is the subpackage, and the first import of it would
        # replace a root-level function of that name with the module.
        import importlib

        module = importlib.import_module(".deploy", __name__)
        return module.deploy if name == "deploy_model" else getattr(module, name)
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
    "deploy_model",
    "inference_model",
    "load_deployed",
    "save_deployed",
    "list_models",
    "load_checkpoint",
]
