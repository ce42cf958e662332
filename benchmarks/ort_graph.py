"""ONNX graph changes for ONNX Runtime, each measured alone against the graph `efficientformer export` writes today,
interleaved, on one intra-op thread with the calling thread's CPU time as the clock: with one thread ONNX Runtime
runs every kernel in the calling thread, so ``time.thread_time`` counts the work and not the minutes the process
spent preempted by other jobs (the measurement that still means something on a shared machine).

    python benchmarks/ort_graph.py --model efficientformerv2_s0 --repeats 3 --runs 30 \
        --json benchmarks/results/ort_graph_s0.json

Variants (each one change; outputs compared with the base file, exact changes must agree to 1e-5):

* ``base``: the deploy form's export (opset 20, one ``Gelu`` node per GELU);
* ``ms-gelu``: every ``Gelu`` as ONNX Runtime's contrib ``com.microsoft.Gelu`` (the kernel its own transformer
  fusions produce; exact);
* ``upsample-ops``: V2's bilinear x2 upsample of the stride-2 attention written as edge-padded shifts and
  0.75 / 0.25 weighted adds instead of a ``Resize`` node (exact to rounding);
* ``tanh-gelu``: GELU's tanh approximation (``approximate="tanh"``: NOT exact, max |diff| reported), to see
  what a cheaper GELU kernel would buy;
* ``mobilenetv2_100``: timm's MobileNetV2, for the S0 / MobileNetV2 ratio in the same run.

Also prints ONNX Runtime's per-operator profile of ``base`` (``--profile``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from efficientformer import create_model
from efficientformer.deploy import deploy
from efficientformer.deploy.export import write_onnx
from efficientformer.deploy.modules import GridAttention
from efficientformer.utils.machine import machine_report
from efficientformer.utils.timing import time_callable


def rewrite_gelu(src: Path, dst: Path, kind: str) -> None:
    mp = onnx.load(str(src))
    for n in mp.graph.node:
        if n.op_type == "Gelu":
            del n.attribute[:]
            if kind == "ms":
                n.domain = "com.microsoft"
            else:
                n.attribute.append(helper.make_attribute("approximate", "tanh"))
    if kind == "ms":
        mp.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(mp, str(dst))


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)`` from shifts and weighted adds:
    output 2i is 0.75 x[i] + 0.25 x[i-1], output 2i+1 is 0.75 x[i] + 0.25 x[i+1], edges repeated."""
    for dim in (2, 3):
        n = x.shape[dim]
        prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)
        nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        shape = list(x.shape)
        shape[dim] *= 2
        x = torch.stack([even, odd], dim + 1).reshape(shape)
    return x


def export_upsample_ops(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """The base export with every stride-2 attention's ``F.interpolate`` replaced by :func:`upsample2x`."""
    functional = torch.nn.functional
    original = functional.interpolate

    def interp(t, size=None, scale_factor=None, mode="nearest", align_corners=None, **kw):
        if scale_factor == 2.0 and mode == "bilinear" and not align_corners:
            return upsample2x(t)
        return original(t, size, scale_factor, mode, align_corners, **kw)

    functional.interpolate = interp  # deploy/modules.py calls F.interpolate at run time: the export sees this
    try:
        write_onnx(model, x, path)
    finally:
        functional.interpolate = original


def session(path: Path, profile: bool = False):
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile:
        o.enable_profiling = True
        o.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def op_profile(path: Path, feed: dict, runs: int = 20) -> dict[str, float]:
    s = session(path, profile=True)
    for _ in range(runs):
        s.run(None, feed)
    f = s.end_profiling()
    tot: dict[str, float] = collections.defaultdict(float)
    for e in json.load(open(f)):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            tot[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    os.remove(f)
    return dict(sorted(tot.items(), key=lambda kv: -kv[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientformerv2_s0")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--variants", default="base,ms-gelu,upsample-ops,tanh-gelu,mobilenetv2_100")
    p.add_argument("--runs", type=int, default=30, help="timed calls per variant per repeat (interleaved in chunks)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="print ONNX Runtime's per-op profile of base")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    img = args.img_size
    x = torch.randn(1, 3, img, img)
    model = deploy(create_model(args.model, img_size=img).eval())
    wanted = args.variants.split(",")
    tmp = Path(tempfile.mkdtemp())
    paths = {"base": tmp / "base.onnx"}
    write_onnx(model, x, paths["base"])
    if "ms-gelu" in wanted:
        rewrite_gelu(paths["base"], tmp / "ms.onnx", "ms")
        paths["ms-gelu"] = tmp / "ms.onnx"
    if "tanh-gelu" in wanted:
        rewrite_gelu(paths["base"], tmp / "tanh.onnx", "tanh")
        paths["tanh-gelu"] = tmp / "tanh.onnx"
    if "upsample-ops" in wanted and any(isinstance(m, GridAttention) and m.stride_conv for m in model.modules()):
        export_upsample_ops(model, x, tmp / "ups.onnx")
        paths["upsample-ops"] = tmp / "ups.onnx"
    if "mobilenetv2_100" in wanted:
        import timm

        write_onnx(timm.create_model("mobilenetv2_100").eval(), x, tmp / "mnv2.onnx")
        paths["mobilenetv2_100"] = tmp / "mnv2.onnx"
    feed = {"image": x.numpy()}
    sessions = {k: session(v) for k, v in paths.items()}
    ref = sessions["base"].run(None, feed)[0]
    diffs = {k: float(np.abs(s.run(None, feed)[0] - ref).max()) for k, s in sessions.items() if k != "mobilenetv2_100"}
    loads = [os.getloadavg()[0]]
    per_repeat: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.repeats):
        chunks: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(5):  # chunks of runs, rotating, so slow drifts land on every variant
            for k, s in sessions.items():
                chunks[k] += time_callable(lambda s=s: s.run(None, feed), 2, max(1, args.runs // 5), time.thread_time)
        for k, v in chunks.items():
            per_repeat[k].append(statistics.median(v))
        loads.append(os.getloadavg()[0])
    result = {"model": args.model, "img_size": img, "clock": "thread CPU time, 1 intra-op thread", "loadavg": loads,
              "machine": {k: machine_report(1)[k] for k in ("cpu_model", "isa")}, "max_abs_diff_vs_base": diffs,
              "base_nodes": collections.Counter(n.op_type for n in onnx.load(str(paths["base"])).graph.node),
              "variants": {}}  # fmt: skip
    for k, meds in per_repeat.items():
        ratios = [a / b for a, b in zip(meds, per_repeat["base"], strict=True)]
        result["variants"][k] = {
            "median_ms": statistics.median(meds),
            "repeat_medians_ms": meds,
            "vs_base": statistics.median(ratios),
            "vs_base_spread": [min(ratios), max(ratios)],
        }
        print(
            f"{k:16s} {statistics.median(meds):7.2f} ms  repeats {[round(m, 2) for m in meds]}  vs base "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})  diff {diffs.get(k, '')}"
        )
    if args.profile:
        result["profile_base_ms"] = op_profile(paths["base"], feed)
        print("base per-op (ms):", {k: round(v, 2) for k, v in list(result["profile_base_ms"].items())[:10]})
    print("load average samples:", loads)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
