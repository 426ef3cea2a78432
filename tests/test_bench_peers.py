"""The benchmark's peers: the bridge's request shape, its config, the FastAPI peer's key."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import bridge, deliveries


def _split(raw: bytes) -> tuple[list[str], bytes]:
    """The request line and headers, and the body, of one stored request."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("ascii").split("\r\n"), body


def test_bridge_request_carries_the_same_record() -> None:
    """A bridge request holds the delivery's body and location id, byte for byte."""
    [delivery] = deliveries.build(1, Ed25519PrivateKey.generate(), locations=3, seed=1)
    lines, body = _split(deliveries.bridge_request(delivery, "bench-x.bridge"))
    assert lines[0] == "POST /topics/bench-x.bridge HTTP/1.1"
    assert f"Content-Type: {deliveries.BRIDGE_CONTENT_TYPE}" in lines
    assert f"Content-Length: {len(body)}" in lines
    [record] = orjson.loads(body)["records"]
    assert base64.b64decode(record["value"]) == delivery.body
    assert base64.b64decode(record["key"]).decode() == delivery.location


def test_each_delivery_knows_its_location() -> None:
    """The location id is the body's ``locationId``, or ``altId`` for invoices."""
    built = deliveries.build(200, Ed25519PrivateKey.generate(), locations=5, seed=2)
    for delivery in built:
        payload = orjson.loads(delivery.body)
        where = payload["altId"] if payload.get("altType") == "location" else payload["locationId"]
        assert delivery.location == where
    assert {d.event_type for d in built} >= {"InvoiceCreate", "ContactCreate"}


def test_request_files_round_trip_with_a_builder(tmp_path: Path) -> None:
    """Requests written with a per-target builder read back unchanged, in order."""
    built = deliveries.build(5, Ed25519PrivateKey.generate(), locations=2, seed=3)
    path = deliveries.write_requests(
        built, tmp_path / "r.bin", lambda d: deliveries.bridge_request(d, "t")
    )
    assert deliveries.read_requests(path) == [deliveries.bridge_request(d, "t") for d in built]
    default = deliveries.write_requests(built, tmp_path / "d.bin")
    assert deliveries.read_requests(default) == [d.http_request() for d in built]


def test_java_major_reads_the_release_file(tmp_path: Path) -> None:
    """A JDK's feature version comes from ``release``; no file, no version."""
    (tmp_path / "release").write_text('IMPLEMENTOR="x"\nJAVA_VERSION="25.0.3"\n')
    assert bridge.java_major(tmp_path) == 25
    (tmp_path / "release").write_text('JAVA_VERSION="17.0.15"\n')
    assert bridge.java_major(tmp_path) == 17
    assert bridge.java_major(tmp_path / "absent") is None


def test_bridge_config_produces_with_acks_all(tmp_path: Path) -> None:
    """The bridge gets acks=all, idempotence, 127.0.0.1 and quiet per-request logging."""
    config = bridge.write_config(tmp_path / "b", 8100, 8101, "127.0.0.1:9092")
    lines = set(config.read_text().splitlines())
    assert {
        "http.host=127.0.0.1",
        "http.port=8100",
        "http.management.port=8101",
        "kafka.bootstrap.servers=127.0.0.1:9092",
        "kafka.producer.acks=all",
        "kafka.producer.enable.idempotence=true",
    } <= lines
    log4j = (tmp_path / "b" / "log4j2.properties").read_text()
    assert "logger.operations.level = WARN" in log4j
    argv = bridge.command(bridge.Java(Path("/j/bin/java"), "25"), Path("/libs"), config)
    assert argv[0] == "/j/bin/java"
    assert argv[-3:] == [bridge.MAIN_CLASS, "--config-file", str(config)]


def test_fastapi_peer_keys_by_location() -> None:
    """The FastAPI peer keys a record by ``locationId``, else an invoice's ``altId``."""
    peer = pytest.importorskip("bench.peer_fastapi", reason="needs the bench extra")
    assert peer.location_of({"locationId": "L1", "altId": "x"}) == b"L1"
    assert peer.location_of({"altType": "location", "altId": "L2"}) == b"L2"
    assert peer.location_of({"altType": "contact", "altId": "C"}) is None
    assert peer.location_of(["not", "an", "object"]) is None
