"""Training-step throughput (images/s): our models beside timm's same models, same settings.

    python benchmarks/train_throughput.py                      # S0 and L1, 224, batch 32, CPU
    python benchmarks/train_throughput.py --device cuda --amp bf16 --channels-last --compile

One step = forward, cross-entropy, backward, AdamW step, in train mode (single head on both sides).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch


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


def measure(model, batch: int, img_size: int, device: str, amp: str, channels_last: bool, compile_: bool,
            warmup_s: float, measure_s: float) -> float:  # fmt: skip
    model = model.to(device).train()
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_model = torch.compile(model) if compile_ else model
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)) if amp != "none" \
        else contextlib.nullcontext  # fmt: skip

    def step():
        with ctx():
            out = step_model(x)
            out = out[0] if isinstance(out, tuple) else out
            loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        step()
    sync()
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < measure_s:
        step()
        n += 1
    sync()
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["efficientformerv2_s0", "efficientformer_l1"])
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--warmup-s", type=float, default=5.0)
    p.add_argument("--measure-s", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.img_size}px, amp {args.amp}, channels_last {args.channels_last}, compile {args.compile}")  # fmt: skip
    print(f"{'model':<24}{'ours img/s':>12}{'timm img/s':>12}{'ours/timm':>11}")
    for name in args.models:
        rates = {}
        for impl in ("ours", "timm"):
            torch.manual_seed(0)
            try:
                model = build(impl, name, args.img_size)
            except ImportError:
                rates[impl] = float("nan")
                continue
            rates[impl] = measure(model, args.batch, args.img_size, args.device, args.amp, args.channels_last,
                                  args.compile, args.warmup_s, args.measure_s)  # fmt: skip
        print(f"{name:<24}{rates['ours']:>12.1f}{rates['timm']:>12.1f}{rates['ours'] / rates['timm']:>11.2f}")


if __name__ == "__main__":
    main()
