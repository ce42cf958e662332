"""Per-op CPU profile of one training configuration of benchmarks/train_throughput.py (issue #13, goal 5): where a
training step's time goes, for ours with any flag combination or timm's eager step.

    python benchmarks/train_profile.py efficientformerv2_s0 ours cl+bf16
    python benchmarks/train_profile.py efficientformerv2_s0 timm eager

Two warm-up steps, then two profiled steps (torch.profiler, CPU), batch 16 at 224 px; ops sorted by self time.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile
from train_throughput import build, default_flags, make_step, parse_combo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model name, e.g. efficientformerv2_s0")
    p.add_argument("impl", choices=("ours", "timm"), help="our model or timm's")
    p.add_argument("combo", nargs="?", default="cl+bf16", help="flags as in train_throughput.py (timm: eager)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=28, help="ops shown")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    flags = parse_combo(args.combo)
    if args.combo == "default":
        flags = default_flags(args.model, "cpu", args.batch, args.img_size)
    step = make_step(build(args.impl, args.model, args.img_size), args.batch, args.img_size, "cpu", flags)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            step()
    print(f"{args.model} {args.impl} {args.combo}, batch {args.batch}, {args.img_size} px, {args.threads} threads")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50))


if __name__ == "__main__":
    main()
