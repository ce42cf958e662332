"""Exporters: ONNX, TorchScript, Core ML, ExecuTorch and AOTInductor (``pt2``), each followed by a parity check
where one can run.

Every exporter takes an eval-mode model (the training-time model or its :func:`deploy` form) and writes one file.
ONNX, TorchScript, ExecuTorch and ``.pt2`` files are run again on fresh random inputs and compared with PyTorch; a file
that disagrees beyond ``tolerance`` raises :class:`ExportParityError`. Core ML prediction only exists on macOS,
so the Core ML exporter checks the written spec (inputs, outputs, classifier labels) instead.

Each exporter's dependency is an optional extra; a missing one raises a one-line ``ImportError`` that names it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.classes import resolve_class_names
from ..data.constants import IMAGENET_MEAN, IMAGENET_STD
from ..models.layers import check_img_size
from ..utils.io import atomic_write_bytes
from ..utils.optional import require
from .inductor import compile_aot

FORMATS = ("onnx", "torchscript", "coreml", "executorch", "pt2")


class ExportParityError(ValueError):
    """The exported file's outputs differ from PyTorch's by more than the tolerance."""


@dataclass
class ExportReport:
    format: str
    path: str
    img_size: tuple[int, int]
    batch: str
    size_bytes: int
    seconds: float
    max_abs_diff: float | None = None
    checked_batches: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        h, w = self.img_size
        diff = (
            f", max |diff| vs PyTorch {self.max_abs_diff:.3g} (batches {self.checked_batches})"
            if (self.max_abs_diff is not None)
            else ""
        )
        text = f"wrote {self.path} ({self.format}, {h}x{w}, batch {self.batch}, {self.size_bytes / 1e6:.2f} MB, "
        text += f"{self.seconds:.1f} s){diff}"
        return "\n".join([text] + [f"  {n}" for n in self.notes])


def parse_batch(batch: str | int) -> int | None:
    """``"dynamic"`` -> None, ``"N"`` -> N."""
    if isinstance(batch, int):
        value = batch
    elif str(batch).strip().lower() == "dynamic":
        return None
    else:
        try:
            value = int(batch)
        except ValueError:
            raise ValueError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}") from None
    if value < 1:
        raise ValueError(f"--batch must be 'dynamic' or a positive integer, got {batch!r}")
    return value


def _img_of(model: nn.Module, img_size) -> tuple[int, int]:
    return check_img_size(img_size if img_size is not None else getattr(model, "img_size", 224), "--img-size")


def _inputs(batch: int, img: tuple[int, int], seed: int, in_chans: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans, *img, generator=g)


def _fixed_shape(model: nn.Module, img_size, batch: str | int, why: str) -> tuple[tuple[int, int], int]:
    """(image size, batch) for a format that is compiled for one input shape; ``why`` opens the error line."""
    img, fixed = _img_of(model, img_size), parse_batch(batch)
    if fixed is None:
        raise ValueError(f"{why}; pass --batch N (e.g. --batch 1)")
    return img, fixed


def _check(diff: float, tolerance: float, fmt: str) -> None:
    if not diff <= tolerance:  # also catches NaN
        raise ExportParityError(f"{fmt} export disagrees with PyTorch: max |diff| {diff:.3g} > tolerance {tolerance:g}")


# ---------------------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------------------
#: Opset 20 has a native ``Gelu`` op: one ONNX Runtime kernel instead of the five-op erf formula (Div, Erf, Add,
#: Mul, Mul), which made batch-1 V2-S0 1.28x faster on this CPU (see benchmarks/README.md). Runtimes older than
#: ONNX Runtime 1.17 lack it: pass ``opset=18`` for them.
DEFAULT_OPSET = 20


def write_onnx(
    model: nn.Module,
    example: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
) -> None:
    """The bare export (no checks): ``torch.export``-based exporter, input ``image``, output ``logits``, graph
    optimised by onnxscript. The benchmark exports timm's models with this too, so both sides get the same
    exporter and settings. A tuple ``example`` (a module of several inputs and outputs, as the latency tables
    export many blocks at once): inputs ``image0, image1, ...``, outputs ``logits0, logits1, ...``."""
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    many = isinstance(example, tuple)
    args = example if many else (example,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            input_names=[f"image{i}" for i in range(len(args))] if many else ["image"],
            output_names=[f"logits{i}" for i in range(len(args))] if many else ["logits"],
            dynamic_shapes=dynamic,
            opset_version=max(opset, 18),  # the dynamo exporter's lowest opset is 18
            optimize=True,
            verbose=False,
        )
    program.save(str(path))


def export_onnx(
    model: nn.Module,
    path: str | Path,
    img_size=None,
    batch: str | int = "dynamic",
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export with the ``torch.export``-based exporter (input ``image``, output ``logits``), optimise the graph
    with onnxscript's optimizer, then run the file in ONNX Runtime and compare with PyTorch."""
    onnx = require("onnx")
    ort = require("onnxruntime")
    require("onnxscript")
    if opset < 17:
        raise ValueError(f"--opset must be 17 or newer, got {opset}")
    img, fixed = _img_of(model, img_size), parse_batch(batch)
    path = check_output_path(path)
    model = model.eval()
    example = _inputs(fixed or 2, img, 0, getattr(model, "in_chans", 3))
    start = time.perf_counter()
    write_onnx(model, example, path, opset, dynamic_batch=fixed is None)
    seconds = time.perf_counter() - start
    proto = onnx.load(str(path), load_external_data=False)
    report = ExportReport("onnx", str(path), img, "dynamic" if fixed is None else str(fixed), _size(path), seconds)
    report.notes.append(f"opset {proto.opset_import[0].version}, {len(proto.graph.node)} nodes")
    diff, batches = onnx_parity(model, path, img, fixed, ort)
    report.max_abs_diff, report.checked_batches = diff, batches
    _check(diff, tolerance, "ONNX")
    return report


