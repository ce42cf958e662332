"""Wall-clock timing shared by the benchmark and the INT8 report, and the ONNX Runtime and OpenVINO sessions they
both use.

``time_interleaved`` is the one to compare implementations with: it runs one call of every candidate per round
(in a rotating order), so slow drifts of a shared machine (other jobs, frequency changes, thermal state) land on
all candidates alike instead of on whichever happened to be measured during the busy minute.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable
from pathlib import Path

from .optional import require


def time_callable(
    fn: Callable[[], object], warmup: int, runs: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Milliseconds of ``runs`` timed calls after ``warmup`` untimed ones. ``clock``: wall time by default;
    ``time.thread_time`` measures the calling thread's CPU time instead (single-threaded work on a shared
    machine: time spent preempted by other processes is not counted)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = clock()
        fn()
        out.append((clock() - t) * 1e3)
    return out


#: the benchmark's clocks: wall time, or the CPU time of the whole process (all its threads). With one thread
#: on a machine shared with other jobs, CPU time counts the work and not the time spent preempted.
BENCHMARK_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved(
    fns: dict[Hashable, Callable[[], object]],
    warmup: int,
    runs: int,
    progress: bool = False,
    start: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, list[float]]:
    """Milliseconds per call of each candidate: ``warmup`` untimed calls each, then ``runs`` rounds in which
    every candidate is called once, the starting candidate rotating from round to round (``start``: the round
    number to rotate from, so that a run continued in blocks keeps rotating)."""
    keys = list(fns)
    for key in keys:
        for _ in range(warmup):
            fns[key]()
    times: dict[Hashable, list[float]] = {k: [] for k in keys}
    rounds = range(runs)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc="timing", unit="round", leave=False)
    for r in rounds:
        for i in range(len(keys)):
            key = keys[(start + r + i) % len(keys)]
            t = clock()
            fns[key]()
            times[key].append((clock() - t) * 1e3)
    return times


def time_blocks(
    groups: dict[Hashable, dict[Hashable, Callable[[], object]]],
    warmup: int,
    runs: int,
    blocks: int = 5,
    progress: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[Hashable, list[float]]:
    """:func:`time_interleaved` for groups that must not share a round (two runtimes whose idle worker threads
    would steal each other's cores), without timing one group minutes before the other: the ``runs`` rounds of
    every group are cut into ``blocks`` blocks, and the groups take turns block by block (A1 B1 A2 B2 ...). So a
    ratio between groups sees the same drift of a shared machine on both sides. Keys must be unique across
    groups; the result maps each candidate key to its ``runs`` timings (ms)."""
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    out: dict[Hashable, list[float]] = {}
    for fns in groups.values():
        for key, fn in fns.items():
            if key in out:
                raise ValueError(f"candidate {key!r} appears in two groups")
            out[key] = []
            for _ in range(warmup):
                fn()
    sizes = [runs // blocks + (1 if i < runs % blocks else 0) for i in range(blocks)]
    total = sum(len(f) for f in groups.values()) * runs
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="timing", unit="call", leave=False)
    done = 0
    for size in sizes:
        for fns in groups.values():
            if not fns or not size:
                continue
            part = time_interleaved(fns, 0, size, start=done, clock=clock)
            for key, values in part.items():
                out[key].extend(values)
            if bar is not None:
                bar.update(size * len(fns))
        done += size
    if bar is not None:
        bar.close()
    return out


def p90(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]


def ort_session(path: str | Path, threads: int):
    """An ONNX Runtime CPU session with a pinned thread count and every graph optimisation on."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 1:
        # idle workers of one session would otherwise spin on the cores the next session needs (interleaved timing)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


#: our precision names -> OpenVINO's inference precision hint (an INT8 model keeps its non-quantised ops in f32)
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


def openvino_compiled(model, threads: int, precision: str = "fp32"):
    """An OpenVINO CPU compiled model (``model``: an ``openvino.Model`` or a path to IR / ONNX) for batch-1
    latency: one stream, ``threads`` inference threads, ``precision`` as the inference precision hint (``bf16``
    only where the CPU has native bf16, else OpenVINO silently computes in f32)."""
    ov = require("openvino")
    if precision not in OPENVINO_HINTS:
        raise ValueError(f"OpenVINO precision must be one of {', '.join(OPENVINO_HINTS)}, got {precision!r}")
    config = {
        "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    }
    return ov.Core().compile_model(model if not isinstance(model, Path) else str(model), "CPU", config)


def openvino_runner(compiled) -> Callable:
    """``runner(x) -> logits``: a float32 NCHW tensor through one infer request of ``compiled`` (output copied,
    the request's buffer is reused by the next call)."""
    import torch

    request = compiled.create_infer_request()

    def run(x) -> torch.Tensor:
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


class OpenVINOClassifier:
    """A PyTorch classifier converted to OpenVINO and run there, called like the module (float32 NCHW in,
    float32 logits out). Compiled once per input shape (OpenVINO's CPU plugin specialises on it); ``source`` is
    the module it was converted from (its parameters tell callers the device, the CPU)."""

    def __init__(self, source, precision: str = "fp32", threads: int | None = None) -> None:
        require("openvino")
        self.source, self.precision = source.eval(), precision
        self.threads = threads or os.cpu_count() or 1
        self._runners: dict[tuple[int, ...], Callable] = {}

    def __call__(self, x):
        import openvino as ov

        key = tuple(x.shape)
        if key not in self._runners:
            model = ov.convert_model(self.source, example_input=x)
            self._runners[key] = openvino_runner(openvino_compiled(model, self.threads, self.precision))
        return self._runners[key](x.float().cpu().contiguous())

    # the nn.Module surface a predictor uses
    def parameters(self):
        return self.source.parameters()

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    @property
    def training(self) -> bool:
        return False
