"""The ``relay`` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from aiokafka.errors import KafkaError

from relay import __version__, logs, workers
from relay.app import load_keys, load_routing
from relay.errors import ConfigError
from relay.ingress.tokens import AUTHORIZATION
from relay.kafka import options as kafka_options
from relay.kafka.check import KafkaLoginError
from relay.kafka.oauth import TokenError
from relay.server import run_event_loop, serve, tls_context
from relay.settings import Settings
from relay.spool import offline
from relay.tools import checkconfig, keygen, redrive, send, tail
from relay.tools.samples import SAMPLES, WORKFLOW_SAMPLES, sample, sample_names
from relay.tracing import check_otel

#: exit status for bad configuration, as for a usage error
EXIT_CONFIG = 2
#: exit status for a bad argument of a command (a missing key, an unknown sample)
EXIT_USAGE = 2
#: exit status of ``relay redrive`` when Kafka failed under it
EXIT_KAFKA = 3
#: the consumer group of ``relay redrive`` for one topic
REDRIVE_GROUP = "hoopai-relay-redrive.{topic}"
#: exit status after Ctrl-C, as a shell reports it
EXIT_INTERRUPTED = 130


def _positive_int(raw: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{raw}: must be at least 1")
    return value


def _positive_float(raw: str) -> float:
    """An argparse type: a number of seconds above 0."""
    value = float(raw)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{raw}: must be above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog="relay",
        description="HoopAI webhooks into Apache Kafka, acknowledged once durable.",
    )
    parser.add_argument("--version", action="version", version=f"hoopai-relay {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        # The same line in `relay --help`'s list and atop `relay NAME --help`.
        return commands.add_parser(name, help=summary, description=summary[0].upper() + summary[1:])

    _add_serve(command("serve", "run the webhook ingress (settings from RELAY_* variables)"))
    command(
        "check-config",
        "load and validate the settings, keys and routes as serve does; print a summary",
    ).set_defaults(run=_check_config)
    _add_keygen(command("keygen", "write a dev key pair for `relay send`"))
    _add_send(command("send", "sign and POST a sample delivery, as HoopAI does"))
    _add_tail(command("tail", "print the records of the relay's topics"))
    _add_redrive(
        command("redrive", "re-verify and re-route a topic's records (after a key or route fix)")
    )
    _add_spool(
        command("spool", "look inside a spool directory, or drain it, with no relay running")
    )
    return parser


def _when(raw: str) -> int:
    """An argparse type: an ISO 8601 time (UTC unless it says), as ms since the epoch."""
    try:
        when = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw}: not an ISO 8601 time") from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def _offset(raw: str) -> int:
    """An argparse type: an offset, 0 or more."""
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{raw}: must be 0 or more")
    return value


def _add_redrive(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``relay redrive``."""
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="TOPIC",
        help=f"{', '.join(redrive.SHORT_NAMES)} (the relay's, under RELAY_TOPIC_PREFIX) "
        "or a full topic name",
    )
    parser.add_argument(
        "--group",
        metavar="ID",
        help="the consumer group whose offsets record progress (default "
        f"{REDRIVE_GROUP.format(topic='<topic>')}); a new one reads the range again",
    )
    parser.add_argument("--since", type=_when, metavar="TIME", help="first record time (ISO 8601)")
    parser.add_argument("--until", type=_when, metavar="TIME", help="records before this time")
    parser.add_argument(
        "--start-offset", type=_offset, metavar="N", help="first offset, each partition"
    )
    parser.add_argument("--end-offset", type=_offset, metavar="N", help="stop before this offset")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what each record would become; produce nothing, commit nothing",
    )
    parser.set_defaults(run=_redrive)