def onnx_parity(model: nn.Module, path: Path, img, fixed: int | None, ort=None) -> tuple[float, list[int]]:
    ort = ort or require("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batches = [fixed] if fixed else [1, 3]
    diff = 0.0
    for i, b in enumerate(batches):
        x = _inputs(b, img, 100 + i, getattr(model, "in_chans", 3))
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(["logits"], {"image": x.numpy()})[0]
        diff = max(diff, float(abs(out - ref).max()))
    return diff, batches


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


# ---------------------------------------------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------------------------------------------
def export_torchscript(
    model: nn.Module, path: str | Path, img_size=None, batch: str | int = "dynamic", tolerance: float = 1e-4
) -> ExportReport:
    """``torch.jit.trace`` (with torch's own trace check), save, load back and compare on fresh inputs."""
    img, fixed = _img_of(model, img_size), parse_batch(batch)
    path = check_output_path(path)
    model = model.eval()
    chans = getattr(model, "in_chans", 3)
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(
            model,
            _inputs(fixed or 2, img, 0, chans),
            check_trace=True,
            check_inputs=[(_inputs(fixed or 3, img, 1, chans),)],
        )
    traced.save(str(path))
    seconds = time.perf_counter() - start
    loaded = torch.jit.load(str(path))
    batches = [fixed] if fixed else [1, 4]
    diff = 0.0
    for i, b in enumerate(batches):
        x = _inputs(b, img, 200 + i, chans)
        with torch.no_grad():
            diff = max(diff, float((loaded(x) - model(x)).abs().max()))
    report = ExportReport(
        "torchscript", str(path), img, "dynamic" if fixed is None else str(fixed), _size(path), seconds, diff, batches
    )
    _check(diff, tolerance, "TorchScript")
    return report


# ---------------------------------------------------------------------------------------------------------------
# Core ML
# ---------------------------------------------------------------------------------------------------------------
class _CoreMLInput(nn.Module):
    """Undo the per-channel part of ImageNet normalisation that Core ML's scalar ``scale`` cannot express.

    Core ML's ImageType computes ``scale * pixel + bias[c]`` with one scale for all channels. We use the mean std
    there and multiply channel c by ``std_mean / std[c]`` here, which gives exactly ``(pixel/255 - mean) / std``.
    """

    def __init__(self, model: nn.Module, channel_gain: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("gain", channel_gain.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.gain)


def imagenet_labels(num_classes: int) -> list[str]:
    """Class labels for a model without names of its own: the ImageNet-1k names (``"tench, Tinca tinca"``, from
    :mod:`efficientformer.data.classes`, the one class-name source) for 1000 classes, else ``class_i``."""
    return resolve_class_names(num_classes)


def check_output_path(path: str | Path, directory: bool = False, flag: str = "--output") -> Path:
    """Fail in a moment, not after the export's work, when ``path`` cannot be written: its folder cannot be
    created or written to, or it names a folder where a file is due (or a file where a ``.mlpackage`` folder is).
    Returns the path; one-line ``ValueError`` naming the option ``flag`` to change otherwise."""
    path = Path(path).expanduser()
    if path.exists() and path.is_dir() != directory:
        kind = "a folder" if path.is_dir() else "a file"
        raise ValueError(f"{flag} {path} is {kind}; give a path for the new {'folder' if directory else 'file'}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(
            f"cannot write the export to {parent} ({err.strerror or err}); choose another {flag}"
        ) from None
    return path


def export_coreml(
    model: nn.Module,
    path: str | Path,
    img_size=None,
    batch: str | int = "dynamic",
    fp16: bool = False,
    labels: list[str] | None = None,
    max_batch: int = 64,
) -> ExportReport:
    """An ``mlprogram`` ``.mlpackage`` with an RGB image input that normalises itself and class labels attached."""
    ct = require("coremltools")
    img, fixed = _img_of(model, img_size), parse_batch(batch)
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise ValueError(f"a Core ML mlprogram is saved as a .mlpackage directory; got --output {path}")
    check_output_path(path, directory=True)
    model = model.eval()
    num_classes = int(getattr(model, "num_classes", 1000))
    labels = [str(n) for n in labels] if labels is not None else imagenet_labels(num_classes)
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a model with {num_classes} classes; give one per class")
    std = torch.tensor(IMAGENET_STD)
    std_mean = float(std.mean())
    wrapped = _CoreMLInput(model, std_mean / std).eval()
    start = time.perf_counter()
    # torch.export, not jit.trace: a trace of the eval V2 model records the stride-2 attention's shape arithmetic
    # as aten::Int ops on 1-element tensors, which coremltools cannot convert ("only 0-dimensional arrays can be
    # converted to Python scalars"). An example batch of 2 keeps a dynamic batch from being specialised to 1.
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}} if fixed is None else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.export.export(wrapped, (_inputs(fixed or 2, img, 0),), dynamic_shapes=dynamic)
        traced = traced.run_decompositions({})
    batch_dim = fixed if fixed else ct.RangeDim(lower_bound=1, upper_bound=max_batch, default=1)
    image = ct.ImageType(
        name="image",
        shape=(batch_dim, 3, *img),
        scale=1.0 / (255.0 * std_mean),
        bias=[-m / std_mean for m in IMAGENET_MEAN],
        color_layout=ct.colorlayout.RGB,
    )
    mlmodel = ct.convert(
        traced,
        inputs=[image],
        classifier_config=ct.ClassifierConfig(labels),
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS16,
    )
    mlmodel.short_description = f"{getattr(model, 'name', 'efficientformer')} ImageNet classifier"
    if path.exists():
        shutil.rmtree(path)
    mlmodel.save(str(path))
    report = ExportReport(
        "coreml", str(path), img, "dynamic" if fixed is None else str(fixed), _size(path), time.perf_counter() - start
    )
    summary = coreml_spec_summary(path)
    report.notes.append(
        f"inputs {summary['inputs']}, outputs {summary['outputs']}, {summary['num_ops']} ops; "
        "prediction needs macOS, so only the spec is checked here"
    )
    return report


