"""``efficientformer zoo``: build every model and print its name, parameters and a forward-pass time."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

from ..bench import profile
from ..models import list_models


def _run(args: argparse.Namespace) -> int:
    for flag, value in (("--runs", args.runs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; see `efficientformer zoo` for all names")
    rows = profile.zoo_summary(names, args.img_size, args.batch_size, args.runs)
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


def __getattr__(name: str) -> Any:
    # the old import path of a function that moved to its layer keeps working for one release
    if name == "zoo_summary":
        warnings.warn(
            "efficientformer.cli.zoo.zoo_summary moved to efficientformer.bench.profile.zoo_summary",
            DeprecationWarning,
            stacklevel=2,
        )
        return profile.zoo_summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
