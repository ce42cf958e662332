"""PyTorch's own fast CPU path: the deploy form compiled by Inductor with freezing (fp32 or bf16).

``torch.compile`` with ``freezing=True`` treats the weights as constants: BatchNorm-free convolutions and linear
layers get their weights reordered once into oneDNN's blocked layout (weight prepacking), the GELU / add that
follow a convolution become oneDNN post-ops, and the remaining element-wise ops (softmax, bias adds, the
talking-head mixes' adds) are fused into generated C++ loops. On the benchmark's CPU this is what closes the gap
to ONNX Runtime (see benchmarks/README.md). The compiled module is for inference only (``no_grad`` inside).

bf16: the weights are cast once and the input is cast inside the compiled graph, so a caller passes and gets
float32. Only worth it on CPUs with native bf16 (AVX512-BF16 / AMX); `efficientformer benchmark` checks that.
"""

from __future__ import annotations

import copy

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
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if model.training:
        raise ValueError("compile_frozen expects an eval-mode model (call model.eval() first)")
    inner = copy.deepcopy(model)
    set_cpu_kernels(inner, False)  # Inductor does its own oneDNN fusion; the eager fast path's caches are unused
    inner.requires_grad_(False)
    if DTYPES[dtype] is not torch.float32:
        inner = _CastIO(inner.to(DTYPES[dtype]), DTYPES[dtype])
    options = {"freezing": True, "cpp_wrapper": cpp_wrapper, "max_autotune": max_autotune}
    return compile_with_freezing(inner, example, dtype, options)


def compile_with_freezing(model: nn.Module, example: torch.Tensor, label: str, options: dict) -> FrozenInductorModel:
    """``torch.compile`` + one compiling call with Inductor's config patched by ``options`` (``freezing`` etc.).

    The config is patched around the compiling call instead of passed as ``torch.compile(options=...)``: with
    torch 2.14.1, ``options={"freezing": True}`` is silently ignored (the graph keeps plain ``aten.convolution``
    calls, measured with torch.profiler), whereas the patched global config gives prepacked oneDNN kernels."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    frozen = FrozenInductorModel(compiled, label, options)
    with inductor_config.patch(**options):
        frozen(example)
    return frozen
