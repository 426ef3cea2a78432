"""The ``relay`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from relay import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog="relay",
        description="HoopAI webhooks into Apache Kafka, acknowledged once durable.",
    )
    parser.add_argument("--version", action="version", version=f"hoopai-relay {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="run the webhook ingress (settings from RELAY_* variables)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m relay``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print("relay serve: the ingress is not built yet (issue 3)", file=sys.stderr)
    return 1
