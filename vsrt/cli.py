"""The ``vsrt`` command line. Thin: parses arguments and calls library functions.

Each sub-command lives in its own module under :mod:`vsrt.commands` and exposes
``register(subparsers)``; this file discovers them, so adding a command never touches this file.
Heavy imports (torch, onnxruntime) happen inside the command functions, so ``vsrt --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from vsrt import __version__
from vsrt.errors import VsrtError


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every discovered sub-command."""
    import vsrt.commands as commands_pkg

    parser = argparse.ArgumentParser(
        prog="vsrt",
        description="VSRN-family image-text matching: checkpoints -> verified ONNX / TensorRT -> retrieval.",
    )
    parser.add_argument("--version", action="version", version=f"vsrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"vsrt.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vsrt`` console script. Returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except VsrtError as exc:
        print(f"vsrt {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"vsrt {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