def _add_spool(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``relay spool status|export|drain``."""
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, summary in (
        ("status", "records, bytes, oldest age, damage and layout (reads only, takes no lock)"),
        ("export", "every record as a JSON line on stdout, in drain order (reads only)"),
        (
            "drain",
            "replay every record into Kafka in order, then exit (refused if a relay holds it)",
        ),
    ):
        action = actions.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:]
        )
        action.add_argument(
            "directory",
            nargs="?",
            type=Path,
            metavar="DIR",
            help="the spool directory (default: RELAY_SPOOL_DIR)",
        )
        if name == "status":
            action.add_argument("--json", action="store_true", help="one JSON object per folder")
        if name == "drain":
            action.add_argument(
                "--timeout",
                type=_positive_float,
                default=300.0,
                metavar="S",
                help="give up (exit 1) if a folder is not empty after S seconds (default 300)",
            )
    parser.set_defaults(run=_spool)


def _add_serve(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``relay serve``."""
    parser.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="processes sharing the port, e.g. one per core (default: RELAY_WORKERS, else 1)",
    )
    # Set by the supervisor on the processes it starts (relay/workers.py).
    parser.add_argument(workers.WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(run=_serve)


def _add_keygen(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``relay keygen``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=keygen.DEFAULT_DIR,
        metavar="DIR",
        help=f"folder of the key files (default {keygen.DEFAULT_DIR})",
    )
    parser.add_argument(
        "--rsa",
        action="store_true",
        help="write the RSA-4096 pair (legacy scheme) beside the Ed25519 one, leaving that alone",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing key files")
    parser.set_defaults(run=_keygen)


def _add_send(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``relay send``."""
    body = parser.add_mutually_exclusive_group()
    body.add_argument(
        "--type",
        metavar="NAME",
        help=f"a published sample event (default {send.DEFAULT_TYPE}, with --workflow "
        f"{send.DEFAULT_WORKFLOW_TYPE}; `list` lists them, `{send.ALL_TYPES}` sends one of each)",
    )
    body.add_argument(
        "--file",
        type=Path,
        metavar="PATH",
        help="a JSON object to send; any other content is sent as it is (dead-letter test)",
    )
    parser.add_argument(
        "--key",
        type=Path,
        metavar="PATH",
        help="private key PEM (default ed25519.key, or rsa.key with --rsa, "
        f"in {keygen.DEFAULT_DIR})",
    )
    parser.add_argument(
        "--rsa",
        action="store_true",
        help="sign with the legacy RSA scheme (X-WH-Signature) instead of Ed25519",
    )
    parser.add_argument(
        "--url",
        help="where to POST (default: the relay of the settings, RELAY_HTTP_PORT on 127.0.0.1: "
        f"{send.DEFAULT_URL}); with --workflow NAME, /workflows/NAME is added",
    )
    workflow = parser.add_argument_group(
        "workflow webhooks", "send as a HighLevel workflow action: unsigned, with a token"
    )
    workflow.add_argument(
        "--workflow", metavar="NAME", help="the [workflows.NAME] source to post to"
    )
    workflow.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="the token (the file's content without its trailing newline); needs --workflow",
    )
    where = workflow.add_mutually_exclusive_group()
    where.add_argument(
        "--token-header",
        default=AUTHORIZATION,
        metavar="NAME",
        help=f"the header carrying the token (default {AUTHORIZATION}: Bearer <token>)",
    )
    where.add_argument("--token-query", metavar="NAME", help="send the token in the query instead")
    parser.add_argument("--location", metavar="ID", help="set the body's locationId")
    tls = parser.add_mutually_exclusive_group()
    tls.add_argument(
        "--cafile", type=Path, metavar="PATH", help="trust this CA (PEM) for an https --url"
    )
    tls.add_argument(
        "--insecure",
        action="store_true",
        help="INSECURE: do not verify the https server's certificate at all (for testing only)",
    )
    parser.add_argument(
        "--count",
        type=_positive_int,
        default=1,
        metavar="N",
        help="send N deliveries (of each sample with --type all), each with its own webhookId",
    )
    parser.set_defaults(run=_send)


def _add_tail(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``relay tail``."""
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="start at the oldest record of each topic, not at the newest",
    )
    parser.add_argument(
        "--max", type=_positive_int, metavar="N", help="stop after N records (exit 1 if fewer)"
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds without a record (default: run until Ctrl-C)",
    )
    parser.set_defaults(run=_tail)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m relay``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # a usage error, as for a missing argument
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"relay: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _serve(args: argparse.Namespace) -> int:
    """``relay serve``: run until SIGTERM or SIGINT; with ``--workers N``, N processes."""
    settings = Settings.load(os.environ)
    if args.workers is not None:
        settings = dataclasses.replace(settings, workers=args.workers)
        settings.validate()
    otel = check_otel(os.environ)  # each worker exports its own spans
    logs.configure(settings.log_level)
    if args.worker:  # started by the supervisor below, which checked the spool layout
        run_event_loop(serve(settings, worker=True, otel=otel))
        return 0
    workers.check_spool_layout(settings)
    if settings.workers > 1:
        return workers.supervise(settings, os.environ)
    run_event_loop(serve(settings, otel=otel))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    """``relay check-config``: serve's loading and validation, then a summary."""
    settings = Settings.load(os.environ)
    keys = load_keys(settings)
    routes = load_routing(settings)
    tls_context(settings)  # serve loads the certificate and key as well
    kafka_options.check_at_start(settings)  # and its Kafka TLS files, and the MSK extra if used
    workers.check_spool_layout(settings)
    print("\n".join(checkconfig.summary(settings, keys, routes)))
    return 0


def _keygen(args: argparse.Namespace) -> int:
    """``relay keygen``: write the key pairs and say how to use them."""
    try:
        pairs = keygen.generate(args.out, rsa_only=args.rsa, force=args.force)
    except OSError as exc:  # KeyFilesExist included
        print(f"relay keygen: {exc}", file=sys.stderr)
        return 1
    print("\n".join(keygen.report(pairs)))
    return 0


def _send(args: argparse.Namespace) -> int:
    """``relay send``: 0 if every delivery was answered 2xx, 1 if not, 2 for bad arguments."""
    folder = SAMPLES if args.workflow is None else WORKFLOW_SAMPLES
    if args.type == "list":
        print("\n".join(sample_names(folder)))
        return 0
    if (args.workflow is None) != (args.token_file is None):
        print("relay send: --workflow and --token-file go together", file=sys.stderr)
        return EXIT_USAGE
    if args.file is not None:
        try:
            raws = [args.file.read_bytes()]
        except OSError as exc:
            print(f"relay send: --file {args.file}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
    elif args.type == send.ALL_TYPES:
        raws = [sample(name, folder) for name in sample_names(folder)]
    else:
        default = send.DEFAULT_TYPE if args.workflow is None else send.DEFAULT_WORKFLOW_TYPE
        try:
            raws = [sample(args.type or default, folder)]
        except KeyError:
            names = "\n".join(sample_names(folder))
            print(f"relay send: unknown --type {args.type}; one of:\n{names}", file=sys.stderr)
            return EXIT_USAGE
    url = args.url
    if url is None:  # the relay these settings would serve
        settings = Settings.load(os.environ)
        url = send.default_url(
            settings.http_host, settings.http_port, tls=settings.tls_cert_file is not None
        )
    try:
        tls = send.tls_option(url, cafile=args.cafile, insecure=args.insecure)
        if args.workflow is None:
            made = [send.bodies(raw, location=args.location) for raw in raws]
            if not all(is_object for _, is_object in made):
                print(
                    f"relay send: {args.file} is not a JSON object: sent as it is", file=sys.stderr
                )
            factories = [make for make, _ in made]
            key = args.key or keygen.DEFAULT_DIR / ("rsa.key" if args.rsa else "ed25519.key")
            authorize: send.Authorizer = send.load_signer(key, legacy_rsa=args.rsa)
        else:
            # Sent as they are: a workflow action adds no webhookId or timestamp.
            bodies = [send.workflow_body(raw, location=args.location) for raw in raws]
            factories = [send.constant(body) for body in bodies]
            auth = send.TokenAuth(
                send.load_token(args.token_file), args.token_header, args.token_query
            )
            url, authorize = auth.url(f"{url}/workflows/{args.workflow}"), auth
    except send.SendError as exc:
        print(f"relay send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Each body args.count times, one body after the other.
    queue = iter([make for make in factories for _ in range(args.count)])

    def make_body() -> bytes:
        return next(queue)()

    count = args.count * len(factories)
    try:
        ok = asyncio.run(send.deliver(url, make_body, authorize, count=count, tls=tls))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0 if ok else 1


def _redrive(args: argparse.Namespace) -> int:
    """``relay redrive``: 0 if every record read moved, 1 if some stayed, 3 on a Kafka error."""
    settings = Settings.load(os.environ)
    keys, routes = load_keys(settings), load_routing(settings)
    logs.configure_tool("redrive")
    source = redrive.source_topic(args.source, settings.topic_prefix)
    where = redrive.Range(args.since, args.until, args.start_offset, args.end_offset)
    try:
        summary = asyncio.run(
            redrive.redrive(
                settings,
                keys,
                routes,
                source=source,
                group=args.group or REDRIVE_GROUP.format(topic=source),
                where=where,
                dry_run=args.dry_run,
            )
        )
    except KeyboardInterrupt:
        print("relay redrive: interrupted; run it again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (KafkaError, KafkaLoginError, TokenError, TimeoutError) as exc:
        print(f"relay redrive: Kafka: {exc!r}; run it again to resume", file=sys.stderr)
        return EXIT_KAFKA
    print("\n".join(summary.lines(args.dry_run)))
    return 1 if summary.left_behind else 0


def _spool(args: argparse.Namespace) -> int:
    """``relay spool``: 0; 1 if ``drain`` could not empty it; 2 if it is held or missing."""
    settings = Settings.load(os.environ)
    directory = args.directory or settings.spool_dir
    if directory is None:
        print("relay spool: give DIR, or set RELAY_SPOOL_DIR", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "status":
        folders = offline.status(directory)
        if args.json:
            now_ms = int(time.time() * 1000)
            for folder in folders:
                print(json.dumps(folder.as_json(now_ms)))
        else:
            print("\n".join(offline.status_lines(folders)))
        return 0
    if args.action == "export":
        out = sys.stdout.buffer
        for line in offline.export(directory):
            out.write(line + b"\n")
        out.flush()
        return 0
    logs.configure_tool("spool")
    try:
        drained = asyncio.run(offline.drain(directory, settings, args.timeout))
    except offline.NotDrained as exc:
        print(f"relay spool drain: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    for path, records in drained:
        print(f"relay spool drain: {path}: {records} records delivered; it is empty")
    return 0


def _tail(args: argparse.Namespace) -> int:
    """``relay tail``: 0, or 1 when ``--max`` records did not all come before the timeout."""
    settings = Settings.load(os.environ)
    logs.configure_tool("tail")
    try:
        printed = asyncio.run(
            tail.tail(
                settings,
                from_beginning=args.from_beginning,
                max_records=args.max,
                idle_timeout_s=args.timeout,
            )
        )
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (KafkaLoginError, TokenError) as exc:
        print(f"relay tail: {exc}", file=sys.stderr)  # names the broker and the cause
        return 1
    except KafkaError as exc:
        servers = ",".join(settings.kafka_bootstrap_servers)
        print(f"relay tail: Kafka at {servers}: {exc}", file=sys.stderr)
        return 1
    return 1 if args.max is not None and printed < args.max else 0