def coreml_spec_summary(path: str | Path) -> dict:
    """Inputs, outputs, op counts and labels of a saved Core ML model (works on Linux)."""
    ct = require("coremltools")
    spec = ct.utils.load_spec(str(path))
    desc = spec.description
    ops: dict[str, int] = {}
    if spec.WhichOneof("Type") == "mlProgram":
        for func in spec.mlProgram.functions.values():
            for block in func.block_specializations.values():
                for op in block.operations:
                    ops[op.type] = ops.get(op.type, 0) + 1
    labels = (
        list(spec.neuralNetworkClassifier.stringClassLabels.vector)
        if spec.WhichOneof("Type") == "neuralNetworkClassifier"
        else _mlprogram_labels(spec)
    )
    img_in = desc.input[0].type
    flexible = None
    if img_in.WhichOneof("Type") == "imageType":
        it = img_in.imageType
        flexible = it.WhichOneof("SizeFlexibility")
    return {
        "spec_type": spec.WhichOneof("Type"),
        "spec_version": spec.specificationVersion,
        "inputs": [i.name for i in desc.input],
        "input_types": [i.type.WhichOneof("Type") for i in desc.input],
        "outputs": [o.name for o in desc.output],
        "num_labels": len(labels),
        "labels": labels,
        "ops": ops,
        "num_ops": sum(ops.values()),
        "image_flexibility": flexible,
    }


