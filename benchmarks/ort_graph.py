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
* ``upsample-nearest-dw``: the bilinear x2 upsample as nearest x2 (a ``Resize`` ONNX Runtime keeps in its blocked
  NCHWc layout), an edge pad and a fixed depthwise 3x3 ``[1, 2, 1] x [1, 2, 1] / 16`` convolution (exact to
  rounding: bilinear x2 with half-pixel centres is that filter on the nearest-upsampled map);
* ``no-gelu``: every ``Gelu`` removed (NOT the model: a bound on what any GELU kernel or fusion could buy);
* ``act-relu`` / ``act-hardswish``: the same network with ReLU / Hardswish for GELU (the int8-friendly variants
  ``<model>_relu`` / ``_hardswish``, other weights: NOT the published model; what ONNX Runtime does with an
  activation it fuses into the convolution);
* ``level-extended``: the base file with ONNX Runtime's layout optimisations (NCHWc) off
  (``ORT_ENABLE_EXTENDED``), to see what the blocked layout gives each network;
* ``mobilenetv2_100``: timm's MobileNetV2, for the S0 / MobileNetV2 ratio in the same run.

``--profile`` adds ONNX Runtime's own view of ``base`` and MobileNetV2 (1 thread, its profiler): time per operator
type, the convolutions split by kind (dense / depthwise / 1x1, resolution) with their multiply-accumulates and
GMAC/s, and the node types of the graph ONNX Runtime actually runs (after its optimisers: NCHWc convolutions with
fused activations, reorders): where S0 spends time that MobileNetV2 does not.
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


def upsample2x_nearest_dw(x: torch.Tensor, interpolate=torch.nn.functional.interpolate) -> torch.Tensor:
    """Bilinear x2 (``align_corners=False``) as nearest x2, an edge pad and a depthwise [1, 2, 1] x [1, 2, 1] / 16
    filter: nearest x2 repeats x[i] at 2i and 2i+1, so the filter gives 0.25 x[i-1] + 0.75 x[i] at 2i and
    0.75 x[i] + 0.25 x[i+1] at 2i+1, bilinear's weights; the edge pad repeats the border as bilinear clamps it."""
    f = torch.nn.functional
    c = x.shape[1]
    taps = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype)
    u = f.pad(interpolate(x, scale_factor=2.0, mode="nearest"), (1, 1, 1, 1), mode="replicate")
    return f.conv2d(u, torch.outer(taps, taps).expand(c, 1, 3, 3).contiguous(), groups=c)


