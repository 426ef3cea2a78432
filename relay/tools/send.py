"""``relay send``: a stand-in for HoopAI that signs deliveries and POSTs them to a relay.

It signs with a private key of ``relay keygen`` (Ed25519, or the legacy RSA with ``--rsa``),
so the relay under test must be started with the matching public key. With ``--workflow``
it is a HighLevel workflow action instead: unsigned, with a token (:class:`TokenAuth`).
"""

from __future__ import annotations

import io
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlencode

import aiohttp
import orjson
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from relay.ingress.signatures import spki_sha256
from relay.ingress.tokens import AUTHORIZATION, bad_token, without_newline
from relay.tools.deliveries import as_delivery, sign_ed25519, sign_rsa
from relay.tools.show import one_line

DEFAULT_URL: Final = "http://127.0.0.1:8080/webhooks/hoopai"
DEFAULT_TYPE: Final = "ContactCreate"
#: ``--type all``: one delivery of every sample
ALL_TYPES: Final = "all"
_WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 -- compared, not bound
#: the sample a ``--workflow`` sends by default: HighLevel's standard Webhook action
DEFAULT_WORKFLOW_TYPE: Final = "Webhook"
#: the whole request, connect to last byte of the answer (HighLevel itself waits about 5 s)
TIMEOUT_S: Final = 10.0

#: a function that returns the next body to send
Bodies = Callable[[], bytes]
#: what authenticates a request: the headers to send with a body
Authorizer = Callable[[bytes], dict[str, str]]


class SendError(Exception):
    """The delivery cannot be prepared: bad key, file or TLS option. The message says why."""


@dataclass(frozen=True, slots=True)
class Signer:
    """A private key and the signature header that goes with its scheme."""

    key: Ed25519PrivateKey | RSAPrivateKey
    #: the file it was read from, for the hint after a ``bad_signature``
    path: Path | None = None

    @property
    def header(self) -> str:
        """``X-WH-Signature`` for the legacy RSA scheme, else ``X-GHL-Signature``."""
        return "X-WH-Signature" if isinstance(self.key, RSAPrivateKey) else "X-GHL-Signature"

    def sign(self, body: bytes) -> str:
        """The header value for ``body``, as HighLevel computes it."""
        if isinstance(self.key, RSAPrivateKey):
            return sign_rsa(self.key, body)
        return sign_ed25519(self.key, body)

    def __call__(self, body: bytes) -> dict[str, str]:
        """The signature header for ``body``."""
        return {self.header: self.sign(body)}


@dataclass(frozen=True, slots=True)
class TokenAuth:
    """A workflow action's token, in a header (``Authorization: Bearer`` by default).

    Or in the query: then :meth:`url` puts it there, and no header carries it.
    """

    token: str = field(repr=False)
    header: str = AUTHORIZATION
    query: str | None = None

    def url(self, base: str) -> str:
        """``base`` with the token as a query parameter, when that is where it goes."""
        if self.query is None:
            return base
        joiner = "&" if "?" in base else "?"
        return f"{base}{joiner}{urlencode({self.query: self.token})}"

    def __call__(self, body: bytes) -> dict[str, str]:
        """The token header, if the token goes in one."""
        if self.query is not None:
            return {}
        bearer = self.header.lower() == AUTHORIZATION.lower()
        return {self.header: f"Bearer {self.token}" if bearer else self.token}


def load_token(path: Path) -> str:
    """The token in ``path``, as the relay reads its own token files."""
    try:
        token = without_newline(path.read_bytes())
    except OSError as exc:
        raise SendError(f"--token-file {path}: unreadable ({exc.strerror or exc})") from None
    if bad_token(token) is not None:
        raise SendError(f"--token-file {path}: not a token the relay accepts ({bad_token(token)})")
    return token.decode("ascii")


def constant(body: bytes) -> Bodies:
    """A factory of the same body each time, as a workflow action sends it."""
    return lambda: body


def workflow_body(raw: bytes, *, location: str | None = None) -> bytes:
    """A workflow sample as it is, or with ``location.id`` set when ``location`` is given."""
    if location is None:
        return raw
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise SendError("--location needs a JSON object body")
    place = payload.get("location")
    payload["location"] = {**(place if isinstance(place, dict) else {}), "id": location}
    return orjson.dumps(payload)


