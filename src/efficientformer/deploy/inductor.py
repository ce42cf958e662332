"""PyTorch's own fast CPU path: the deploy form compiled by Inductor with freezing (fp32 or bf16).

``torch.compile`` with ``freezing=True`` treats the weights as constants: BatchNorm-free convolutions and linear
layers get their weights reordered once into oneDNN's blocked layout (weight prepacking), the GELU / add that
follow a convolution become oneDNN post-ops, and the remaining element-wise ops (softmax, bias adds, the
talking-head mixes' adds) are fused into generated C++ loops. On the benchmark's CPU this is what closes the gap
to ONNX Runtime (see benchmarks/README.md). The compiled module is for inference only (``no_grad`` inside).

:func:`compile_aot` is the same compilation ahead of time (AOTInductor): ``torch.export`` + Inductor with freezing
into a ``.pt2`` package (a shared library with the prepacked weights), loaded back as a C++ runner. A call then
skips TorchDynamo's guard checks and Python wrapper entirely, which is what is left of the per-call overhead at
batch 1 once the C++ wrapper is on; the package can also be shipped and run without the model code.

bf16: the weights are cast once and the input is cast inside the compiled graph, so a caller passes and gets
float32. Only worth it on CPUs with native bf16 (AVX512-BF16 / AMX); `efficientformer benchmark` checks that.
"""

from __future__ import annotations

import copy
import os
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from .modules import set_cpu_kernels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class _CastIO(nn.Module):
    """Runs ``inner`` in ``dtype``: casts the float32 input in and the output back (both inside the graph)."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype = inner, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.dtype)).float()


class FrozenInductorModel(nn.Module):
    """A model compiled by Inductor with frozen weights; call it like the eval model (float32 in, float32 out)."""

    def __init__(self, compiled: nn.Module, dtype: str, options: dict) -> None:
        super().__init__()
        self.compiled, self.dtype, self.options = compiled, dtype, options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.compiled(x)


def compile_frozen(
    model: nn.Module,
    example: torch.Tensor,
    dtype: str = "fp32",
    *,
    cpp_wrapper: bool = False,
    max_autotune: bool = False,
) -> FrozenInductorModel:
    """Compile an eval-mode model (best: the :func:`~efficientformer.deploy.deploy` form) for CPU inference with
    Inductor's freezing and weight prepacking, and run ``example`` through it once (that call compiles).

    ``dtype``: ``"fp32"`` or ``"bf16"``. ``cpp_wrapper``: generate the call sequence as C++ instead of Python
    (less per-op overhead at batch 1). ``max_autotune``: let Inductor benchmark kernel choices (slow to compile).
    The input shape is the one of ``example``; another shape recompiles.
    """
    inner = _prepare(model, dtype, "compile_frozen")
    options = {"freezing": True, "cpp_wrapper": cpp_wrapper, "max_autotune": max_autotune}
    return compile_with_freezing(inner, example, dtype, options)


def _prepare(model: nn.Module, dtype: str, caller: str) -> nn.Module:
    """A private copy of ``model`` ready for Inductor: eager fast path off, no gradients, ``dtype`` inside."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if model.training:
        raise ValueError(f"{caller} expects an eval-mode model (call model.eval() first)")
    inner = copy.deepcopy(model)
    set_cpu_kernels(inner, False)  # Inductor does its own oneDNN fusion; the eager fast path's caches are unused
    inner.requires_grad_(False)
    if DTYPES[dtype] is not torch.float32:
        inner = _CastIO(inner.to(DTYPES[dtype]), DTYPES[dtype])
    return inner


def compile_with_freezing(model: nn.Module, example: torch.Tensor, label: str, options: dict) -> FrozenInductorModel:
    """``torch.compile`` + one compiling call with Inductor's config patched by ``options`` (``freezing`` etc.).

    The config is patched around the compiling call instead of passed as ``torch.compile(options=...)``: with
    torch 2.14.1, ``options={"freezing": True}`` is silently ignored (the graph keeps plain ``aten.convolution``
    calls, measured with torch.profiler), whereas the patched global config gives prepacked oneDNN kernels."""
    import torch._inductor.config as inductor_config  # here, not at the top: importing Inductor takes ~1.4 s

    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    frozen = FrozenInductorModel(compiled, label, options)
    with inductor_config.patch(**options):
        frozen(example)
    return frozen


class AOTInductorModel(nn.Module):
    """An AOTInductor package loaded for inference; call it like the eval model (float32 in, float32 out).

    The runner is a C++ object with no parameters of its own; ``package`` is the ``.pt2`` file it came from."""

    def __init__(self, runner, dtype: str, package: Path | None) -> None:
        super().__init__()
        self.runner, self.dtype, self.package = runner, dtype, package

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.runner(x)


def compile_aot(
    model: nn.Module, example: torch.Tensor, dtype: str = "fp32", package_path: str | Path | None = None
) -> AOTInductorModel:
    """Compile an eval-mode model (best: the deploy form) ahead of time with AOTInductor, freezing and weight
    prepacking as :func:`compile_frozen`, write the ``.pt2`` package to ``package_path`` (a temporary file,
    deleted once loaded, when None) and load it back. The input shape is fixed to ``example``'s."""
    return package_aot(_prepare(model, dtype, "compile_aot"), example, dtype, package_path)


def package_aot(
    program: nn.Module, example: torch.Tensor, label: str, package_path: str | Path | None = None
) -> AOTInductorModel:
    """AOTInductor with freezing of a module ready for export as it is (a prepared model, or a quantised
    PT2E graph, which has no eval mode to check): the package is written atomically to ``package_path`` (a
    temporary file beside it, renamed when complete) or to a temporary folder when None, then loaded back."""
    import torch._inductor.config as inductor_config  # here, not at the top: importing Inductor takes ~1.4 s

    with torch.no_grad():
        exported = torch.export.export(program, (example,))
    with tempfile.TemporaryDirectory(prefix="ef-aot-") as tmp:
        target = Path(package_path) if package_path is not None else Path(tmp) / "model.pt2"
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.stem}.{os.getpid()}.tmp.pt2")
        try:
            # Inductor freezes only with gradients off (else plain aten convolutions, measured); patched config
            # as in compile_with_freezing
            with torch.no_grad(), inductor_config.patch(freezing=True):
                torch._inductor.aoti_compile_and_package(exported, package_path=str(partial))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        runner = torch._inductor.aoti_load_package(str(target))  # extracts its shared library; the file may go
    return AOTInductorModel(runner, label, Path(package_path) if package_path is not None else None)


def package_kernels(path: str | Path) -> str:
    """The generated C++ call sequence inside an AOTInductor package (to check which kernels it calls)."""
    with zipfile.ZipFile(path) as z:
        return "\n".join(z.read(n).decode() for n in z.namelist() if n.endswith(".wrapper.cpp"))
