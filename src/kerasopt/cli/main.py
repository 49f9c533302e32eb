"""Entry point of the ``kerasopt`` command (declared in pyproject as ``kerasopt.cli.main:main``).

Each subcommand lives in its own module, which provides ``add_parser(subparsers)`` (adds
its arguments and sets ``func``) and is imported lazily by that ``func``, so ``kerasopt
--help`` stays fast and needs nothing beyond NumPy.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from kerasopt import __version__
from kerasopt.cli import bench, demo, verify


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerasopt",
        description=(
            "kerasopt: Keras 3's Adam and Adamax optimizers, with Keras's exact numerics, "
            "for NumPy, PyTorch and JAX."
        ),
        epilog="Run 'kerasopt <command> --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"kerasopt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    demo.add_parser(subparsers)
    bench.add_parser(subparsers)
    verify.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``kerasopt`` command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