def load_signer(path: Path, *, legacy_rsa: bool) -> Signer:
    """The private key in ``path`` (unencrypted PEM), which must fit the chosen scheme."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SendError(
            f"--key {path}: unreadable ({exc.strerror or exc}); `relay keygen` writes one"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SendError(f"--key {path}: not an unencrypted PEM private key ({exc})") from None
    if legacy_rsa and not isinstance(key, RSAPrivateKey):
        raise SendError(f"--key {path}: --rsa needs an RSA private key (`relay keygen --rsa`)")
    if not legacy_rsa and isinstance(key, RSAPrivateKey):
        raise SendError(f"--key {path}: an RSA key signs the legacy header: add --rsa")
    if not isinstance(key, Ed25519PrivateKey | RSAPrivateKey):
        raise SendError(f"--key {path}: {type(key).__name__} is neither Ed25519 nor RSA")
    return Signer(key, path)


def bodies(raw: bytes, *, location: str | None = None) -> tuple[Bodies, bool]:
    """A factory of delivery bodies from ``raw``, and whether they are JSON objects.

    A JSON object gets a fresh ``webhookId`` and ``timestamp`` per call (and ``locationId``
    when given). Anything else is sent as it is, so that the dead-letter path can be tried.
    """
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return (lambda: raw), False
    if location is not None:
        payload["locationId"] = location
    return (lambda: as_delivery(payload)), True


def default_url(http_host: str, http_port: int, *, tls: bool) -> str:
    """The webhook URL of the relay these settings describe, as reached from this machine.

    A relay listening on every interface is reached on 127.0.0.1.
    """
    host = "127.0.0.1" if http_host in _WILDCARD_HOSTS else http_host
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{http_port}/webhooks/hoopai"


def tls_option(url: str, *, cafile: Path | None, insecure: bool) -> ssl.SSLContext | bool:
    """The ``ssl`` argument of aiohttp: verify (against ``cafile`` if given) unless ``insecure``."""
    if insecure:
        return False
    if cafile is None:
        return True
    if not url.lower().startswith("https:"):
        raise SendError("--cafile is for an https:// --url")
    try:
        return ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise SendError(f"--cafile {cafile}: {exc}") from None


def bad_signature_hint(signer: Signer) -> str:
    """What to do when the relay answered ``bad_signature``: it trusts another key."""
    fingerprint = spki_sha256(signer.key.public_key())
    public = signer.path.with_suffix(".pem") if signer.path is not None else None
    trust = f"RELAY_PUBLIC_KEYS={public}" if public is not None else "RELAY_PUBLIC_KEYS"
    return (
        f"relay send: bad_signature: the relay does not trust the key that signed "
        f"(SPKI SHA-256 {fingerprint}). Start it with that key's public half, as in "
        f'{trust}; its start-up line ("configuration") and `relay check-config` list '
        "the keys it trusts."
    )


def _is_bad_signature(status: int, answer: str) -> bool:
    if status != 401:
        return False
    try:
        parsed = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("reason") == "bad_signature"


async def deliver(
    url: str,
    make_body: Bodies,
    authorize: Authorizer,
    *,
    count: int = 1,
    tls: ssl.SSLContext | bool = True,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> bool:
    """POST ``count`` bodies one after the other; print ``<status> <answer>`` for each.

    ``authorize`` gives each body its headers: a :class:`Signer`, or a :class:`TokenAuth`.

    True if every answer was 2xx. Stops at the first delivery that gets no answer at all.
    After a ``401 bad_signature``, says once on ``err`` which key the relay should trust.
    """
    all_ok = True
    hinted = False
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    connector = aiohttp.TCPConnector(ssl=tls)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        for _ in range(count):
            body = make_body()
            headers = {"Content-Type": "application/json", **authorize(body)}
            try:
                # BytesIO: aiohttp warns about large raw bytes bodies; the bytes sent are the same.
                async with session.post(url, data=io.BytesIO(body), headers=headers) as response:
                    answer = await response.text(errors="replace")
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                print(f"error {one_line(reason)}", file=out, flush=True)
                return False
            print(f"{response.status} {one_line(answer.strip())}", file=out, flush=True)
            all_ok = all_ok and 200 <= response.status < 300
            if (
                isinstance(authorize, Signer)
                and not hinted
                and _is_bad_signature(response.status, answer)
            ):
                print(bad_signature_hint(authorize), file=err, flush=True)
                hinted = True
    return all_ok
