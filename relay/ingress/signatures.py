"""Verify HighLevel (HoopAI) webhook signatures over the exact raw request body.

``X-GHL-Signature`` is a base64 Ed25519 signature (64 bytes) of the body; it is checked whenever
present. ``X-WH-Signature`` is the legacy base64 RSASSA-PKCS1-v1_5/SHA-256 signature (RSA-4096),
used only when the Ed25519 header is absent and legacy RSA is enabled. There is no shared secret
and no key id: every configured public key of the scheme is tried, so rotation is a config change.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

# Ed25519 through libsodium (PyNaCl), keys still parsed and pinned with cryptography: on the dev
# box (2 vCPU AMD EPYC, shared), 723-byte body, best of 5 x 3,000 verifies, one core:
#   cryptography 50.0.2 (OpenSSL): ~150-270 us;  PyNaCl 1.6.2 (libsodium): ~85-150 us
# libsodium is also the stricter of the two (it refuses non-canonical encodings and small-order
# keys), which costs nothing for a genuine sender. RSA-4096 (e = 65537) stays on cryptography
# at ~100-110 us. Reproduce: `python -m bench.verifycost`.
# Inline or executor? INLINE on the event loop. ~0.1-0.2 ms per request is far inside the 5 s
# answer budget, and an executor would not help: the verify holds the GIL (2 threads gave 1.1x
# the throughput of 1, not 2x) and one run_in_executor hop alone measured ~140-160 us. Cost
# grows with the body (hashing), which max_body_bytes caps; a failing verify costs the same as
# a passing one, times the number of keys of the scheme.

_MISSING_LITERAL = "N/A"
_ED25519_SIGNATURE_LENGTH = 64
_MIN_RSA_BITS = 2048


class Scheme(enum.StrEnum):
    """Signature scheme that verified a request."""

    ED25519 = "ed25519"
    RSA_SHA256 = "rsa-sha256"


class Reason(enum.StrEnum):
    """Why a request was rejected; a closed set, safe as a Prometheus label value."""

    MISSING = "missing"
    NOT_BASE64 = "not_base64"
    BAD_LENGTH = "bad_length"
    BAD_SIGNATURE = "bad_signature"
    LEGACY_DISABLED = "legacy_disabled"
    NO_KEY = "no_key"
    #: a signature header repeated: set by the HTTP layer, which sees the raw headers
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True, slots=True)
class KeySet:
    """Public keys per scheme; every key of a scheme is tried (rotation)."""

    ed25519: tuple[Ed25519PublicKey, ...]
    rsa: tuple[RSAPublicKey, ...]
    #: the Ed25519 keys as libsodium verifiers, built once (see the figures above)
    ed25519_verifiers: tuple[VerifyKey, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        verifiers = tuple(VerifyKey(key.public_bytes(*raw)) for key in self.ed25519)
        object.__setattr__(self, "ed25519_verifiers", verifiers)  # frozen: set once, here


@dataclass(frozen=True, slots=True)
class Verified:
    """A signature verified; ``signature`` is the header value exactly as received."""

    scheme: Scheme
    signature: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The request is not authentic (or not verifiable) for ``reason``."""

    reason: Reason


class KeyFileError(ValueError):
    """A public key file is unreadable, not PEM, of an unsupported type, or too weak."""


def _present(value: str | None) -> str | None:
    """Return the header value unchanged, or None if absent, empty or the literal ``N/A``."""
    if value is None:
        return None
    stripped = value.strip()
    if not stripped or stripped == _MISSING_LITERAL:
        return None
    return value


def _decode(value: str) -> bytes | None:
    """Decode strict standard base64 (surrounding whitespace stripped), or None if invalid."""
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters in a str
        return None


def _verify_ed25519(body: bytes, value: str, keys: tuple[VerifyKey, ...]) -> Verified | Rejected:
    """Check an ``X-GHL-Signature`` value against every Ed25519 key."""
    if not keys:
        return Rejected(Reason.NO_KEY)
    signature = _decode(value)
    if signature is None:
        return Rejected(Reason.NOT_BASE64)
    if len(signature) != _ED25519_SIGNATURE_LENGTH:
        return Rejected(Reason.BAD_LENGTH)
    for key in keys:
        try:
            key.verify(body, signature)
        except BadSignatureError:
            continue
        return Verified(Scheme.ED25519, value)
    return Rejected(Reason.BAD_SIGNATURE)


