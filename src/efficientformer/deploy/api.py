"""Exporting a model to a file in any format as Python calls: the file name's default suffix per format, and one
export function that takes the deploy form where the model has one and dispatches to the format's exporter
(OpenVINO included). ``efficientformer export`` parses its flags and prints what :func:`export_to_file` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from .export import ExportReport, export_model
from .fuse import deploy, has_deploy_form
from .openvino import export_openvino

#: The suffix an export file gets when its name has none (Core ML writes a folder).
EXTENSIONS = {
    "onnx": ".onnx",
    "torchscript": ".pt",
    "coreml": ".mlpackage",
    "executorch": ".pte",
    "pt2": ".pt2",
    "openvino": ".xml",
}


def export_path(output: str | Path, fmt: str) -> Path:
    """``output``, with the format's suffix (:data:`EXTENSIONS`) when it has none (a Core ML folder keeps its name)."""
    path = Path(output)
    if path.suffix == "" and fmt != "coreml":
        path = path.with_suffix(EXTENSIONS[fmt])
    return path


def export_to_file(
    model: nn.Module,
    fmt: str,
    output: str | Path,
    *,
    deploy_form: bool = False,
    img_size: int | None = None,
    batch: str | int = "dynamic",
    fp16: bool = False,
    labels: Sequence[str] | None = None,
    opset: int | None = None,
    onnx: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> ExportReport:
    """Export ``model`` (eval mode) as ``fmt`` to ``output`` with the format's parity check.

    ``deploy_form``: export the fused inference form (:func:`~.fuse.deploy`); a model without one (timm's) is
    exported as it is, with a note through ``log``. ``fp16`` and ``labels`` (class names; None: ImageNet's for
    1000 classes, else ``class_i``) are Core ML's; ``opset`` is ONNX's (None: the exporter's default); ``onnx``
    converts that existing ONNX file of the model to OpenVINO instead of exporting it again."""
    if deploy_form:
        if has_deploy_form(model):
            model = deploy(model)
        else:
            log(f"note: {type(model).__name__} has no deploy form; exporting it as it is (--deploy skipped)")
    kwargs: dict = {"img_size": img_size, "batch": batch}
    if fmt == "coreml":
        kwargs["fp16"] = fp16
        kwargs["labels"] = labels
    if fmt == "onnx" and opset is not None:
        kwargs["opset"] = opset
    if fmt == "openvino":
        return export_openvino(model, output, onnx=onnx, **kwargs)
    return export_model(model, fmt, output, **kwargs)