def export_upsample_nearest_dw(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """The base export with every stride-2 attention's bilinear x2 upsample as :func:`upsample2x_nearest_dw`."""
    functional = torch.nn.functional
    original = functional.interpolate

    def interp(t, size=None, scale_factor=None, mode="nearest", align_corners=None, **kw):
        if scale_factor == 2.0 and mode == "bilinear" and not align_corners:
            return upsample2x_nearest_dw(t, original)
        return original(t, size, scale_factor, mode, align_corners, **kw)

    functional.interpolate = interp
    try:
        write_onnx(model, x, path)
    finally:
        functional.interpolate = original


def remove_gelu(src: Path, dst: Path) -> None:
    """Every ``Gelu`` node bypassed: a bound, not a model."""
    mp = onnx.load(str(src))
    rename = {n.output[0]: n.input[0] for n in mp.graph.node if n.op_type == "Gelu"}
    keep = [n for n in mp.graph.node if n.op_type != "Gelu"]
    for n in keep:
        for i, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[i] = name
    del mp.graph.node[:]
    mp.graph.node.extend(keep)
    onnx.save(mp, str(dst))


def session(path: Path, profile: bool = False, level: str = "all", optimized: Path | None = None):
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
    o.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    if optimized is not None:
        o.optimized_model_filepath = str(optimized)
    if profile:
        o.enable_profiling = True
        o.profile_file_prefix = str(path.with_suffix(""))
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def _conv_kind(x_shape: list[int], w_shape: list[int], y_shape: list[int]) -> str:
    k = w_shape[2]
    if k == 1:
        return f"conv 1x1 @{y_shape[2]}"
    kind = "depthwise" if w_shape[1] == 1 else "dense"
    return f"conv {kind} {k}x{k} @{y_shape[2]}"


def op_profile(path: Path, feed: dict, runs: int = 20) -> dict[str, float]:
    return detailed_profile(path, feed, runs)["ops"]


def detailed_profile(path: Path, feed: dict, runs: int = 20) -> dict:
    """ONNX Runtime's profile of one file, 1 thread: ms per call per operator type; per convolution kind ms,
    GMAC per call and GMAC/s (weights: [out, in/groups, k, k], MACs = output elements x in/groups x k x k);
    and the node types of the optimised graph it runs."""
    tmp = Path(tempfile.mkdtemp())
    session(path, optimized=tmp / "optimized.onnx")  # writes the graph after ONNX Runtime's optimisers
    runtime_nodes = collections.Counter(
        (n.op_type if n.domain in ("", "ai.onnx") else f"{n.op_type} ({n.domain})")
        + (
            " +" + next(a.s.decode() for a in n.attribute if a.name == "activation")
            if any(a.name == "activation" for a in n.attribute)
            else ""
        )
        for n in onnx.load(str(tmp / "optimized.onnx")).graph.node
    )
    s = session(path, profile=True)
    for _ in range(3):
        s.run(None, feed)
    f = s.end_profiling()  # the warm-up calls' profile is thrown away
    s = session(path, profile=True)
    for _ in range(runs):
        s.run(None, feed)
    f = s.end_profiling()
    ops: dict[str, float] = collections.defaultdict(float)
    convs: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for e in json.load(open(f)):
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op, ms = e["args"]["op_name"], e["dur"] / 1e3 / runs
        ops[op] += ms
        if op in ("Conv", "FusedConv"):
            ins = [next(iter(d.values())) for d in e["args"].get("input_type_shape", [])]
            out = [next(iter(d.values())) for d in e["args"].get("output_type_shape", [])]
            if len(ins) >= 2 and out and len(ins[1]) == 4:
                kind = _conv_kind(ins[0], ins[1], out[0])
                macs = float(np.prod(out[0])) * ins[1][1] * ins[1][2] * ins[1][3]
                convs[kind][0] += ms
                convs[kind][1] += macs / 1e9 / runs
                convs[kind][2] += 1 / runs
    os.remove(f)
    conv_rows = {
        k: {"ms": v[0], "gmac": v[1], "nodes": round(v[2]), "gmac_per_s": v[1] / (v[0] / 1e3)}
        for k, v in sorted(convs.items(), key=lambda kv: -kv[1][0])
    }
    return {
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "total_ms": sum(ops.values()),
        "convs": conv_rows,
        "runtime_nodes": dict(runtime_nodes.most_common()),
    }


def qdq_placement(int8_path: Path) -> dict[str, dict[str, int]]:
    """Where a QDQ INT8 file's quantisation sits: per operator type, how many nodes take every float input through
    a ``DequantizeLinear`` (run in int8 by ONNX Runtime's QDQ fusions), how many take some, and how many none
    (stay float, e.g. the excluded stem and classifier, GELU, Softmax)."""
    mp = onnx.load(str(int8_path))
    dq_out = {n.output[0] for n in mp.graph.node if n.op_type == "DequantizeLinear"}
    inits = {i.name for i in mp.graph.initializer}
    out: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"all inputs": 0, "some": 0, "none": 0})
    for n in mp.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        ins = [i for i in n.input if i and i not in inits]
        k = sum(i in dq_out for i in ins)
        out[n.op_type]["all inputs" if ins and k == len(ins) else "some" if k else "none"] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def print_profile(name: str, prof: dict) -> None:
    total = prof["total_ms"]
    conv_ms = sum(v["ms"] for v in prof["convs"].values())
    conv_gmac = sum(v["gmac"] for v in prof["convs"].values())
    print(
        f"\n{name}: {total:.2f} ms of kernel time per call; convolutions {conv_ms:.2f} ms, {conv_gmac:.3f} GMAC, "
        f"{conv_gmac / (conv_ms / 1e3):.1f} GMAC/s"
    )
    for op, ms in prof["ops"].items():
        print(f"  {op:22s} {ms:7.3f} ms {100 * ms / total:5.1f}%")
    for kind, v in prof["convs"].items():
        print(f"  {kind:26s} x{v['nodes']:<3d} {v['ms']:7.3f} ms {v['gmac']:.4f} GMAC {v['gmac_per_s']:6.1f} GMAC/s")
    print("  runtime graph:", prof["runtime_nodes"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientformerv2_s0")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument(
        "--variants",
        default="base,upsample-nearest-dw,no-gelu,level-extended,mobilenetv2_100",
        help="comma-separated, from: base, ms-gelu, upsample-ops, upsample-nearest-dw, tanh-gelu, no-gelu, "
        "act-relu, act-hardswish, level-extended, mobilenetv2_100",
    )
    p.add_argument("--runs", type=int, default=30, help="timed calls per variant per repeat (interleaved in chunks)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--profile",
        action="store_true",
        help="ONNX Runtime's per-op / per-conv-kind profile of base and MobileNetV2, and their runtime graphs",
    )
    p.add_argument("--profile-only", action="store_true", help="only the profile, no timing")
    p.add_argument("--qdq", action="store_true", help="also where ONNX Runtime static INT8 puts its Q/DQ nodes")
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
    strided = any(isinstance(m, GridAttention) and m.stride_conv for m in model.modules())
    if "upsample-ops" in wanted and strided:
        export_upsample_ops(model, x, tmp / "ups.onnx")
        paths["upsample-ops"] = tmp / "ups.onnx"
    if "upsample-nearest-dw" in wanted and strided:
        export_upsample_nearest_dw(model, x, tmp / "ups_dw.onnx")
        paths["upsample-nearest-dw"] = tmp / "ups_dw.onnx"
    if "no-gelu" in wanted:
        remove_gelu(paths["base"], tmp / "nogelu.onnx")
        paths["no-gelu"] = tmp / "nogelu.onnx"
    if "level-extended" in wanted:
        paths["level-extended"] = paths["base"]
    for act in ("relu", "hardswish"):
        if f"act-{act}" in wanted:
            write_onnx(deploy(create_model(f"{args.model}_{act}", img_size=img).eval()), x, tmp / f"{act}.onnx")
            paths[f"act-{act}"] = tmp / f"{act}.onnx"
    if "mobilenetv2_100" in wanted or args.profile or args.profile_only:
        import timm

        write_onnx(timm.create_model("mobilenetv2_100").eval(), x, tmp / "mnv2.onnx")
        paths["mobilenetv2_100"] = tmp / "mnv2.onnx"
    feed = {"image": x.numpy()}
    qdq = None
    if args.qdq:
        from efficientformer.deploy.backends import BackendContext, ort_int8_file, random_calibration

        qdq = qdq_placement(ort_int8_file(model, x, BackendContext(1, tmp, random_calibration(x, 4), "q")))
        print("QDQ placement (op: nodes with all / some / none of their inputs dequantized):", qdq)
    if args.profile or args.profile_only:
        profiles = {k: detailed_profile(paths[k], feed) for k in ("base", "mobilenetv2_100")}
        for k, prof in profiles.items():
            print_profile(args.model if k == "base" else k, prof)
        if args.profile_only:
            if args.json:
                Path(args.json).write_text(
                    json.dumps(
                        {"model": args.model, "loadavg": os.getloadavg(), "profiles": profiles, "qdq": qdq}, indent=2
                    )
                    + "\n"
                )
            return
    if "mobilenetv2_100" not in wanted:
        paths.pop("mobilenetv2_100", None)
    sessions = {k: session(v, level="extended" if k == "level-extended" else "all") for k, v in paths.items()}
    ref = sessions["base"].run(None, feed)[0]
    diffs = {
        k: float(np.abs(s.run(None, feed)[0] - ref).max())
        for k, s in sessions.items()
        if k != "mobilenetv2_100" and not k.startswith("act-")
    }
    x2 = {"image": torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).numpy()}
    ref2 = sessions["base"].run(None, x2)[0]
    for k, s in sessions.items():  # a second input, so a change exact on one image is not exact by chance
        if k != "mobilenetv2_100" and not k.startswith("act-"):
            diffs[k] = max(diffs[k], float(np.abs(s.run(None, x2)[0] - ref2).max()))
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
    result = {
        "model": args.model,
        "img_size": img,
        "clock": "thread CPU time, 1 intra-op thread",
        "loadavg": loads,
        "machine": {k: machine_report(1)[k] for k in ("cpu_model", "isa")},
        "max_abs_diff_vs_base": diffs,
        "base_nodes": collections.Counter(n.op_type for n in onnx.load(str(paths["base"])).graph.node),
        "variants": {},
    }
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
        result["profiles"] = profiles
    print("load average samples:", loads)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
