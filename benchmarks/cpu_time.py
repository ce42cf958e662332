"""CPU time per inference at 1 thread, PyTorch (Inductor) against ONNX Runtime, interleaved.

On a shared machine the wall-clock ratios move with other sessions' load (benchmarks/README.md, "Measurement").
At 1 thread both runtimes run the whole inference on the calling thread, so ``time.thread_time`` around a call
counts the CPU time of the inference itself and not the time the thread spent preempted: a kernel-efficiency
comparison that the load moves much less (caches are still shared). Every candidate is called once per round, in
rotating order.

    python benchmarks/cpu_time.py --model efficientformerv2_s0,mobilenetv2_100 \\
        --backend inductor-cpp,inductor-aot,onnxruntime --runs 40 --json benchmarks/results/ind_cputime.json

``--scaling`` adds wall-clock rows at 1 and 2 threads for every candidate (same interleaved rounds; the thread
count is set before each torch call, ONNX Runtime gets one session per count, its spinning off as in the
benchmark): the 2-thread speed-up of each runtime on the machine as loaded at the time. Run it under
``OMP_WAIT_POLICY=PASSIVE``, as the benchmark does.

``--conv-overhead`` also times torch's fused oneDNN convolution op (the one Inductor's frozen graphs call) on
convolutions with almost no arithmetic (16 channels, 1x1 and 2x2 px): what is left is the per-call cost of the
op itself, which every one of a model's convolutions pays; and the same for a chain of 64 such convolutions
(1x1, GELU) compiled by each backend, per convolution: the fixed cost per convolution in each runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from efficientformer import create_model
from efficientformer.deploy import deploy
from efficientformer.deploy.export import write_onnx
from efficientformer.deploy.inductor import compile_aot, compile_frozen
from efficientformer.deploy.modules import FusedConv2d
from efficientformer.utils.machine import machine_report
from efficientformer.utils.timing import ort_session

BACKENDS = ("inductor", "inductor-cpp", "inductor-aot", "onnxruntime")


def build(backend: str, model: torch.nn.Module, x: torch.Tensor, tmp: Path, threads: int = 1):
    """The timed call of one backend (``threads``: ONNX Runtime's session's count; torch uses the global one)."""
    if backend == "onnxruntime":
        path = tmp / f"m{len(list(tmp.iterdir()))}.onnx"
        write_onnx(model, x, path)  # the exporter and settings of `efficientformer export`
        sess = ort_session(path, threads)
        name, xn = sess.get_inputs()[0].name, x.numpy()
        return lambda: sess.run(None, {name: xn})
    if backend == "inductor-aot":
        compiled = compile_aot(model, x)
    else:
        compiled = compile_frozen(model, x, cpp_wrapper=backend == "inductor-cpp")

    def call() -> None:
        with torch.no_grad():
            compiled(x)

    return call


def with_threads(fn, threads: int):
    """``fn`` with torch's thread count set to ``threads`` first (ONNX Runtime sessions ignore it)."""

    def call() -> None:
        torch.set_num_threads(threads)
        fn()

    return call


def cpu_times(fns: dict, warmup: int, runs: int, clock=time.thread_time) -> dict[str, list[float]]:
    """Milliseconds of thread CPU time (or ``clock``'s) per call, ``runs`` interleaved rounds, rotating start."""
    keys = list(fns)
    for key in keys:
        for _ in range(warmup):
            fns[key]()
    out: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(runs):
        for i in range(len(keys)):
            key = keys[(r + i) % len(keys)]
            t = clock()
            fns[key]()
            out[key].append((clock() - t) * 1e3)
    return out


