"""Wall-clock timing shared by the benchmark and the INT8 report, and the ONNX Runtime session they both use.

``time_interleaved`` is the one to compare implementations with: it runs one call of every candidate per round
(in a rotating order), so slow drifts of a shared machine (other jobs, frequency changes, thermal state) land on
all candidates alike instead of on whichever happened to be measured during the busy minute.
"""

from __future__ import annotations

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


def time_interleaved(
    fns: dict[Hashable, Callable[[], object]], warmup: int, runs: int, progress: bool = False
) -> dict[Hashable, list[float]]:
    """Milliseconds per call of each candidate: ``warmup`` untimed calls each, then ``runs`` rounds in which
    every candidate is called once, the starting candidate rotating from round to round."""
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
            key = keys[(r + i) % len(keys)]
            t = time.perf_counter()
            fns[key]()
            times[key].append((time.perf_counter() - t) * 1e3)
    return times


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
