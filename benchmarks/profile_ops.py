"""Per-op time profile of one model in one backend: where the time goes, for the README's "measured reason" rows.

    python benchmarks/profile_ops.py --model efficientformerv2_s0 --backend inductor,pt2e-int8,onnxruntime-int8

torch backends: ``torch.profiler`` self CPU time per op (compiled graphs show their oneDNN ops and the generated
C++ kernels by name); ONNX Runtime: its own profiler, time per node type. Prints the top ``--top`` entries with
their share of the total, averaged over ``--runs`` calls after warm-up. Inductor's generated C++ loops are
profiled by name (``cpp.enable_kernel_profile``). ``--by-kind`` also splits the convolution time by kind
(depthwise 3x3, 1x1, dense 3x3) and input resolution, from the weight shapes, in both runtimes: that is the
comparison that says which convolutions one runtime wins.

    python benchmarks/profile_ops.py --model efficientformerv2_s0 --backend inductor,onnxruntime --by-kind
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

from efficientformer import create_model
from efficientformer.deploy import deploy
from efficientformer.deploy.backends import BackendContext, onnx_file, ort_int8_file, random_calibration
from efficientformer.deploy.inductor import compile_frozen
from efficientformer.deploy.pt2e import quantize_pt2e_x86


def conv_kind(x_shape: list[int], w_shape: list[int]) -> str:
    """``"depthwise 3x3 s@56"``-style label of a convolution from its input and weight shapes."""
    k = w_shape[2]
    kind = "depthwise" if w_shape[1] == 1 and k > 1 else "dense"
    return f"conv {kind} {k}x{k} @{x_shape[2]}" if k > 1 else f"conv 1x1 @{x_shape[2]}"


def torch_profile(fn, runs: int, by_kind: bool = False) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=by_kind) as prof:
        for _ in range(runs):
            fn()
    out: dict[str, float] = collections.defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=by_kind):
        key = e.key
        if by_kind and "convolution" in key:
            shapes = [s for s in e.input_shapes if isinstance(s, list)]
            # (x, weight, bias, ...) or, with a fused residual, (x, other, weight, ...)
            weight = shapes[2] if len(shapes) > 2 and len(shapes[2]) == 4 else shapes[1]
            key = conv_kind(shapes[0], weight)
        out[key] += e.self_cpu_time_total / 1e3 / runs
    return dict(out)


def ort_profile(path: Path, x, threads: int, runs: int, by_kind: bool = False) -> dict[str, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.enable_profiling = threads, True
    opts.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(runs):
        sess.run(None, {name: x})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    out: dict[str, float] = collections.defaultdict(float)
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            key = ev["args"]["op_name"]
            if by_kind and key == "Conv":
                shapes = [next(iter(d.values())) for d in ev["args"].get("input_type_shape", [])]
                key = conv_kind(shapes[0], shapes[1])
            out[key] += ev["dur"] / 1e3 / runs
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientformerv2_s0")
    p.add_argument("--backend", default="deploy,inductor,onnxruntime")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--by-kind", action="store_true", help="split convolution time by kind and resolution")
    args = p.parse_args()
    inductor_config.cpp.enable_kernel_profile = True  # generated loops show up by name, not as one "graph" entry
    torch.set_num_threads(args.threads)
    img = args.img_size
    if args.model == "mobilenetv2_100":
        import timm

        fused = timm.create_model("mobilenetv2_100").eval()
    else:
        fused = deploy(create_model(args.model, img_size=img).eval())
    x = torch.randn(1, 3, img, img)
    print(f"{args.model} @ {img}, {args.threads} thread(s), load {os.getloadavg()}")
    for backend in args.backend.split(","):
        if backend.startswith("onnxruntime"):
            with tempfile.TemporaryDirectory() as tmp:
                ctx = BackendContext(args.threads, Path(tmp), random_calibration(x), "m")
                path = (ort_int8_file if backend.endswith("int8") else onnx_file)(fused, x, ctx)
                prof = ort_profile(path, x.numpy(), args.threads, args.runs, args.by_kind)
        else:
            if backend == "deploy":
                model = fused
            elif backend == "pt2e-int8":
                model = quantize_pt2e_x86(fused, x, random_calibration(x, 4))
            else:
                model = compile_frozen(fused, x, "bf16" if backend.endswith("bf16") else "fp32")

            def fn(model=model):
                with torch.no_grad():
                    model(x)

            for _ in range(5):
                fn()
            prof = torch_profile(fn, args.runs, args.by_kind)
        total = sum(prof.values())
        print(f"\n{backend}: {total:.2f} ms of op time per call")
        for key, ms in sorted(prof.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {ms:7.3f} ms  {100 * ms / total:5.1f}%  {key[:90]}")


if __name__ == "__main__":
    main()
