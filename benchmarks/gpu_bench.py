"""The GPU table of issue #13 in one call: inference (eager, deploy, compile; fp32, bf16; channels_last; batch 1
and 256) and training steps (eager, compile; fp32, bf16) for V2-S0, V2-S2 and L1 against timm's same models.

    bash benchmarks/gpu.sh                    # what the lent GPU machine runs; writes $OUT/gpu_results.{jsonl,md}
    python benchmarks/gpu_bench.py --models efficientformerv2_s0 --batches 1 --out /tmp/gpu

Timing: CUDA events around ``--iters`` calls after ``--warmup`` calls (compiles happen in the warm-up), median
of ``--repeats`` such blocks; images/s = batch x iters / time. Every finished row is appended to the JSONL file at
once, so a run cut short by the machine's time limit still leaves what it measured. Compiled inference uses
``mode="reduce-overhead"`` (CUDA graphs), because eager V2 is launch-bound at small batches. Assumes a Python
with CUDA torch and timm on the GPU machine (``PY=... bash benchmarks/gpu.sh``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

# benchmarks/: the one training step of the benchmarks
from train_throughput import default_flags, make_step, parse_combo

from efficientformer.deploy import deploy
from efficientformer.models import create_model
from efficientformer.models.checkpoint import load_checkpoint


def timm_model(name: str, img: int):
    import timm

    kw = {"img_size": img} if "v2" in name else {}
    m = timm.create_model(name, pretrained=False, **kw)
    if hasattr(m, "set_distilled_training"):
        m.set_distilled_training(False)
    return m


def cuda_time(fn, warmup: int, iters: int, repeats: int) -> float:
    """Median milliseconds per call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / iters)
    return statistics.median(out)


def inference_fn(model, batch: int, img: int, dtype: str, cl: bool, compile_: bool):
    model = model.cuda().eval()
    x = torch.randn(batch, 3, img, img, device="cuda")
    if cl:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    run = torch.compile(model, mode="reduce-overhead") if compile_ else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def fn():
        with torch.inference_mode(), amp:
            run(x)

    return fn


#: (impl, form, dtype, channels_last, compile) for inference
INFERENCE = [
    ("timm", "eager", "fp32", False, False),
    ("timm", "eager", "bf16", True, False),
    ("timm", "compile", "fp32", False, True),
    ("timm", "compile", "bf16", True, True),
    ("ours", "eager", "fp32", False, False),
    ("ours", "eager", "bf16", True, False),
    ("ours", "deploy", "fp32", False, False),
    ("ours", "deploy", "bf16", True, False),
    ("ours", "compile", "fp32", False, True),  # the deploy form, compiled
    ("ours", "compile", "bf16", True, True),
]
#: (impl, combo) for training: train_throughput.py's combos (``default`` = what ``efficientformer train`` resolves)
TRAINING = [
    ("timm", "eager"),
    ("timm", "cl+bf16"),
    ("timm", "compile+cl+bf16"),
    ("ours", "eager"),
    ("ours", "default"),
    ("ours", "cl+bf16"),
    ("ours", "compile+cl+bf16"),
]


def _err(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[-1][:200] if text else type(e).__name__


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="efficientformerv2_s0,efficientformerv2_s2,efficientformer_l1")
    p.add_argument("--batches", default="1,256", help="inference batch sizes")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--out", default="gpu_out", help="folder for gpu_results.jsonl and gpu_results.md")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench.py: no CUDA device visible; this script is for the GPU machine")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows are fp32 (TF32 would be a third precision)
    torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "gpu_results.jsonl"
    env = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "time": time.strftime("%F %T %Z")}
    rows = []

    def record(row: dict) -> None:
        rows.append(row)
        with jsonl.open("a") as f:
            f.write(json.dumps({**env, **row}) + "\n")
        print(row, flush=True)

    img = args.img_size
    for name in args.models.split(","):
        foreign = timm_model(name, img).eval()
        ours = create_model(name, img_size=img, distillation=False, num_classes=1000).eval()
        load_checkpoint(ours, foreign.state_dict())
        fused = deploy(ours.eval(), cpu_kernels=False)
        for batch in [int(b) for b in args.batches.split(",")]:
            for impl, form, dtype, cl, comp in INFERENCE:
                model = foreign if impl == "timm" else fused if form in ("deploy", "compile") else ours
                try:
                    fn = inference_fn(model, batch, img, dtype, cl, comp)
                    ms = cuda_time(fn, args.warmup, args.iters, args.repeats)
                    record(
                        {
                            "task": "inference",
                            "model": name,
                            "impl": impl,
                            "form": form,
                            "dtype": dtype,
                            "channels_last": cl,
                            "batch": batch,
                            "ms": ms,
                            "img_s": batch * 1e3 / ms,
                        }
                    )
                except Exception as e:  # one configuration failing must not lose the rest of the table
                    record(
                        {
                            "task": "inference",
                            "model": name,
                            "impl": impl,
                            "form": form,
                            "dtype": dtype,
                            "batch": batch,
                            "error": _err(e),
                        }
                    )
                torch.compiler.reset()
        if args.no_train:
            continue
        for impl, combo in TRAINING:
            model = timm_model(name, img) if impl == "timm" else create_model(name, img_size=img, distillation=False)
            flags = default_flags(name, "cuda", args.train_batch, img) if combo == "default" else parse_combo(combo)
            dtype = "bf16" if "bf16" in flags else "fp16" if "fp16" in flags else "fp32"
            cl, comp = "cl" in flags, "compile" in flags
            try:
                fn = make_step(model, args.train_batch, img, "cuda", flags)
                ms = cuda_time(fn, args.warmup, max(5, args.iters // 2), args.repeats)
                record(
                    {
                        "task": "train",
                        "model": name,
                        "impl": impl,
                        "combo": combo,
                        "dtype": dtype,
                        "channels_last": cl,
                        "compile": comp,
                        "batch": args.train_batch,
                        "ms": ms,
                        "img_s": args.train_batch * 1e3 / ms,
                    }
                )
            except Exception as e:
                record(
                    {
                        "task": "train",
                        "model": name,
                        "impl": impl,
                        "combo": combo,
                        "dtype": dtype,
                        "compile": comp,
                        "error": _err(e),
                    }
                )
            torch.compiler.reset()
    lines = [
        f"GPU: {env['gpu']}, torch {env['torch']}, {env['time']}",
        "",
        "| task | model | impl | form | dtype | channels_last | batch | ms | img/s |",
        "|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        form = r.get("form", r.get("combo", ""))
        val = f"{r['ms']:.2f} | {r['img_s']:.0f}" if "ms" in r else f"error: {r['error']} |"
        lines.append(
            f"| {r['task']} | {r['model']} | {r['impl']} | {form} | {r['dtype']} "
            f"| {r.get('channels_last', '')} | {r.get('batch', '')} | {val} |"
        )
    (out / "gpu_results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
