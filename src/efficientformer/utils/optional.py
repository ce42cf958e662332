"""Optional dependencies: import one, or fail with a one-line message naming the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

#: Top-level module -> the ``pip install efficientformer[EXTRA]`` that provides it.
EXTRAS = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "coremltools": "coreml",
    "executorch": "executorch",
    "openvino": "openvino",
    "nncf": "openvino",
    "submitit": "slurm",
    "pycocotools": "dense",
    "skimage": "search",
}


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise a one-line ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, top)
        raise ImportError(f"{top} is not installed; install it with: pip install efficientformer[{extra}]") from None
