"""The goal-1 candidates that were measured and dropped (docs/notes/inductor_goal1.md), against the kept ones.

Each candidate is one way of compiling the deploy form (or of running ONNX Runtime); all are checked against the
eval model (max abs difference printed) and timed in one process: torch candidates interleaved round by round,
ONNX Runtime in groups of their own that alternate with them every round (as `efficientformer benchmark`).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/inductor_candidates.py --model efficientformerv2_s0 \\
        --candidates cpp,aot,autotune,channels-last,conv1x1-linear,ort,ort-spin --threads 2
    # CPU time at 1 thread instead of wall time (what the other sessions' load moves least):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/inductor_candidates.py --threads 1 --clock thread ...

Candidates:
  cpp              compile_frozen(cpp_wrapper=True): the `inductor-cpp` backend
  aot              compile_aot: the `inductor-aot` backend
  autotune         cpp + max_autotune=True
  channels-last    cpp with the model and the input in channels_last before compiling
  conv1x1-linear   cpp with every 1x1 convolution written as a linear layer over the channel axis (MKL GEMM)
  linear-autotune  conv1x1-linear + max_autotune (Inductor's C++ GEMM template competes)
  linear-cpp-gemm  conv1x1-linear + max_autotune choosing between Inductor's C++ GEMM template (inline: no
                   per-call op cost, bias / GELU / residual fused as its epilogue)
  loops-1thread    cpp with Inductor's generated loops single-threaded (cpp.threads=1; oneDNN keeps all)
  big-chunks       cpp with cpp.min_chunk_size=65536 (fewer generated loops parallelised)
  onednn-graph     TorchScript trace + freeze with oneDNN Graph fusion (torch.jit.enable_onednn_fusion)
  ort              ONNX Runtime as the benchmark runs it (intra-op spinning off)
  ort-spin         ONNX Runtime with its default spinning
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from efficientformer import create_model
from efficientformer.deploy import deploy
from efficientformer.deploy.export import write_onnx
from efficientformer.deploy.inductor import compile_aot, compile_frozen, compile_with_freezing
from efficientformer.deploy.modules import _ACTIVATIONS, FusedConv2d, set_cpu_kernels
from efficientformer.utils.machine import pin_allocator
from efficientformer.utils.optional import require
from efficientformer.utils.timing import ort_session, time_blocks

CANDIDATES = (
    "cpp",
    "aot",
    "autotune",
    "channels-last",
    "conv1x1-linear",
    "linear-autotune",
    "linear-cpp-gemm",
    "loops-1thread",
    "big-chunks",
    "onednn-graph",
    "ort",
    "ort-spin",
)


def _linear_forward(self: FusedConv2d, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
    """A 1x1 convolution as ``linear`` over the channel axis of the (channels-last) map."""
    y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
    act = _ACTIVATIONS[self.act]
    y = act(y) if act is not None else y
    return y if residual is None else y + residual


def conv1x1_as_linear(model: torch.nn.Module) -> torch.nn.Module:
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, FusedConv2d) and m.kernel_size == (1, 1) and m.groups == 1:
            m.forward = types.MethodType(_linear_forward, m)
    return out


def build(cand: str, model: torch.nn.Module, x: torch.Tensor, threads: int, tmp: Path):
    """(call, output) of one candidate."""
    if cand.startswith("ort"):
        ort = require("onnxruntime")
        path = tmp / "model.onnx"
        if not path.exists():
            write_onnx(model, x, path)
        if cand == "ort":
            sess = ort_session(path, threads)
        else:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name, xn = sess.get_inputs()[0].name, x.numpy()
        return (lambda: sess.run(None, {name: xn})), torch.from_numpy(sess.run(None, {name: xn})[0])
    inp = x
    if cand == "cpp":
        fn = compile_frozen(model, x, cpp_wrapper=True)
    elif cand == "aot":
        fn = compile_aot(model, x)
    elif cand == "autotune":
        fn = compile_frozen(model, x, cpp_wrapper=True, max_autotune=True)
    elif cand == "channels-last":
        inp = x.contiguous(memory_format=torch.channels_last)
        fn = compile_frozen(copy.deepcopy(model).to(memory_format=torch.channels_last), inp, cpp_wrapper=True)
    elif cand in ("conv1x1-linear", "linear-autotune"):
        fn = compile_frozen(conv1x1_as_linear(model), x, cpp_wrapper=True, max_autotune=cand == "linear-autotune")
    elif cand == "linear-cpp-gemm":
        inner = set_cpu_kernels(conv1x1_as_linear(model), False).requires_grad_(False)
        opts = {"freezing": True, "cpp_wrapper": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}
        fn = compile_with_freezing(inner, x, "fp32", opts)
    elif cand in ("loops-1thread", "big-chunks"):
        inner = set_cpu_kernels(copy.deepcopy(model), False).requires_grad_(False)
        extra = {"cpp.threads": 1} if cand == "loops-1thread" else {"cpp.min_chunk_size": 65536}
        fn = compile_with_freezing(inner, x, "fp32", {"freezing": True, "cpp_wrapper": True, **extra})
    elif cand == "onednn-graph":
        inner = set_cpu_kernels(copy.deepcopy(model), False).requires_grad_(False)
        torch.jit.enable_onednn_fusion(True)
        with torch.no_grad():
            fn = torch.jit.freeze(torch.jit.trace(inner, x))
            for _ in range(3):  # the fuser compiles its partitions on the first calls
                fn(x)
    else:
        raise ValueError(f"unknown candidate {cand!r}; choose from {', '.join(CANDIDATES)}")

    def call() -> None:
        with torch.no_grad():
            fn(inp)

    with torch.no_grad():
        return call, fn(inp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientformerv2_s0")
    p.add_argument("--candidates", default="cpp,aot,ort")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=("wall", "thread"),
        default="wall",
        help="thread: CPU time of the calling thread (meaningful at --threads 1 only)",
    )
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=40)
    args = p.parse_args()
    pin_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    eval_model = create_model(args.model, img_size=args.img_size).eval()
    model = deploy(eval_model)
    x = torch.randn(1, 3, args.img_size, args.img_size)
    with torch.no_grad():
        ref = eval_model(x)
    groups: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cand in args.candidates.split(","):
            t = time.time()
            call, out = build(cand, model, x, args.threads, Path(tmp))
            diff = float((out - ref).abs().max())
            print(f"{cand}: built in {time.time() - t:.0f} s, max |out - eval model| {diff:.2e}")
            groups.setdefault(cand if cand.startswith("ort") else "torch", {})[cand] = call
        load = os.getloadavg()
        if args.clock == "thread":
            fns = {k: f for g in groups.values() for k, f in g.items()}
            times = {k: [] for k in fns}
            for f in fns.values():
                for _ in range(args.warmup):
                    f()
            for r in range(args.runs):
                for i in range(len(fns)):
                    key = list(fns)[(r + i) % len(fns)]
                    t = time.thread_time()
                    fns[key]()
                    times[key].append((time.thread_time() - t) * 1e3)
        else:
            times = time_blocks(groups, args.warmup, args.runs, args.runs)
    print(
        f"{args.model}, {args.threads} thread(s), {args.clock} clock, {args.runs} rounds, load {load} -> "
        f"{os.getloadavg()}"
    )
    ort_med = statistics.median(times["ort"]) if "ort" in times else None
    for k, v in times.items():
        med = statistics.median(v)
        vs = f"  / ort {med / ort_med:.3f}" if ort_med else ""
        print(f"  {k:16s} median {med:7.2f} ms  p25 {sorted(v)[len(v) // 4]:7.2f} ms{vs}")


if __name__ == "__main__":
    main()
