"""Training-step throughput (images/s): our models with each combination of speed flags beside timm's eager step
of the same model, all timed interleaved in one run (issue #13, goal 5).

    python benchmarks/train_throughput.py                                  # S0 and L1, 224, batch 16, CPU
    python benchmarks/train_throughput.py --combos eager,cl,bf16,cl+bf16,compile,compile+cl+bf16
    python benchmarks/train_throughput.py --device cuda --batch 256 --combos eager,compile,compile+cl+bf16

One step = forward, cross-entropy, backward, AdamW step, in train mode (single head on both sides). A combo is
``+``-joined flags: ``eager`` (none), ``cl`` (channels_last model and input), ``clgrad`` (BatchNorm gradients kept
channels-last: ``runtime.precision.keep_channels_last_gradients``), ``bf16`` (autocast to bfloat16),
``fp16`` (autocast to float16, GPU), ``compile`` (torch.compile of the model), ``fused`` (torch's fused AdamW),
or ``default``: what ``efficientformer train`` does with the default config on this machine (precision and
layout from ``TrainConfig()`` resolved by the runtime, the optimiser from ``runtime.optim.build_optimizer``).
timm's step is eager fp32 with ``torch.optim.AdamW``. Every configuration is built and warmed up (compiled) first;
then ``--rounds`` rounds run ``--steps`` steps of each configuration in rotating order, and the median round gives
images/s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics

import torch

from efficientformer.runtime.optim import build_optimizer
from efficientformer.runtime.precision import keep_channels_last_gradients
from efficientformer.train.config import TrainConfig
from efficientformer.train.engine import resolve_precision
from efficientformer.utils.machine import pin_allocator
from efficientformer.utils.timing import time_interleaved

FLAGS = ("cl", "clgrad", "bf16", "fp16", "compile", "fused")


def build(impl: str, name: str, img_size: int) -> torch.nn.Module:
    if impl == "ours":
        from efficientformer.models import create_model

        return create_model(name, num_classes=1000, img_size=img_size, distillation=False)
    import timm

    kw = {"img_size": img_size} if "v2" in name else {}
    model = timm.create_model(name, num_classes=1000, **kw)
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(False)
    return model


def default_flags(name: str, device: str, batch: int, img_size: int) -> frozenset[str]:
    """The flags ``efficientformer train`` resolves from the default config on ``device`` for model ``name``
    (amp=auto's CPU probe times the model, as the trainer does)."""
    cfg = TrainConfig(model=name, batch_size=batch, img_size=img_size)
    model = build("ours", name, img_size).to(device)
    amp, channels_last = resolve_precision(cfg, model, torch.device(device), log=print)
    flags = {"bf16"} if amp == "bf16" else {"fp16"} if amp == "fp16" else set()
    if channels_last:
        flags.add("cl")
        if not cfg.compile:
            flags.add("clgrad")
    if cfg.compile:
        flags.add("compile")
    return frozenset(flags | {"toolkit-optimizer"})


def parse_combo(text: str) -> frozenset[str]:
    """A ``+``-joined combo's flags (``default`` is resolved per model by :func:`default_flags`)."""
    if text == "default":
        return frozenset({"default"})
    flags = frozenset(f for f in text.split("+") if f and f != "eager")
    unknown = flags - set(FLAGS)
    if unknown:
        raise SystemExit(f"unknown flag(s) {sorted(unknown)} in combo {text!r}; use eager or +-joined {FLAGS}")
    return flags


def make_step(model, batch: int, img_size: int, device: str, flags: frozenset[str]):
    """A closure running one training step of ``model`` with ``flags``."""
    model = model.to(device).train()
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if "cl" in flags:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if "clgrad" in flags:  # the trainer's: BatchNorm gradients kept channels-last
        keep_channels_last_gradients(model)
    if "toolkit-optimizer" in flags:  # the trainer's: timm's factory over our no-decay groups
        cfg = TrainConfig()
        opt = build_optimizer(model, cfg.opt, 1e-3, cfg.weight_decay, cfg.opt_eps)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused="fused" in flags or None)
    step_model = torch.compile(model) if "compile" in flags else model
    amp = torch.bfloat16 if "bf16" in flags else torch.float16 if "fp16" in flags else None

    def step() -> None:
        ctx = torch.autocast(device, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            out = step_model(x)
            out = out[0] if isinstance(out, tuple) else out
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["efficientformerv2_s0", "efficientformer_l1"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--combos",
        default="default,eager,cl,bf16,cl+bf16,compile,compile+bf16",
        help="comma-separated flag combinations for our model (timm runs eager fp32 as the baseline)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration (compiles)")
    p.add_argument("--steps", type=int, default=2, help="steps per configuration per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-pin-allocator", action="store_true", help="leave glibc's mmap threshold dynamic")
    args = p.parse_args()
    if not args.no_pin_allocator:
        print(pin_allocator())
    if args.threads:
        torch.set_num_threads(args.threads)
    combos = [(c, parse_combo(c)) for c in args.combos.split(",") if c]
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{args.img_size}px, {args.rounds} rounds x {args.steps} steps interleaved, load {os.getloadavg()}"
    )
    print("| model | configuration | img/s | vs timm eager |\n|---|---|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        steps = {
            ("timm", "eager"): make_step(
                build("timm", name, args.img_size), args.batch, args.img_size, args.device, frozenset()
            )
        }
        shown = {}
        for label, flags in combos:
            if label == "default":
                flags = default_flags(name, args.device, args.batch, args.img_size)
                shown[label] = f"default ({'+'.join(sorted(flags - {'toolkit-optimizer'})) or 'fp32'})"
            torch.manual_seed(0)
            steps[("ours", label)] = make_step(
                build("ours", name, args.img_size), args.batch, args.img_size, args.device, flags
            )

        def repeat(fn):
            return lambda: [fn() for _ in range(args.steps)]

        times = time_interleaved({k: repeat(fn) for k, fn in steps.items()}, args.warmup, args.rounds)
        rate = {k: args.batch * args.steps * 1e3 / statistics.median(v) for k, v in times.items()}
        base = rate[("timm", "eager")]
        for (impl, label), r in rate.items():
            print(f"| {name} | {impl} {shown.get(label, label)} | {r:.1f} | {r / base:.2f}x |", flush=True)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
