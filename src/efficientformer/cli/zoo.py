"""``efficientformer zoo``: build every model and print its name, parameters and a forward-pass time."""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..models import create_model, list_models


def zoo_summary(models: list[str], img_size: int = 224, batch_size: int = 1, runs: int = 3) -> list[dict]:
    """Parameters and median eval forward time (CPU, fp32) for each model."""
    rows = []
    for name in models:
        model = create_model(name, img_size=img_size).eval()
        x = torch.randn(batch_size, 3, img_size, img_size)
        times = []
        with torch.inference_mode():
            model(x)  # warm-up
            for _ in range(runs):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
        rows.append(
            {
                "model": name,
                "family": model.spec.family,
                "params": sum(p.numel() for p in model.parameters()),
                "img_size": img_size,
                "batch_size": batch_size,
                "forward_ms": 1000 * sorted(times)[len(times) // 2],
            }
        )
    return rows


def _run(args: argparse.Namespace) -> int:
    for flag, value in (("--runs", args.runs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; see `efficientformer zoo` for all names")
    rows = zoo_summary(names, args.img_size, args.batch_size, args.runs)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'model':<24}{'params':>14}{'forward (ms)':>15}   (CPU fp32, batch {args.batch_size}, {args.img_size}px)")
    for row in rows:
        print(f"{row['model']:<24}{row['params']:>14,}{row['forward_ms']:>15.1f}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("zoo", help="list the models with parameters and forward time")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*v2*'")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_run)
