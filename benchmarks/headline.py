"""The headline table of benchmarks/README.md, regenerated from the results files (never typed by hand):
for every network of one ``efficientformer benchmark`` run, its fastest backend (runtime + precision) on that
CPU with the median over all calls, the spread of the repeats' medians, its fastest fp32 backend, the ratio to
MobileNetV2's fastest (median and spread over the repeats), its fastest PyTorch backend where the run timed any
(compiled ones included: inductor-aot, pt2e-int8), and the top-1 agreement with fp32 of the fastest backend on
real photos (``agreement_photos.py`` results, where present). The stamp line says the clock (wall time or the
process's CPU time), threads, CPU, ISA and the load average sampled during the run.

    python benchmarks/headline.py --bench benchmarks/results/headline_cpu.json \
        --agreement 'benchmarks/results/agree_*.json' --update benchmarks/README.md

``--update`` replaces the text between the ``<!-- headline:start -->`` and ``<!-- headline:end -->`` markers
(``--block NAME``: between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, for a second record of another run).
"""

from __future__ import annotations

import argparse
import glob
import json
import statistics
from pathlib import Path

AGREE_START, AGREE_END = "<!-- agreement:start -->", "<!-- agreement:end -->"
NAMES = {
    "efficientformerv2_s0": "V2-S0",
    "efficientformerv2_s1": "V2-S1",
    "efficientformer_l1": "L1",
    "mobilenetv2_100": "MobileNetV2 (timm)",
    "mobilenetv3_large_100": "MobileNetV3-Large (timm)",
    "mobilenetv4_conv_small": "MobileNetV4-Conv-Small (timm)",
}


def _label(row: dict) -> str:
    return f"{row['backend']} ({row['precision']})"


def runtime_of(backend: str) -> str:
    """The registry's runtime of a backend name (torch, onnxruntime, openvino, cuda); a name the registry no
    longer has: by its prefix."""
    try:
        from efficientformer.deploy.backends import BACKENDS

        if backend in BACKENDS:
            return BACKENDS[backend].runtime
    except ImportError:
        pass
    return next((r for r in ("onnxruntime", "openvino", "cuda") if backend.startswith(r)), "torch")


def table(bench: dict, agreements: dict[str, dict], reference: str = "mobilenetv2_100") -> str:
    rows = [r for r in bench["rows"] if r["batch"] == 1 and r["impl"] in ("ours", "timm")]
    ours = {r["model"] for r in rows if r["impl"] == "ours"}
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        if r["impl"] == "ours" or r["model"] not in ours:  # timm's copies of our models are not a network of their own
            by_model.setdefault(r["model"], []).append(r)
    fastest = {m: min(rs, key=lambda r: r["median_ms"]) for m, rs in by_model.items()}
    ref = fastest.get(reference)
    env = bench["environment"]
    clock = {"cpu": "the process's CPU time per call", "wall": "wall-clock time per call"}.get(
        bench["config"].get("clock", "wall"), bench["config"].get("clock", "wall")
    )
    torch_rows = any(runtime_of(r["backend"]) == "torch" for r in rows)
    lines = [
        f"One run ({env.get('time', 'time not recorded')}): `{bench['config'].get('repeats', 1)}` repeats x "
        f"{bench['config']['runs']} interleaved rounds, {env['threads']} thread(s), clock: {clock}, batch 1, "
        f"{bench['config']['img_size']} px, {env['cpu_model']} ({', '.join(env.get('isa', []))}); load average "
        f"(1 min) sampled {env.get('loadavg_samples')}"
        + (f"; **{bench['warnings'][0]}**" if bench.get("warnings") else "")
        + ".",
        "",
        "| network | fastest backend (precision) | median ms | repeats' medians | fastest fp32 (ms) "
        + ("| fastest PyTorch (ms) " if torch_rows else "")
        + f"| vs {NAMES.get(reference, reference)} fastest (median, spread) | top-1 agreement with fp32, real photos "
        "(largest logit diff) |",
        "|---|---|---:|---|---|" + ("---|" if torch_rows else "") + "---:|---|",
    ]
    for model, rs in by_model.items():
        best = fastest[model]
        fp32 = min((r for r in rs if r["precision"] == "fp32"), key=lambda r: r["median_ms"], default=None)
        ratio = ""
        if ref is not None and best["repeat_medians_ms"] and ref["repeat_medians_ms"]:
            vals = [a / b for a, b in zip(best["repeat_medians_ms"], ref["repeat_medians_ms"], strict=False)]
            ratio = f"{statistics.median(vals):.2f}x ({min(vals):.2f}-{max(vals):.2f})"
        agree = "fp32" if best["precision"] == "fp32" else "not measured"
        a = agreements.get(model, {}).get("backends", {}).get(best["backend"])
        if a and "top1_agreement" in a:
            d = agreements[model]
            agree = (
                f"{100 * a['top1_agreement']:.1f}% of {d['images']} ({100 * a['max_logit_diff_rel']:.1f}% of the "
                f"largest logit; {d['weights']}, fp32 top-1 spans {d['fp32_distinct_top1']} classes)"
            )
        reps = " / ".join(f"{v:.2f}" for v in best.get("repeat_medians_ms", []))
        fp32_text = f"{fp32['backend']} {fp32['median_ms']:.2f}" if fp32 else ""
        pt = min((r for r in rs if runtime_of(r["backend"]) == "torch"), key=lambda r: r["median_ms"], default=None)
        pt_text = f"| {pt['backend']} ({pt['precision']}) {pt['median_ms']:.2f} " if pt else "| "
        pt_text = pt_text if torch_rows else ""
        lines.append(
            f"| {NAMES.get(model, model)} | {_label(best)} | {best['median_ms']:.2f} | {reps} | {fp32_text} "
            f"{pt_text}| {ratio} | {agree} |"
        )
    return "\n".join(lines) + "\n"


