"""The ``relay`` command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from relay import __version__, logs
from relay.errors import ConfigError
from relay.server import serve
from relay.settings import Settings

#: exit status for bad configuration, as for a usage error
EXIT_CONFIG = 2


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
    try:
        settings = Settings.load(os.environ)
        logs.configure(settings.log_level)
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return 0
