"""``efficientformer`` command line: one sub-command per job, each defined beside the code it drives.

Every area module exposes ``register(subparsers)`` which adds its sub-commands and sets ``func`` on them.
Errors that are the user's (bad input, missing files, missing extras) are printed as one line, exit status 2.
Anything else is printed as one line too, with exit status 1 and a pointer to ``--traceback`` (anywhere on the
command line) or ``EFFICIENTFORMER_TRACEBACK=1``, which show the full traceback for a bug report.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from . import dense, deploy, inference, search, train, zoo
from .errors import UserError

TRACEBACK_ENV = "EFFICIENTFORMER_TRACEBACK"

#: Modules that add sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES = (zoo, train, inference, deploy, dense, search)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="efficientformer",
        description="EfficientFormer / EfficientFormerV2 toolkit: models, training, export, benchmarks.",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help=f"show the full Python traceback of an error (for bug reports; also {TRACEBACK_ENV}=1); "
        "may be given anywhere on the command line",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run the CLI; ``parser`` lets an area module run with only its own sub-commands."""
    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    show_traceback = "--traceback" in argv or os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes")
    argv = [a for a in argv if a != "--traceback"]  # accepted after the sub-command too
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    command = f"efficientformer {args.command}"
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError, TypeError, ImportError) as err:
        # Our own errors are written as one actionable line; show that, not a traceback.
        if show_traceback:
            traceback.print_exc()
        print(f"{command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: one line, and how to get the details for a report
        if show_traceback:
            traceback.print_exc()
            hint = ""
        else:
            hint = f" (run again with --traceback, or {TRACEBACK_ENV}=1, for the full traceback to report)"
        print(f"{command}: internal error: {type(err).__name__}: {_one_line(err)}{hint}", file=sys.stderr)
        return 1
    return int(result or 0)


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"  # not "[Errno 13] Permission denied: '...'"
    return text.splitlines()[0] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
