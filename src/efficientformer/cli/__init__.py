"""``efficientformer`` command line: one sub-command per job, each defined beside the code it drives.

Every area module exposes ``register(subparsers)`` which adds its sub-commands and sets ``func`` on them.
Errors that are the user's (bad input, missing files, missing extras) are printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import dense, deploy, inference, search, train, zoo
from .errors import UserError

#: Modules that add sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (zoo, train, inference, deploy, dense, search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientformer",
        description="EfficientFormer / EfficientFormerV2 toolkit: models, training, export, benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the CLI; ``parser`` lets an area module run with only its own sub-commands."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, TypeError, ImportError) as err:
        # Our own errors are written as one actionable line; show that, not a traceback.
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"efficientformer {args.command}: error: {message}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