def _mlprogram_labels(spec) -> list[str]:
    """Labels of an mlprogram classifier live in a ``classify`` op's constant input."""
    for func in spec.mlProgram.functions.values():
        for block in func.block_specializations.values():
            for op in block.operations:
                if op.type == "classify":
                    for arg in op.inputs.get("classes").arguments:
                        if arg.HasField("value"):
                            value = arg.value.immediateValue
                            if value.tensor.strings.values:
                                items = list(value.tensor.strings.values)
                            else:  # a list of one-string tensors
                                items = [s for v in value.list.values for s in v.immediateValue.tensor.strings.values]
                            return [i.decode() if isinstance(i, bytes) else str(i) for i in items]
    return []


# ---------------------------------------------------------------------------------------------------------------
# ExecuTorch
# ---------------------------------------------------------------------------------------------------------------
def export_executorch(
    model: nn.Module, path: str | Path, img_size=None, batch: str | int = 1, tolerance: float = 1e-4
) -> ExportReport:
    """A ``.pte`` program with the XNNPACK delegate (fixed batch), run back in ExecuTorch's Python runtime."""
    require("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    img, fixed = _fixed_shape(model, img_size, batch, "ExecuTorch's XNNPACK programs have a fixed batch")
    path = check_output_path(path)
    model = model.eval()
    example = _inputs(fixed, img, 0, getattr(model, "in_chans", 3))
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(model, (example,))
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    atomic_write_bytes(path, lambda f: f.write(program.buffer))
    seconds = time.perf_counter() - start
    method = Runtime.get().load_program(str(path)).load_method("forward")
    x = _inputs(fixed, img, 300, getattr(model, "in_chans", 3))
    with torch.no_grad():
        ref = model(x)
    out = method.execute([x])[0]
    diff = float((out - ref).abs().max())
    report = ExportReport("executorch", str(path), img, str(fixed), _size(path), seconds, diff, [fixed])
    report.notes.append("XNNPACK delegate")
    _check(diff, tolerance, "ExecuTorch")
    return report


# ---------------------------------------------------------------------------------------------------------------
# AOTInductor
# ---------------------------------------------------------------------------------------------------------------
def export_pt2(
    model: nn.Module, path: str | Path, img_size=None, batch: str | int = 1, tolerance: float = 1e-4
) -> ExportReport:
    """An AOTInductor ``.pt2`` package (fixed batch and size): the model compiled ahead of time by Inductor with
    freezing, prepacked oneDNN convolutions on x86 (the benchmark's ``inductor-aot`` backend), loadable without
    the model code by ``torch._inductor.aoti_load_package``; loaded back and compared on fresh inputs."""
    img, fixed = _fixed_shape(model, img_size, batch, "AOTInductor packages are compiled for one input shape")
    path = check_output_path(path)
    model = model.eval()
    chans = getattr(model, "in_chans", 3)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = compile_aot(model, _inputs(fixed, img, 0, chans), package_path=path)  # written atomically
    seconds = time.perf_counter() - start
    x = _inputs(fixed, img, 400, chans)
    with torch.no_grad():
        diff = float((runner(x) - model(x)).abs().max())
    report = ExportReport("pt2", str(path), img, str(fixed), _size(path), seconds, diff, [fixed])
    report.notes.append("AOTInductor package (freezing); load with torch._inductor.aoti_load_package(path)")
    _check(diff, tolerance, "AOTInductor")
    return report


def export_model(model: nn.Module, fmt: str, path: str | Path, **kwargs) -> ExportReport:
    """Dispatch to one exporter by name."""
    fmt = fmt.lower()
    if fmt == "onnx":
        kwargs.pop("fp16", None)
        return export_onnx(model, path, **kwargs)
    if fmt == "torchscript":
        kwargs.pop("fp16", None)
        return export_torchscript(model, path, **kwargs)
    if fmt == "coreml":
        kwargs.pop("tolerance", None)
        return export_coreml(model, path, **kwargs)
    if fmt == "executorch":
        kwargs.pop("fp16", None)
        return export_executorch(model, path, **kwargs)
    if fmt == "pt2":
        kwargs.pop("fp16", None)
        return export_pt2(model, path, **kwargs)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
