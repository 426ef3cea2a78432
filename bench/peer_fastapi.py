"""A peer: the typical hand-written FastAPI + aiokafka webhook endpoint, for comparison.

What a careful developer would write in an afternoon: an ``AIOKafkaProducer`` with
``acks="all"`` and idempotence, started in the app's lifespan; ``POST /webhooks/hoopai``
reads the raw body, verifies ``X-GHL-Signature`` (Ed25519, ``cryptography``), parses the
JSON for its ``locationId`` (``altId`` for invoices), then awaits ``send_and_wait`` and
answers 200 once Kafka acknowledged. No dedup, no routing by type (one topic), no metrics,
no retryable status: a Kafka error surfaces as FastAPI's 500.

``python -m bench.peer_fastapi --port P --public-key PEM --bootstrap B --topic T`` serves it
under uvicorn, one worker, on 127.0.0.1; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from aiokafka import AIOKafkaProducer
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Request, Response

from bench.ceiling import load_key
from relay.app import WEBHOOK_PATH


def location_of(payload: object) -> bytes | None:
    """The partition key: ``locationId``, or ``altId`` when ``altType`` is a location."""
    if not isinstance(payload, dict):
        return None
    location = payload.get("locationId")
    if location is None and payload.get("altType") == "location":
        location = payload.get("altId")
    return str(location).encode() if location is not None else None


def create_app(key: Ed25519PublicKey, bootstrap: str, topic: str) -> FastAPI:
    """The endpoint, its producer started and stopped with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # aiokafka wants the running loop: the producer is made here, not at import.
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
        )
        await producer.start()
        app.state.producer = producer
        try:
            yield
        finally:
            await producer.stop()

    async def receive(request: Request) -> Response:
        body = await request.body()
        try:
            signature = base64.b64decode(request.headers.get("x-ghl-signature", ""))
            key.verify(signature, body)
        except (InvalidSignature, binascii.Error, ValueError):
            return Response(status_code=401)
        try:
            payload = json.loads(body)
        except ValueError:
            return Response(status_code=400)
        producer: AIOKafkaProducer = request.app.state.producer
        await producer.send_and_wait(topic, body, key=location_of(payload))
        return Response(status_code=200)

    async def ready() -> Response:
        return Response(status_code=200)

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    # add_api_route, not the decorators: `make lint` type-checks this without the bench extra,
    # where an unresolved decorator would make the handler untyped.
    app.add_api_route(WEBHOOK_PATH, receive, methods=["POST"])
    app.add_api_route("/readyz", ready, methods=["GET"])
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m bench.peer_fastapi", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-key", type=Path, required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    args = parser.parse_args(argv)
    app = create_app(load_key(args.public_key), args.bootstrap, args.topic)
    # uvicorn's defaults with its "standard" extra (uvloop, httptools), as typically deployed;
    # no access log, like the relay and the ceilings.
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
