"""Why bf16 autocast is not the CPU default for training (issue #13, goal 5): oneDNN's bf16 backward of a 1x1
convolution, 1 vs 2 threads, fp32 vs bf16, channels-last vs NCHW, timed in one process.

    python benchmarks/bf16_conv_backward.py                       # V2-S0's first MLP fc2: 128 -> 32 at 56x56
    python benchmarks/bf16_conv_backward.py --cin 1024 --cout 176 --size 7

Each row: forward + both gradients, the weight gradient alone, the input gradient alone (median of ``--runs``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from efficientformer.utils.machine import bf16_support, cpu_model, pin_allocator


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def time_case(args: argparse.Namespace, dtype: torch.dtype, channels_last: bool) -> tuple[float, float, float]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = torch.nn.Conv2d(args.cin, args.cout, 1).to(dtype=dtype, memory_format=fmt)
    x = torch.randn(args.batch, args.cin, args.size, args.size, dtype=dtype).to(memory_format=fmt).requires_grad_()
    grad = torch.randn(args.batch, args.cout, args.size, args.size, dtype=dtype).to(memory_format=fmt)
    both = median_ms(lambda: torch.autograd.grad(conv(x), [x, conv.weight], grad), args.runs)
    weight = median_ms(lambda: torch.autograd.grad(conv(x), [conv.weight], grad), args.runs)
    inp = median_ms(lambda: torch.autograd.grad(conv(x), [x], grad), args.runs)
    return both, weight, inp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cin", type=int, default=128, help="input channels of the 1x1 convolution")
    p.add_argument("--cout", type=int, default=32, help="output channels")
    p.add_argument("--size", type=int, default=56, help="feature-map side")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    print(pin_allocator())
    print(f"{cpu_model()}; {bf16_support()[1]}; torch {torch.__version__}; load {os.getloadavg()}")
    print("| threads | dtype | layout | fwd + both grads (ms) | weight grad (ms) | input grad (ms) |")
    print("|---:|---|---|---:|---:|---:|")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (True, False):
                cells = [f"{t:.2f}" for t in time_case(args, dtype, channels_last)]
                layout = "channels-last" if channels_last else "NCHW"
                print(f"| {threads} | {str(dtype)[6:]} | {layout} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