def _verify_rsa(body: bytes, value: str, keys: tuple[RSAPublicKey, ...]) -> Verified | Rejected:
    """Check an ``X-WH-Signature`` value against every RSA key of the signature's size."""
    if not keys:
        return Rejected(Reason.NO_KEY)
    signature = _decode(value)
    if signature is None:
        return Rejected(Reason.NOT_BASE64)
    sized = [key for key in keys if (key.key_size + 7) // 8 == len(signature)]
    if not sized:
        return Rejected(Reason.BAD_LENGTH)
    for key in sized:
        try:
            key.verify(signature, body, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        return Verified(Scheme.RSA_SHA256, value)
    return Rejected(Reason.BAD_SIGNATURE)


def verify(
    body: bytes,
    ghl_signature: str | None,
    wh_signature: str | None,
    keys: KeySet,
    *,
    accept_legacy_rsa: bool,
) -> Verified | Rejected:
    """Verify the raw body against X-GHL-Signature, else (if allowed) X-WH-Signature."""
    ghl = _present(ghl_signature)
    if ghl is not None:
        # A present Ed25519 header decides alone: no fallback to RSA if it fails.
        return _verify_ed25519(body, ghl, keys.ed25519_verifiers)
    wh = _present(wh_signature)
    if wh is None:
        return Rejected(Reason.MISSING)
    if not accept_legacy_rsa:
        return Rejected(Reason.LEGACY_DISABLED)
    return _verify_rsa(body, wh, keys.rsa)


def spki_sha256(key: Ed25519PublicKey | RSAPublicKey) -> str:
    """Return the hex SHA-256 of the key's DER SubjectPublicKeyInfo (the pin format)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _parse_key(data: bytes, source: str) -> Ed25519PublicKey | RSAPublicKey:
    """Parse one PEM public key, raising KeyFileError that names ``source``."""
    blocks = data.count(b"-----BEGIN ")
    if blocks > 1:
        raise KeyFileError(f"{source}: holds {blocks} PEM blocks; put one public key per file")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{source}: not a PEM public key ({exc})") from exc
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise KeyFileError(
                f"{source}: RSA key of {key.key_size} bits is shorter than {_MIN_RSA_BITS} bits"
            )
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        kind = f"EC key on {key.curve.name}"
    else:
        kind = type(key).__name__
    raise KeyFileError(f"{source}: unsupported key type ({kind}); expected Ed25519 or RSA")


def _key_set(keys: Sequence[Ed25519PublicKey | RSAPublicKey]) -> KeySet:
    """Split parsed keys into a KeySet by type, keeping their order."""
    return KeySet(
        ed25519=tuple(k for k in keys if isinstance(k, Ed25519PublicKey)),
        rsa=tuple(k for k in keys if isinstance(k, RSAPublicKey)),
    )


def sourced_keys(paths: Sequence[Path]) -> list[tuple[str, Ed25519PublicKey | RSAPublicKey]]:
    """Each key of the PEM files ``paths``, or the published ones, with where it came from.

    One key per file; an empty ``paths`` means the published HighLevel keys. The source is
    what the start-up line names.
    """
    if not paths:
        folder = resources.files("relay.ingress").joinpath("keys")
        published = []
        for name in _DEFAULT_KEY_FILES:
            source = f"relay/ingress/keys/{name}"
            published.append((source, _parse_key(folder.joinpath(name).read_bytes(), source)))
        return published
    parsed = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: unreadable ({exc.strerror or exc})") from exc
        parsed.append((str(path), _parse_key(data, str(path))))
    return parsed


def load_public_keys(paths: Sequence[Path]) -> KeySet:
    """Load PEM public keys (one per file); the scheme follows from each key's type."""
    if not paths:
        return _key_set([])  # not the published keys: those are default_keys()
    return _key_set([key for _, key in sourced_keys(paths)])


_DEFAULT_KEY_FILES = ("highlevel-ed25519.pem", "highlevel-rsa.pem")


def default_keys() -> KeySet:
    """Load the HighLevel public keys shipped as package data in ``relay/ingress/keys``."""
    return _key_set([key for _, key in sourced_keys(())])
