"""GPU backends (CUDA): the deploy form on the GPU in fp32 and in bf16 autocast, channels-last. A call's time is end
to end, as a caller sees it: the input is copied to the GPU, the model runs, and the logits are copied back (which
waits for the GPU), so no separate synchronisation is needed. ``benchmarks/gpu.sh`` is the full GPU table."""

from __future__ import annotations

import copy

import torch
from torch import nn

from .modules import set_cpu_kernels
from .registry import Backend, BackendContext, Runner, register_backend


def has_cuda() -> tuple[bool, str]:
    return (True, "") if torch.cuda.is_available() else (False, "no CUDA GPU is available")


def _prepare(dtype: torch.dtype | None):
    def prepare(model: nn.Module, example: torch.Tensor, ctx: BackendContext) -> Runner:
        net = copy.deepcopy(model)
        set_cpu_kernels(net, False)  # the oneDNN fast path is CPU-only
        net = net.to("cuda", memory_format=torch.channels_last).eval()

        def run(x: torch.Tensor) -> torch.Tensor:
            autocast = torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None)
            with torch.inference_mode(), autocast:
                out = net(x.to("cuda", non_blocking=False).contiguous(memory_format=torch.channels_last))
            return out.float().cpu()

        return run

    return prepare


for _b in (
    Backend(
        "cuda",
        "cuda",
        "fp32",
        "the deploy form on the GPU, channels-last, fp32 (TF32 as torch's default)",
        _prepare(None),
        available=has_cuda,
    ),
    Backend("cuda-bf16", "cuda", "bf16", "as cuda, in bf16 autocast", _prepare(torch.bfloat16), available=has_cuda),
):
    register_backend(_b)