def conv_overhead(runs: int = 300) -> dict[str, float]:
    """Microseconds of thread CPU time per call of ``mkldnn._convolution_pointwise`` with almost no work."""
    out = {}
    for label, chs, px, k, groups, act in (
        ("1x1, no post-op", 16, 1, 1, 1, "none"),
        ("1x1, GELU post-op", 16, 1, 1, 1, "gelu"),
        ("depthwise 3x3, GELU post-op", 16, 2, 3, 16, "gelu"),
    ):
        x = torch.randn(1, chs, px, px).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(chs, chs // groups, k, k), torch.randn(chs)
        geometry = ([k // 2] * 2, [1, 1], [1, 1], groups)
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(w.to_mkldnn(), *geometry, list(x.shape))
        algorithm = "none" if act == "gelu" else ""  # erf GELU, as Inductor emits it

        def fn(x=x, packed=packed, b=b, geometry=geometry, act=act, algorithm=algorithm) -> None:
            torch.ops.mkldnn._convolution_pointwise(x, packed, b, *geometry, act, [], algorithm)

        out[label] = statistics.median(cpu_times({label: fn}, 50, runs)[label]) * 1e3
    return out


def conv_chain_cost(backends: list[str], tmp: Path, length: int = 64, runs: int = 100) -> dict[str, float]:
    """Microseconds of thread CPU time per convolution in a chain of ``length`` tiny 1x1 convolutions + GELU."""
    chain = torch.nn.Sequential(*[FusedConv2d(16, 16, act="gelu") for _ in range(length)]).eval()
    x = torch.randn(1, 16, 2, 2)
    fns = {b: build(b, chain, x, tmp) for b in backends}
    return {b: statistics.median(t) * 1e3 / length for b, t in cpu_times(fns, 20, runs).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientformerv2_s0", help="comma-separated; mobilenetv2_100 is timm's")
    p.add_argument("--backend", default="inductor-cpp,inductor-aot,onnxruntime", help=f"from {', '.join(BACKENDS)}")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=40)
    p.add_argument("--scaling", action="store_true", help="also wall-clock rows at 1 and 2 threads")
    p.add_argument("--conv-overhead", action="store_true", help="also time the per-call cost of the conv op")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args()
    backends = args.backend.split(",")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        p.error(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    torch.set_num_threads(1)
    img = args.img_size
    x = torch.randn(1, 3, img, img)
    load_start = os.getloadavg()
    fns, wall = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model.split(","):
            if name == "mobilenetv2_100":
                import timm  # optional: only for the baseline

                model = timm.create_model(name, pretrained=False).eval()
            else:
                model = deploy(create_model(name, img_size=img).eval())
            for backend in backends:
                print(f"building {name} {backend}", flush=True)
                fns[(name, backend)] = build(backend, model, x, Path(tmp))
                if args.scaling:
                    wall[(name, backend, 1)] = with_threads(fns[(name, backend)], 1)
                    two = build(backend, model, x, Path(tmp), 2) if backend == "onnxruntime" else fns[(name, backend)]
                    wall[(name, backend, 2)] = with_threads(two, 2)
        times = cpu_times(fns, args.warmup, args.runs)
        torch.set_num_threads(1)
        wall_times = cpu_times(wall, args.warmup, args.runs, time.perf_counter) if wall else {}
    rows = [
        {"model": m, "backend": b, "median_cpu_ms": statistics.median(t), "min_cpu_ms": min(t)}
        for (m, b), t in times.items()
    ]
    med = {(r["model"], r["backend"]): r["median_cpu_ms"] for r in rows}
    print(
        f"1 thread, CPU time per call (median of {args.runs} interleaved rounds), load {load_start} -> "
        f"{os.getloadavg()}"
    )
    for r in rows:
        ort = med.get((r["model"], "onnxruntime"))
        vs = f"  / onnxruntime {r['median_cpu_ms'] / ort:.3f}" if ort else ""
        print(f"  {r['model']:22s} {r['backend']:13s} {r['median_cpu_ms']:7.2f} ms{vs}")
    result = {
        "machine": machine_report(1),
        "loadavg": [load_start, os.getloadavg()],
        "runs": args.runs,
        "img_size": img,
        "rows": rows,
    }
    if wall_times:
        wmed = {k: statistics.median(t) for k, t in wall_times.items()}
        result["wall_scaling"] = [
            {"model": m, "backend": b, "threads": n, "median_wall_ms": v} for (m, b, n), v in wmed.items()
        ]
        print("wall clock, 1 and 2 threads (median), and the 2-thread speed-up:")
        for (m, b, n), v in wmed.items():
            if n == 2:
                print(f"  {m:22s} {b:13s} 1T {wmed[(m, b, 1)]:7.2f} ms  2T {v:7.2f} ms  x{wmed[(m, b, 1)] / v:.2f}")
    if args.conv_overhead:
        result["conv_op_overhead_us"] = conv_overhead()
        for label, us in result["conv_op_overhead_us"].items():
            print(f"  mkldnn._convolution_pointwise, {label}: {us:.1f} us CPU per call")
        with tempfile.TemporaryDirectory() as tmp:
            result["conv_chain_us_per_conv"] = conv_chain_cost(backends, Path(tmp))
        for b, us in result["conv_chain_us_per_conv"].items():
            print(f"  chain of 64 tiny 1x1 conv + GELU, {b}: {us:.1f} us CPU per convolution")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
