"""INT8 in PyTorch itself: PT2E static quantisation with the x86 Inductor quantizer, compiled with freezing.

``torch.export`` captures the deploy form, torchao's ``X86InductorQuantizer`` inserts quantize/dequantize pairs
(int8 per-channel weights, uint8 per-tensor activations), calibration sets the activation ranges, and Inductor
with freezing lowers the pairs around each convolution to oneDNN int8 convolutions (VNNI / AMX-INT8 where the
CPU has them). torchao is optional (``require``); it ships with the pinned environment.

Linear layers stay float: with the pinned torch 2.14.1 and torchao 0.18.0, Inductor rejects the int8 linear
prepack that torchao's lowering inserts (``onednn.qlinear_prepack is not an OpOverload``, measured). Only the
classifier (V2) and the last stage's token mixers (V1) are linear layers.
"""

from __future__ import annotations

import copy
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..models import model_preprocessing
from ..utils.optional import require
from ..utils.timing import time_interleaved
from .fuse import deploy
from .inductor import AOTInductorModel, FrozenInductorModel, compile_aot, compile_with_freezing, package_aot
from .modules import set_cpu_kernels
from .quantize import list_images, load_image


def _conv_subclasses_as_conv2d(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The quantizer finds convolutions by the module class recorded for each node (``nn_module_stack``, the
    innermost entry) and compares it with ``torch.nn.Conv2d`` by name, so the deploy form's :class:`FusedConv2d`
    (a subclass) was never quantised (measured: 0 quantize nodes in V2-S0). Convolution nodes recorded under a
    Conv2d subclass are recorded as ``nn.Conv2d``; the graph itself is unchanged."""
    plain = f"{nn.Conv2d.__module__}.{nn.Conv2d.__qualname__}"
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op != "call_function" or node.target is not torch.ops.aten.conv2d.default or not stack:
            continue
        key, (fqn, cls) = list(stack.items())[-1]
        if isinstance(cls, str) and cls != plain and _is_conv_subclass(cls):
            stack[key] = (fqn, plain)
    return gm


def _unalias_conv_add_accumulators(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """With ReLU or Hardswish after ``conv(x) + residual`` (the V2 attention's local-V conv plus the attention
    output, then the activation), the x86 quantizer annotates conv + add + activation as one pattern, and Inductor
    lowers it to an int8 convolution that accumulates into ``residual`` in place; it refuses when ``residual`` is
    a view (the attention output is a reshape of a transpose): "QConv Binary Inplace Fusion requires accum is not
    an alias or mutation" (torch 2.14.1, measured). A ``clone`` of the residual gives the kernel its own buffer;
    GELU is not such a pattern, so GELU graphs are unchanged."""
    unary = (torch.ops.aten.relu.default, torch.ops.aten.hardswish.default)
    for node in list(gm.graph.nodes):
        if node.target is not torch.ops.aten.add.Tensor or not node.users:
            continue
        if not all(user.target in unary for user in node.users):
            continue
        a, b = node.args[:2]
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        if a.target is torch.ops.aten.conv2d.default and b.target is not torch.ops.aten.conv2d.default:
            index, accum = 1, b
        elif b.target is torch.ops.aten.conv2d.default and a.target is not torch.ops.aten.conv2d.default:
            index, accum = 0, a
        else:
            continue
        with gm.graph.inserting_before(node):
            copy_ = gm.graph.call_function(torch.ops.aten.clone.default, (accum,))
        copy_.meta = dict(accum.meta)
        node.update_arg(index, copy_)
    gm.graph.lint()
    gm.recompile()
    return gm


def _is_conv_subclass(path: str) -> bool:
    module, _, name = path.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return isinstance(cls, type) and issubclass(cls, nn.Conv2d)


def quantize_pt2e_x86(
    model: nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor]
) -> FrozenInductorModel:
    """Static INT8 of an eval-mode model (best: the deploy form) for x86 CPUs; returns the compiled model
    (float32 in, float32 out), already compiled for ``example``'s shape. ``calibration``: input batches whose
    activation ranges set the quantisation scales (real images for accuracy; any inputs for a speed test)."""
    converted = quantized_graph_x86(model, example, calibration)
    return compile_with_freezing(converted, example, "int8", {"freezing": True})


def package_pt2e_x86(
    model: nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor], package_path: str | Path | None
) -> AOTInductorModel:
    """:func:`quantize_pt2e_x86` ahead of time: the INT8 program as an AOTInductor ``.pt2`` package (written
    atomically to ``package_path``; a temporary file when None), loaded back. It runs without the model code:
    ``torch._inductor.aoti_load_package(path)(x)`` with ``x`` of ``example``'s shape, float32 in and out."""
    return package_aot(quantized_graph_x86(model, example, calibration), example, "int8", package_path)


def quantized_graph_x86(
    model: nn.Module, example: torch.Tensor, calibration: Iterable[torch.Tensor]
) -> torch.fx.GraphModule:
    """The calibrated quantize/dequantize graph :func:`quantize_pt2e_x86` compiles (before Inductor's lowering
    folds each ``dequantize -> conv [-> add] [-> activation] -> quantize`` chain into one int8 oneDNN kernel)."""
    require("torchao")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq  # also registers Inductor passes

    if model.training:
        raise ValueError("quantize_pt2e_x86 expects an eval-mode model (call model.eval() first)")
    model = set_cpu_kernels(copy.deepcopy(model), False)  # the eager fast path's caches are of no use here
    captured = _unalias_conv_add_accumulators(
        _conv_subclasses_as_conv2d(torch.export.export(model, (example,)).module())
    )
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    quantizer.set_module_type_qconfig(nn.Linear, None)  # see the module docstring
    prepared = prepare_pt2e(captured, quantizer)
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
            seen += 1
    if not seen:
        raise ValueError("quantize_pt2e_x86 needs at least one calibration batch")
    return convert_pt2e(prepared)


def pt2e_report(
    model: nn.Module,
    calib_dir: str | Path,
    eval_dir: str | Path | None,
    img_size: int,
    threads: int = 1,
    runs: int = 30,
    max_calib: int = 64,
    package_path: str | Path | None = None,
) -> dict:
    """`efficientformer quantize --backend pt2e`: quantise the deploy form of ``model`` with calibration images
    into an AOTInductor package (``package_path``; see :func:`package_pt2e_x86`), then report, for the package as
    loaded back, top-1 agreement with fp32 on held-out images and latency against the fp32 deploy form compiled
    the same way (AOTInductor with freezing; same runtime, timed interleaved)."""

    torch.set_num_threads(threads)
    fused = deploy(model.eval())
    size = (img_size, img_size)
    own = model_preprocessing(model)  # the model's crop, interpolation and mean/std for every image
    calib_files = list_images(calib_dir)[:max_calib]
    calib = [torch.from_numpy(load_image(f, size, own)).unsqueeze(0) for f in calib_files]
    example = calib[0]
    int8 = package_pt2e_x86(fused, example, calib, package_path)
    fp32 = compile_aot(fused, example)
    report: dict = {
        "backend": "pt2e-int8 (x86 Inductor quantizer, AOTInductor)",
        "img_size": img_size,
        "threads": threads,
        "calibration_images": len(calib),
    }
    if package_path is not None:
        report["package"] = str(package_path)
    if eval_dir is not None:
        files = list_images(eval_dir)
        agree = 0
        with torch.no_grad():
            for f in files:
                x = torch.from_numpy(load_image(f, size, own)).unsqueeze(0)
                agree += int(int8(x).argmax(1) == fused(x).argmax(1))
        report.update(eval_images=len(files), top1_agreement=agree / len(files))
    times = time_interleaved({"fp32": lambda: fp32(example), "int8": lambda: int8(example)}, 5, runs)
    report["latency_ms"] = {k: statistics.median(v) for k, v in times.items()}
    report["speedup_vs_inductor_fp32"] = report["latency_ms"]["fp32"] / report["latency_ms"]["int8"]
    return report
