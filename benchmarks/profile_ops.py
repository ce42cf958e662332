"""Per-op time profile of one model in one backend: where the time goes, for the README's "measured reason" rows.

    python benchmarks/profile_ops.py --model efficientformerv2_s0 --backend inductor,pt2e-int8,onnxruntime-int8

torch backends: ``torch.profiler`` self CPU time per op (compiled graphs show their oneDNN ops and the generated
C++ kernels by name); ONNX Runtime: its own profiler, time per node type. Prints the top ``--top`` entries with
their share of the total, averaged over ``--runs`` calls after warm-up.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

import torch

from efficientformer.bench.latency import _export_plain_onnx, _int8_from, _random_batches
from efficientformer.deploy import deploy
from efficientformer.deploy.inductor import compile_frozen
from efficientformer.deploy.pt2e import quantize_pt2e_x86
from efficientformer.models import create_model


def torch_profile(fn, runs: int) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    return {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages()}


def ort_profile(path: Path, x, threads: int, runs: int) -> dict[str, float]:
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
            out[ev["args"]["op_name"]] += ev["dur"] / 1e3 / runs
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientformerv2_s0")
    p.add_argument("--backend", default="deploy,inductor,onnxruntime")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
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
                path = Path(tmp) / "m.onnx"
                _export_plain_onnx(fused, path, img, 1)
                if backend.endswith("int8"):
                    _int8_from(path, path.with_suffix(".int8.onnx"), img)
                    path = path.with_suffix(".int8.onnx")
                prof = ort_profile(path, x.numpy(), args.threads, args.runs)
        else:
            if backend == "deploy":
                model = fused
            elif backend == "pt2e-int8":
                model = quantize_pt2e_x86(fused, x, _random_batches(1, img, 4))
            else:
                model = compile_frozen(fused, x, "bf16" if backend.endswith("bf16") else "fp32")

            def fn(model=model):
                with torch.no_grad():
                    model(x)

            for _ in range(5):
                fn()
            prof = torch_profile(fn, args.runs)
        total = sum(prof.values())
        print(f"\n{backend}: {total:.2f} ms of op time per call")
        for key, ms in sorted(prof.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {ms:7.3f} ms  {100 * ms / total:5.1f}%  {key[:90]}")


if __name__ == "__main__":
    main()
