"""The one registry of inference backends: the benchmark's rows, the search's latency tables and the agreement
checks all get a runnable model from here.

A backend is one small unit: a name, the runtime it belongs to (candidates of different runtimes are never timed in
the same round: their idle worker threads would steal each other's cores), the precision it computes in, one line
saying what it is, and ``prepare(model, example, context) -> runner``. The runner takes a float32 NCHW tensor of
``example``'s shape and returns float32 logits as a tensor; the benchmark times ``runner(example)``.

``form`` says which form of our model a backend is handed: ``"eval"`` the training-time model in eval mode,
``"deploy"`` its folded :func:`~efficientformer.deploy.deploy` form. Other networks (timm's models, baselines) are
handed as they are. Backends register themselves at import (:mod:`.backends` imports every built-in one).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .export import write_onnx

#: ``runner(x) -> logits``: float32 tensor in, float32 tensor out
Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BackendContext:
    """What a backend may need besides the model: threads, a scratch folder it may write into (the caller removes
    it), calibration batches for INT8 backends, and ``stem``: a name unique to this (model, implementation, batch)
    under which backends share files (the benchmark's ONNX Runtime fp32 and INT8 rows export once); empty (the
    default): every prepare writes fresh files. ``keep_float``: INT8 backends keep the stem convolutions and the
    classifier in float (a whole network); a latency table's probe of an inner block sets it False, since its
    first convolution is not the network's."""

    threads: int = 1
    workdir: Path = field(default_factory=lambda: Path("."))
    calibration: list[torch.Tensor] = field(default_factory=list)
    stem: str = ""
    keep_float: bool = True


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str  # timing group: torch, onnxruntime, openvino, cuda
    precision: str  # fp32, bf16, int8
    description: str
    prepare: Callable[[nn.Module, torch.Tensor, BackendContext], Runner]
    form: str = "deploy"  # which form of our model it runs: "eval" or "deploy"
    foreign_rows: bool = False  # the benchmark also runs timm's model of the same network in it
    baseline_rows: bool = True  # the benchmark also runs the baseline networks (MobileNets) in it
    #: ``() -> (usable, why not)``: a backend whose runtime or ISA is missing is skipped with a note, not an error
    available: Callable[[], tuple[bool, str]] = field(default=lambda: (True, ""))
    calibrates: bool = False  # needs ``context.calibration``


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add ``backend`` (a test may add its own); a second backend of the same name replaces the first."""
    if backend.form not in ("eval", "deploy"):
        raise ValueError(f"backend {backend.name!r}: form must be 'eval' or 'deploy', got {backend.form!r}")
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The backend called ``name``; a one-line ``ValueError`` naming the choices otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}") from None


def prepare_runner(name: str, model: nn.Module, example: torch.Tensor, context: BackendContext | None = None) -> Runner:
    """``get_backend(name).prepare(model, example, context)`` after checking the backend can run here."""
    backend = get_backend(name)
    ok, why = backend.available()
    if not ok:
        raise RuntimeError(f"backend {name!r} cannot run here: {why}")
    return backend.prepare(model.eval(), example, context or BackendContext())


def onnx_file(model: nn.Module, example: torch.Tensor, ctx: BackendContext):
    """The ONNX export of ``model`` at ``example``'s shape in ``ctx.workdir`` (written once per stem; a fresh file
    without one)."""
    if not ctx.stem:
        fd, name = tempfile.mkstemp(suffix=".onnx", dir=ctx.workdir)
        os.close(fd)
        os.unlink(name)
        path = Path(name)
    else:
        path = ctx.workdir / f"{ctx.stem}.onnx"
    if not path.exists():
        partial = path.with_name(f".{path.stem}.{os.getpid()}.tmp.onnx")
        write_onnx(model, example, partial)
        os.replace(partial, path)  # a killed export never leaves a half file under the name later calls reuse
    return path
