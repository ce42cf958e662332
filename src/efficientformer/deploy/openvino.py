"""OpenVINO, the runtime Intel CPU users deploy with (optional extra ``efficientformer[openvino]``): IR export with a
parity check, fp32 / bf16 / INT8 (NNCF post-training quantisation) backends for the benchmark and the search, and
the INT8 report of ``efficientformer quantize --backend openvino``.

The IR is converted from our ONNX export (:func:`~efficientformer.deploy.export.write_onnx`), not from the PyTorch
module: the two give the same graph after OpenVINO's transformations, but the ONNX path reuses the one exporter
(and its graph clean-ups) every runtime gets and converts in under a second. bf16 is not a file format in OpenVINO
but an execution hint: the IR stays fp32 and the CPU plugin runs it in bf16 where the CPU has native bf16
(AVX512-BF16 or AMX), which is why the ``openvino-bf16`` backend is skipped elsewhere.

INT8: NNCF inserts FakeQuantize on the inputs of every convolution and matrix multiplication (weights per
channel, activations per tensor, asymmetric); the first convolution and the classifier stay in float, as in ONNX
Runtime INT8 (:func:`~efficientformer.deploy.quantize.float_nodes`: the two most sensitive layers). OpenVINO's
CPU plugin runs 60 of V2-S0's 66 convolutions in u8 and turns each GELU between two of them into a JIT-fused
element-wise pass (GELU and requantisation together), where ONNX Runtime runs the GELU in float between a
DequantizeLinear and a QuantizeLinear (docs/deploy.md).
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..utils.machine import bf16_support
from ..utils.optional import require
from ..utils.timing import openvino_compiled, openvino_runner, time_callable
from .export import ExportReport, _check, _fixed_shape, _inputs, _size, check_output_path, write_onnx
from .quantize import logit_agreement
from .registry import Backend, BackendContext, Runner, onnx_file, register_backend

PRECISIONS = ("fp32", "bf16", "int8")


def has_openvino() -> tuple[bool, str]:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False, "openvino is not installed (pip install 'efficientformer[openvino]')"
    return True, ""


def bf16_openvino() -> tuple[bool, str]:
    ok, why = has_openvino()
    return bf16_support() if ok else (ok, why)


def has_nncf() -> tuple[bool, str]:
    ok, why = has_openvino()
    if not ok:
        return ok, why
    try:
        import nncf  # noqa: F401
    except ImportError:
        return False, "nncf is not installed (pip install 'efficientformer[openvino]')"
    return True, ""


def to_openvino(model: nn.Module | str | Path, example: torch.Tensor | None = None, workdir: Path | None = None):
    """An ``openvino.Model`` of ``model`` (an eval-mode module, exported to ONNX at ``example``'s shape first, or
    an ONNX file)."""
    ov = require("openvino")
    if isinstance(model, (str, Path)):
        return ov.convert_model(str(model))
    if example is None:
        raise ValueError("converting a PyTorch model to OpenVINO needs an example input")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "model.onnx"
        write_onnx(model.eval(), example, path)
        return ov.convert_model(str(path))


def float_layers(ov_model) -> list[str]:
    """Names of the layers kept in float by INT8: the two stem convolutions (as ONNX Runtime INT8; L1 on the digits:
    100% agreement with fp32, 98.9% with the first one only) and the last
    matrix multiplication (the logits); see the module docstring."""
    ops = [op for op in ov_model.get_ordered_ops() if op.get_type_name() in ("Convolution", "MatMul")]
    convs = [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"][:2]
    heads = [op.get_friendly_name() for op in ops if op.get_type_name() == "MatMul"][-1:]
    return convs + heads


def quantize_openvino(ov_model, calibration: list[np.ndarray] | list[torch.Tensor], keep_float: bool = True):
    """NNCF post-training INT8 of an ``openvino.Model``, calibrated on ``calibration`` (NCHW float32 batches)."""
    nncf = require("nncf")
    nncf.set_log_level(logging.ERROR)  # its per-layer INFO lines would bury the report
    data = [c.numpy() if isinstance(c, torch.Tensor) else np.asarray(c, dtype=np.float32) for c in calibration]
    if not data:
        raise ValueError("INT8 needs calibration images")
    ignored = nncf.IgnoredScope(names=float_layers(ov_model), validate=False) if keep_float else None

    def run(bias_correction: bool):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nncf.quantize(
                ov_model,
                nncf.Dataset(data),
                subset_size=len(data),
                preset=nncf.QuantizationPreset.MIXED,  # asymmetric activations (post-GELU maps are not centred)
                ignored_scope=ignored,
                advanced_parameters=nncf.quantization.advanced_parameters.AdvancedQuantizationParameters(
                    disable_bias_correction=not bias_correction
                ),
            )

    try:
        quantized = run(bias_correction=True)
        openvino_compiled(quantized, 1, "int8")  # the CPU plugin must take it (see below)
        return quantized
    except (ValueError, RuntimeError):
        # NNCF 3.4's fast bias correction fails on V2's talking-head attention, whose per-head bias constant it
        # cannot reshape ("cannot reshape array of size 128 into shape (1,8,1)"), and on V2-S1 at 224 px it writes
        # a bias the CPU plugin's post-op fusion refuses ("Check 'any_of(scale.size(), OC, 1U)' failed"):
        # min-max calibration alone then
        return run(bias_correction=False)


def _prepare(precision: str):
    def prepare(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
        if not ctx.stem:
            ov_model = to_openvino(model, example, ctx.workdir)
        else:  # the shared files of this stem: the one ONNX export (the ONNX Runtime rows' too), the INT8 IR
            int8_xml = ctx.workdir / f"{ctx.stem}.ov-int8.xml"
            if precision == "int8" and int8_xml.is_file():
                return openvino_runner(openvino_compiled(int8_xml, ctx.threads, precision))
            ov_model = to_openvino(onnx_file(model, example, ctx))
        if precision == "int8":
            calib = ctx.calibration or [
                torch.randn(example.shape, generator=torch.Generator().manual_seed(i)) for i in range(16)
            ]
            ov_model = quantize_openvino(ov_model, calib, keep_float=ctx.keep_float)
            if ctx.stem:
                _save_ir(ov_model, int8_xml)
        return openvino_runner(openvino_compiled(ov_model, ctx.threads, precision))

    return prepare


def _save_ir(ov_model, xml: Path) -> None:
    """``ov.save_model`` under temporary names, then renamed (.bin first): a killed save leaves no half IR."""
    ov = require("openvino")
    tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
    ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp, xml)


for _b in (
    Backend(
        "openvino",
        "openvino",
        "fp32",
        "the deploy form's ONNX export in OpenVINO (CPU plugin, fp32)",
        _prepare("fp32"),
        foreign_rows=True,
        available=has_openvino,
    ),
    Backend(
        "openvino-bf16",
        "openvino",
        "bf16",
        "the same IR with OpenVINO's bf16 inference hint (native bf16 only)",
        _prepare("bf16"),
        foreign_rows=True,
        available=bf16_openvino,
    ),
    Backend(
        "openvino-int8",
        "openvino",
        "int8",
        "NNCF post-training INT8 of that IR (stem conv and classifier float)",
        _prepare("int8"),
        foreign_rows=True,
        available=has_nncf,
        calibrates=True,
    ),
):
    register_backend(_b)


# ---------------------------------------------------------------------------------------------------------------
# export and the INT8 report
# ---------------------------------------------------------------------------------------------------------------
def export_openvino(
    model: nn.Module | None,
    path: str | Path,
    img_size=None,
    batch: str | int = 1,
    tolerance: float = 1e-4,
    onnx: str | Path | None = None,
) -> ExportReport:
    """An OpenVINO IR (``.xml`` + ``.bin``, fp32 weights) of ``model`` or of its ONNX file ``onnx``, compiled back
    and compared with PyTorch on fresh inputs (fp32 within ``tolerance``); where the CPU has native bf16 the report
    also states the bf16 execution's largest difference (bf16 is OpenVINO's execution hint, not a file format)."""
    ov = require("openvino")
    img, fixed = _fixed_shape(model, img_size, batch, "the OpenVINO IR is written for one input shape")
    path = check_output_path(path)
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is saved as NAME.xml (+ NAME.bin); got --output {path}")
    model = model.eval()
    chans = getattr(model, "in_chans", 3)
    start = time.perf_counter()
    ov_model = to_openvino(onnx, None) if onnx is not None else to_openvino(model, _inputs(fixed, img, 0, chans))
    ov.save_model(ov_model, str(path), compress_to_fp16=False)
    seconds = time.perf_counter() - start
    x = _inputs(fixed, img, 500, chans)
    with torch.no_grad():
        ref = model(x)
    diff = float((openvino_runner(openvino_compiled(path, 1, "fp32"))(x) - ref).abs().max())
    report = ExportReport(
        "openvino", str(path), img, str(fixed), _size(path) + _size(path.with_suffix(".bin")), seconds, diff, [fixed]
    )
    if bf16_support()[0]:
        bdiff = float((openvino_runner(openvino_compiled(path, 1, "bf16"))(x) - ref).abs().max())
        scale = float(ref.abs().max())
        report.notes.append(
            f"bf16 execution (INFERENCE_PRECISION_HINT=bf16): max |diff| {bdiff:.3g} "
            f"({100 * bdiff / max(scale, 1e-12):.2f}% of the largest logit)"
        )
    report.notes.append("load with openvino.Core().compile_model(path, 'CPU')")
    _check(diff, tolerance, "OpenVINO")
    return report


def openvino_int8_report(
    model: nn.Module,
    output_dir: str | Path,
    calib: list[np.ndarray],
    held_out: list[np.ndarray],
    img: tuple[int, int],
    threads: int = 1,
    runs: int = 30,
    keep_float: bool = True,
) -> dict:
    """``efficientformer quantize --backend openvino``: fp32 IR and NNCF INT8 IR written to ``output_dir``, with
    top-1 agreement (and the largest logit difference) against fp32 on ``held_out`` and batch-1 latency of each,
    measured in the same process, interleaved."""
    ov = require("openvino")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    name = getattr(getattr(model, "spec", None), "name", "model")
    example = torch.zeros(1, 3, *img)
    fp32 = to_openvino(model.eval(), example, output_dir)
    int8 = quantize_openvino(fp32, [a[None] for a in calib], keep_float=keep_float)
    paths = {"fp32": output_dir / f"{name}.fp32.xml", "int8": output_dir / f"{name}.int8.xml"}
    ov.save_model(fp32, str(paths["fp32"]), compress_to_fp16=False)
    ov.save_model(int8, str(paths["int8"]), compress_to_fp16=False)
    runners = {k: openvino_runner(openvino_compiled(p, threads, k)) for k, p in paths.items()}
    if bf16_support()[0]:
        runners["bf16"] = openvino_runner(openvino_compiled(paths["fp32"], threads, "bf16"))
    logits = {k: np.stack([r(torch.from_numpy(a[None]))[0].numpy() for a in held_out]) for k, r in runners.items()}
    x = torch.zeros(1, 3, *img)
    lat = {k: [] for k in runners}
    for _ in range(3):  # interleaved in chunks: the ratio sees the same minutes of the machine
        for k, r in runners.items():
            lat[k] += time_callable(lambda r=r: r(x), 3, max(1, runs // 3))
    med = {k: statistics.median(v) for k, v in lat.items()}
    report = {
        "backend": "openvino",
        "threads": threads,
        "calib_images": len(calib),
        "eval_images": len(held_out),
        "files": {k: str(p) for k, p in paths.items()},
        "variants": {},
    }
    for k in runners:
        row = {"latency_ms": med[k], "speedup_vs_fp32": med["fp32"] / med[k]}
        if held_out and k != "fp32":
            row.update(logit_agreement(logits["fp32"], logits[k]))
        if k in paths:
            row["size_bytes"] = _size(paths[k]) + _size(paths[k].with_suffix(".bin"))
        report["variants"][k] = row
    return report
