"""The built-in backends: PyTorch (eager, deploy form, torch.compile, Inductor with freezing, AOTInductor, bf16,
PT2E INT8) and ONNX Runtime (fp32 and static QDQ INT8), registered in :mod:`.registry`; OpenVINO
(:mod:`.openvino`) and CUDA (:mod:`.cuda`) register theirs in their own files, imported here so that importing
this module gives the whole registry.

Usage (the benchmark and the search's latency tables do exactly this)::

    from efficientformer.deploy.backends import BackendContext, prepare_runner
    runner = prepare_runner("openvino-bf16", deploy(model), example, BackendContext(threads=2, workdir=tmp))
    logits = runner(example)
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from ..utils.machine import bf16_support
from ..utils.timing import ort_session
from . import cuda, openvino  # noqa: F401  (they register their backends)
from .inductor import AOTInductorModel, compile_aot, compile_frozen
from .pt2e import quantize_pt2e_x86
from .quantize import quantize_static_qdq
from .registry import (
    BACKENDS,
    Backend,
    BackendContext,
    Runner,
    get_backend,
    onnx_file,
    prepare_runner,
    register_backend,
)

__all__ = ["BACKENDS", "Backend", "BackendContext", "Runner", "get_backend", "prepare_runner", "register_backend"]


def random_calibration(example: torch.Tensor, n: int = 16) -> list[torch.Tensor]:
    """Seeded random batches shaped like ``example``: calibration for speed measurements only (an accuracy check
    calibrates on real images)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(example.shape, generator=g) for _ in range(n)]


def torch_runner(model: nn.Module, compiled: bool = False) -> Runner:
    """``model(x)`` under ``inference_mode`` (eager) or ``no_grad`` (compiled graphs were traced under no_grad;
    inference_mode would be another guard set)."""
    mode = torch.no_grad if compiled else torch.inference_mode

    def run(x: torch.Tensor) -> torch.Tensor:
        with mode():
            return model(x)

    return run


def _eager(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
    return torch_runner(model)


def _compile(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
    return torch_runner(torch.compile(model), compiled=True)


def _inductor(dtype: str, cpp_wrapper: bool = False) -> Callable[[nn.Module, torch.Tensor, BackendContext], Runner]:
    def prepare(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
        return torch_runner(compile_frozen(model, example, dtype, cpp_wrapper=cpp_wrapper), compiled=True)

    return prepare


def _inductor_aot(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
    if not ctx.stem:
        return torch_runner(compile_aot(model, example), compiled=True)
    package = ctx.workdir / f"{ctx.stem}.pt2"  # kept under the stem (a latency table's blocks): compiled once
    if package.is_file():
        return torch_runner(
            AOTInductorModel(torch._inductor.aoti_load_package(str(package)), "fp32", package), compiled=True
        )
    return torch_runner(compile_aot(model, example, package_path=package), compiled=True)


def _pt2e_int8(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
    calib = ctx.calibration or random_calibration(example, 4)
    return torch_runner(quantize_pt2e_x86(model, example, calib), compiled=True)


class _Reader:
    """ONNX Runtime calibration reader over tensors."""

    def __init__(self, batches: list[torch.Tensor], name: str) -> None:
        self.data = [{name: b.numpy()} for b in batches]

    def get_next(self):
        return self.data.pop() if self.data else None


def ort_int8_file(model: nn.Module, example: torch.Tensor, ctx: BackendContext):
    """Static QDQ INT8 of :func:`onnx_file`, as ``efficientformer quantize`` writes it."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = onnx_file(model, example, ctx)
    out = fp32.with_suffix(".int8.onnx")
    if not out.exists():
        prep = fp32.with_suffix(".prep.onnx")
        quant_pre_process(str(fp32), str(prep), skip_symbolic_shape=True)
        reader = _Reader(ctx.calibration or random_calibration(example), "image")
        partial = out.with_name(f".{out.stem}.{os.getpid()}.tmp.onnx")
        quantize_static_qdq(prep, partial, reader, keep_float=ctx.keep_float)
        os.replace(partial, out)
        prep.unlink(missing_ok=True)
    return out


def ort_runner(path, threads: int) -> Runner:
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: x.numpy()})[0])

    return run


def _onnxruntime(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
    return ort_runner(onnx_file(model, example, ctx), ctx.threads)


def _onnxruntime_int8(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
    return ort_runner(ort_int8_file(model, example, ctx), ctx.threads)


def _has_ort() -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False, "onnxruntime is not installed (pip install 'efficientformer[onnx]')"
    return True, ""


for _b in (
    Backend(
        "eager",
        "torch",
        "fp32",
        "the training-time model in eval mode (and timm's)",
        _eager,
        form="eval",
        foreign_rows=True,
    ),
    Backend(
        "deploy",
        "torch",
        "fp32",
        "the folded deploy form, eager, with oneDNN fused conv kernels",
        _eager,
        baseline_rows=False,
    ),
    Backend(
        "compile",
        "torch",
        "fp32",
        "torch.compile of the deploy form, default options (and of timm's model)",
        _compile,
        foreign_rows=True,
        baseline_rows=False,
    ),
    Backend(
        "inductor",
        "torch",
        "fp32",
        "the deploy form compiled by Inductor with freezing + weight prepacking",
        _inductor("fp32"),
    ),
    Backend(
        "inductor-cpp",
        "torch",
        "fp32",
        "as inductor, with Inductor's C++ wrapper (no Python between kernels)",
        _inductor("fp32", cpp_wrapper=True),
    ),
    Backend(
        "inductor-aot",
        "torch",
        "fp32",
        "as inductor, ahead of time (AOTInductor .pt2): no guards or Python per call",
        _inductor_aot,
    ),
    Backend(
        "inductor-bf16",
        "torch",
        "bf16",
        "as inductor, weights and activations in bf16 (native bf16 CPUs only)",
        _inductor("bf16"),
        available=bf16_support,
    ),
    Backend(
        "pt2e-int8",
        "torch",
        "int8",
        "PT2E static INT8 (x86 Inductor quantizer), compiled with freezing",
        _pt2e_int8,
        calibrates=True,
    ),
    Backend(
        "onnxruntime",
        "onnxruntime",
        "fp32",
        "ONNX export of the deploy form (and of timm's model) in ONNX Runtime",
        _onnxruntime,
        foreign_rows=True,
        available=_has_ort,
    ),
    Backend(
        "onnxruntime-int8",
        "onnxruntime",
        "int8",
        "static QDQ INT8 of that export, as `efficientformer quantize`",
        _onnxruntime_int8,
        foreign_rows=True,
        available=_has_ort,
        calibrates=True,
    ),
):
    register_backend(_b)
# the optional runtimes after the built-in ones, so that help texts list the defaults first
for _name in [n for n in BACKENDS if n.startswith(("openvino", "cuda"))]:
    BACKENDS[_name] = BACKENDS.pop(_name)
