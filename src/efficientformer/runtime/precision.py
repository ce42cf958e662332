"""The precision policy of a training run: fp32, bf16 autocast, or fp16 autocast with a gradient scaler.

:func:`resolve_amp` turns the config's ``amp`` (``auto`` included, with its start-up probe on CPUs) into one of
``none``, ``bf16``, ``fp16``; :class:`Precision` is what the loop uses at every step: the autocast context, the
scaled backward pass, unscaling before clipping, the (scaler-guarded) optimiser step, and the scaler's state for
checkpoints. The channels-last layout choice, which is decided with the precision, is here too.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ..utils.machine import bf16_support
from ..utils.timing import time_interleaved
from .checkpoint import CHECKPOINT_NAME, read_checkpoint
from .distributed import all_gather_objects

AMP_CHOICES = ("auto", "none", "bf16", "fp16")

#: ``amp=auto`` on a CPU picks bf16 only when the probe measures at least this speed-up over fp32
CPU_BF16_MIN_SPEEDUP = 1.1

Amp = Literal["none", "bf16", "fp16"]


def resolve_amp(
    amp: str,
    device: torch.device,
    recorded: str | None = None,
    probe: Callable[[], float] | None = None,
    log: Callable[[str], None] | None = None,
) -> Amp:
    """The autocast precision of a run; ``none``, ``bf16`` and ``fp16`` are taken as they are.

    ``auto``: bf16 on CUDA GPUs that support it (no loss scaling needed). On a CPU with native bf16 (AVX512-BF16
    or AMX-BF16), bf16 when ``probe()`` (e.g. :func:`cpu_bf16_speedup` of the model) measures it at least
    :data:`CPU_BF16_MIN_SPEEDUP` times faster than fp32 here and now: on the project's AMX machine the same flag
    made V2-S0's training step 1.34x faster on one day and 2.3x slower on another (benchmarks/README.md, goal 5),
    so it is measured, not assumed; without a probe, fp32. fp32 elsewhere. ``recorded``: the precision a resumed
    run was started with, kept so the resumed run computes what the straight run would have. Under DDP every rank
    takes rank 0's measurement. ``log`` gets the measurement."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp != "auto":
        return amp  # type: ignore[return-value]
    if recorded in ("none", "bf16", "fp16"):
        return recorded  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    if device.type != "cpu" or probe is None or not bf16_support()[0]:
        return "none"
    speedup = all_gather_objects(probe())[0]  # rank 0's measurement for every rank
    choice = "bf16" if speedup >= CPU_BF16_MIN_SPEEDUP else "none"
    if log is not None:
        log(
            f"amp=auto: a training step in bf16 measured {speedup:.2f}x fp32 on this CPU (needs "
            f"{CPU_BF16_MIN_SPEEDUP}x) -> {choice}"
        )
    return choice  # type: ignore[return-value]


def cpu_bf16_speedup(model: nn.Module, example: torch.Tensor, rounds: int = 3) -> float:
    """fp32 time / bf16-autocast time of a forward and backward pass of a copy of ``model`` (train mode, as it is:
    layout included) on ``example``, timed interleaved at the current thread count after one warm-up call each.
    The copy keeps the run's model, its BatchNorm statistics and the random streams untouched."""
    probe = copy.deepcopy(model).train()
    rng = torch.random.get_rng_state()

    def step(dtype: torch.dtype | None) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
                out = probe(example)
            out = out[0] if isinstance(out, tuple | list) else out
            out.float().mean().backward()
            probe.zero_grad(set_to_none=True)

        return run

    try:
        times = time_interleaved({"fp32": step(None), "bf16": step(torch.bfloat16)}, warmup=1, runs=rounds)
    finally:
        torch.random.set_rng_state(rng)  # drop-path draws in the probe must not shift the run's stream
    return statistics.median(times["fp32"]) / max(statistics.median(times["bf16"]), 1e-9)


def recorded_precision(output: str | Path) -> str | None:
    """The ``amp`` recorded in ``<output>/last.pth`` (the run a resume continues), or None (no such checkpoint, or
    one that cannot be read: the loop's resume reports that in one line)."""
    path = Path(output) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    try:
        return (read_checkpoint(path).get("precision") or {}).get("amp")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_channels_last(channels_last: bool | None, device: torch.device) -> bool:
    """``None`` (auto): channels-last on CUDA and on CPU, where oneDNN's convolutions run NHWC without reorders
    (measured on the training step, fp32, 2 threads: V2-S0 1.05-1.10x, L1 1.30-1.99x over NCHW); explicit values are
    kept."""
    if channels_last is not None:
        return channels_last
    return device.type in ("cuda", "cpu")


def keep_channels_last_gradients(model: nn.Module) -> list[RemovableHandle]:
    """Make the gradient that reaches each BatchNorm2d output channels-last whenever the output is.

    A BatchNorm output that feeds a reshape (V2's attention q/k/v projections, the final norm before pooling) gets
    an NCHW-contiguous gradient back, and PyTorch's BatchNorm backward with a channels-last input and an NCHW
    gradient is 3-6x slower on a CPU than with both channels-last (V2-S0's (16, 1024, 7, 7) value projection: 15.1
    vs 5.3 ms fp32, 7.9 vs 2.8 ms bf16; benchmarks/README.md, goal 5). One copy of the gradient costs far less.
    Gradient values are unchanged. Returns the hook handles (``handle.remove()`` undoes it)."""

    def to_channels_last(grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=torch.channels_last)

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if out.requires_grad and out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last):
            out.register_hook(to_channels_last)

    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def autocast(device: torch.device, amp: str):
    """The autocast context of a resolved ``amp`` (``none``, ``bf16`` or ``fp16``)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


class Precision:
    """The resolved precision of a run on ``device``: autocast for the forward pass, and for fp16 the gradient
    scaler (a no-op for fp32 and bf16, which need no loss scaling)."""

    def __init__(self, amp: Amp, device: torch.device) -> None:
        self.amp, self.device = amp, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

    def autocast(self):
        return autocast(self.device, self.amp)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping)."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step (skipped by the scaler when fp16 gradients overflowed), then the scale update."""
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)


__all__ = [
    "AMP_CHOICES",
    "CPU_BF16_MIN_SPEEDUP",
    "Precision",
    "resolve_amp",
    "cpu_bf16_speedup",
    "recorded_precision",
    "resolve_channels_last",
    "keep_channels_last_gradients",
    "autocast",
]
