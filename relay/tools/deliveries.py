"""Stand-in for HoopAI's sender: build deliveries and sign them as HighLevel does.

Used by the tests and benchmarks (and ``relay send``); the relay itself only verifies.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey


def as_delivery(
    payload: dict[str, object], *, webhook_id: str | None = None, timestamp: str | None = None
) -> bytes:
    """The body of a real delivery: the event plus top-level ``webhookId`` and ``timestamp``."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return orjson.dumps(
        {**payload, "webhookId": webhook_id or str(uuid.uuid4()), "timestamp": timestamp or now}
    )


def sign_ed25519(key: Ed25519PrivateKey, body: bytes) -> str:
    """The ``X-GHL-Signature`` value for ``body``."""
    return base64.b64encode(key.sign(body)).decode("ascii")


def sign_rsa(key: RSAPrivateKey, body: bytes) -> str:
    """The legacy ``X-WH-Signature`` value for ``body`` (RSASSA-PKCS1-v1_5, SHA-256)."""
    return base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")