def agreement_table(files: list[dict]) -> str:
    """Every agreement_photos.py result: per backend, top-1 agreement with fp32 and the largest logit difference
    (share of the largest fp32 logit), all scored images and the photographs alone."""
    lines = [
        "| network (weights; images; distinct fp32 top-1 classes) | backend | top-1 agreement | largest logit "
        "diff | photos only: agreement, logit diff |",
        "|---|---|---:|---:|---:|",
    ]
    for d in files:
        what = f"{NAMES.get(d['model'], d['model'])} ({d['weights']}; {d['images']}; {d['fp32_distinct_top1']})"
        for name, a in d["backends"].items():
            if "error" in a:
                lines.append(f"| {what} | {name} | failed: {a['error']} | | |")
                continue
            photos = a.get("photos_only")
            ph = f"{100 * photos['top1_agreement']:.1f}%, {100 * photos['max_logit_diff_rel']:.1f}%" if photos else ""
            lines.append(
                f"| {what} | {name} | {100 * a['top1_agreement']:.1f}% | {100 * a['max_logit_diff_rel']:.1f}% | {ph} |"
            )
    return "\n".join(lines) + "\n"


def _replace(doc: str, start: str, end: str, text: str, name: str) -> str:
    if start not in doc or end not in doc:
        raise SystemExit(f"{name} has no {start} ... {end} block")
    head, rest = doc.split(start, 1)
    return head + start + "\n" + text + end + rest.split(end, 1)[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, help="the benchmark's JSON results file")
    p.add_argument("--agreement", default=None, help="glob of agreement_photos.py JSON files")
    p.add_argument("--reference", default="mobilenetv2_100", help="the network the ratio column divides by")
    p.add_argument("--update", default=None, help="a Markdown file whose headline block is replaced")
    p.add_argument("--block", default="headline", help="the marker name of the block --update replaces")
    args = p.parse_args()
    bench = json.loads(Path(args.bench).read_text())
    agreements, files = {}, []
    for f in sorted(glob.glob(args.agreement)) if args.agreement else []:
        data = json.loads(Path(f).read_text())
        files.append(data)
        if data.get("set", "").startswith("package photos") and data.get("img_size") == bench["config"]["img_size"]:
            agreements[data["model"]] = data
    text = table(bench, agreements, args.reference)
    agree = agreement_table(files)
    print(text + "\n" + agree)
    if args.update:
        doc = Path(args.update).read_text()
        doc = _replace(doc, f"<!-- {args.block}:start -->", f"<!-- {args.block}:end -->", text, args.update)
        if AGREE_START in doc:
            doc = _replace(doc, AGREE_START, AGREE_END, agree, args.update)
        Path(args.update).write_text(doc)


if __name__ == "__main__":
    main()
