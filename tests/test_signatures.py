import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ingress.signatures import (
    KeyFileError,
    KeySet,
    Reason,
    Rejected,
    Scheme,
    Verified,
    default_keys,
    load_public_keys,
    spki_sha256,
    verify,
)

# The pins, copied from the shared README (SPKI SHA-256 of HighLevel's published keys).
HIGHLEVEL_ED25519_SPKI_SHA256 = "5a2c1b2749d3efcc233fb27d4ab43d56b8d20818c42cd226f6c9a3ff20d3097c"
HIGHLEVEL_RSA_SPKI_SHA256 = "2f62045d413b1b7747e26770ce7f57840cbf86288cd20ceb90d299a62501fd25"

BODY = (
    b'{"type":"ContactCreate","locationId":"ve9EPM428h8vShlRW1KT","id":"nmFmQEsNgz6AVpgLVUJ0",'
    b'"webhookId":"4b1e5c3a-7f0e-4d8e-9a51-0f6d0c8f2b11","timestamp":"2026-08-14T09:30:00.000Z"}'
)


def b64(raw: bytes) -> str:
    """Encode bytes as standard base64 text, as HighLevel sends it."""
    return base64.b64encode(raw).decode("ascii")


def ed_sign(key: Ed25519PrivateKey, body: bytes) -> str:
    """Return an X-GHL-Signature value for body."""
    return b64(key.sign(body))


def rsa_sign(key: RSAPrivateKey, body: bytes) -> str:
    """Return an X-WH-Signature value for body."""
    return b64(key.sign(body, padding.PKCS1v15(), hashes.SHA256()))


def pem(key: Ed25519PrivateKey | RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """Return the PEM SubjectPublicKeyInfo of key's public half."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def ed_key() -> Ed25519PrivateKey:
    """Provide the Ed25519 test signing key."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def other_ed_key() -> Ed25519PrivateKey:
    """Provide an Ed25519 key that is not in the key set."""
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def rsa_key() -> RSAPrivateKey:
    """Provide an RSA test key (2048 bits for speed; HighLevel's is 4096)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys(ed_key: Ed25519PrivateKey, rsa_key: RSAPrivateKey) -> KeySet:
    """Provide a KeySet holding the test Ed25519 and RSA public keys."""
    return KeySet(ed25519=(ed_key.public_key(),), rsa=(rsa_key.public_key(),))


# --- shipped keys -------------------------------------------------------------------------------


def test_default_keys_match_published_fingerprints() -> None:
    """The shipped PEMs are exactly HighLevel's published keys (SPKI SHA-256 pins)."""
    shipped = default_keys()
    assert [spki_sha256(k) for k in shipped.ed25519] == [HIGHLEVEL_ED25519_SPKI_SHA256]
    assert [spki_sha256(k) for k in shipped.rsa] == [HIGHLEVEL_RSA_SPKI_SHA256]


def test_default_rsa_key_is_4096_bits() -> None:
    """The shipped legacy key is RSA-4096, so its signatures are 512 bytes."""
    (key,) = default_keys().rsa
    assert key.key_size == 4096


def test_default_keys_reject_wrong_length_and_wrong_rsa_4096_signature() -> None:
    """With the 4096-bit key, a 256-byte signature is BAD_LENGTH and a bogus 512-byte one fails."""
    shipped = default_keys()
    short = verify(BODY, None, b64(bytes(256)), shipped, accept_legacy_rsa=True)
    assert short == Rejected(Reason.BAD_LENGTH)
    bogus = verify(BODY, None, b64(b"\x01" * 512), shipped, accept_legacy_rsa=True)
    assert bogus == Rejected(Reason.BAD_SIGNATURE)


def test_default_keys_reject_forged_ed25519_signature(other_ed_key: Ed25519PrivateKey) -> None:
    """A well-formed Ed25519 signature by anyone else fails against the shipped key."""
    forged = ed_sign(other_ed_key, BODY)
    assert verify(BODY, forged, None, default_keys(), accept_legacy_rsa=False) == Rejected(
        Reason.BAD_SIGNATURE
    )


# --- Ed25519 (X-GHL-Signature) ------------------------------------------------------------------


def test_ed25519_signature_verifies(ed_key: Ed25519PrivateKey, keys: KeySet) -> None:
    """A body signed with the configured Ed25519 key verifies and echoes the header value."""
    signature = ed_sign(ed_key, BODY)
    result = verify(BODY, signature, None, keys, accept_legacy_rsa=False)
    assert result == Verified(Scheme.ED25519, signature)


def test_ed25519_surrounding_whitespace_is_tolerated(
    ed_key: Ed25519PrivateKey, keys: KeySet
) -> None:
    """Whitespace around the value is stripped, and Verified keeps the value as received."""
    signature = f" {ed_sign(ed_key, BODY)}\t"
    assert verify(BODY, signature, None, keys, accept_legacy_rsa=False) == Verified(
        Scheme.ED25519, signature
    )


def test_ed25519_wins_over_valid_rsa_when_both_present(
    ed_key: Ed25519PrivateKey, rsa_key: RSAPrivateKey, keys: KeySet
) -> None:
    """With both headers valid, the Ed25519 one is what verifies."""
    result = verify(
        BODY, ed_sign(ed_key, BODY), rsa_sign(rsa_key, BODY), keys, accept_legacy_rsa=True
    )
    assert isinstance(result, Verified)
    assert result.scheme is Scheme.ED25519


@pytest.mark.parametrize(
    ("ghl", "reason"),
    [
        pytest.param(None, Reason.MISSING, id="missing"),
        pytest.param("", Reason.MISSING, id="empty"),
        pytest.param("   ", Reason.MISSING, id="blank"),
        pytest.param("N/A", Reason.MISSING, id="n/a"),
        pytest.param("not base64!", Reason.NOT_BASE64, id="not-base64"),
        pytest.param("QUJD", Reason.BAD_LENGTH, id="3-bytes"),
        pytest.param("QUJ", Reason.NOT_BASE64, id="bad-padding"),
        pytest.param(b64(bytes(63)), Reason.BAD_LENGTH, id="63-bytes"),
        pytest.param(b64(bytes(65)), Reason.BAD_LENGTH, id="65-bytes"),
        pytest.param(b64(bytes(64)), Reason.BAD_SIGNATURE, id="64-zero-bytes"),
        pytest.param("é" * 88, Reason.NOT_BASE64, id="non-ascii"),
    ],
)
def test_malformed_ghl_signature_is_rejected(ghl: str | None, reason: Reason, keys: KeySet) -> None:
    """Missing, N/A, undecodable and wrong-length GHL values get their own reason."""
    assert verify(BODY, ghl, None, keys, accept_legacy_rsa=False) == Rejected(reason)


def test_urlsafe_base64_is_not_base64(keys: KeySet) -> None:
    """The URL-safe alphabet (``-``/``_``) is not what HighLevel sends: NOT_BASE64."""
    urlsafe = base64.urlsafe_b64encode(b"\xfb\xff" * 32).decode("ascii")
    assert "-" in urlsafe
    assert "_" in urlsafe
    assert verify(BODY, urlsafe, None, keys, accept_legacy_rsa=False) == Rejected(Reason.NOT_BASE64)


def test_inner_whitespace_is_not_base64(ed_key: Ed25519PrivateKey, keys: KeySet) -> None:
    """Whitespace inside the value is not stripped: strict decoding rejects it."""
    signature = ed_sign(ed_key, BODY)
    broken = f"{signature[:40]} {signature[40:]}"
    assert verify(BODY, broken, None, keys, accept_legacy_rsa=False) == Rejected(Reason.NOT_BASE64)


def test_signature_by_another_key_is_rejected(
    other_ed_key: Ed25519PrivateKey, keys: KeySet
) -> None:
    """A valid Ed25519 signature by a key outside the set is BAD_SIGNATURE."""
    forged = ed_sign(other_ed_key, BODY)
    assert verify(BODY, forged, None, keys, accept_legacy_rsa=False) == Rejected(
        Reason.BAD_SIGNATURE
    )


def test_rsa_signature_in_ghl_header_is_rejected(rsa_key: RSAPrivateKey, keys: KeySet) -> None:
    """An RSA signature put in X-GHL-Signature has the wrong length for Ed25519."""
    forged = rsa_sign(rsa_key, BODY)
    assert verify(BODY, forged, None, keys, accept_legacy_rsa=True) == Rejected(Reason.BAD_LENGTH)


def test_signature_of_another_body_is_rejected(ed_key: Ed25519PrivateKey, keys: KeySet) -> None:
    """A genuine signature replayed onto a different body is BAD_SIGNATURE."""
    other = ed_sign(ed_key, b'{"type":"ContactDelete"}')
    assert verify(BODY, other, None, keys, accept_legacy_rsa=False) == Rejected(
        Reason.BAD_SIGNATURE
    )


@pytest.mark.parametrize("index", [0, 17, len(BODY) - 1])
def test_one_flipped_body_byte_is_rejected(
    index: int, ed_key: Ed25519PrivateKey, keys: KeySet
) -> None:
    """Flipping one bit of one byte of the body breaks the signature."""
    signature = ed_sign(ed_key, BODY)
    tampered = bytearray(BODY)
    tampered[index] ^= 0x01
    assert verify(bytes(tampered), signature, None, keys, accept_legacy_rsa=False) == Rejected(
        Reason.BAD_SIGNATURE
    )


def test_reserialised_body_is_rejected(ed_key: Ed25519PrivateKey, keys: KeySet) -> None:
    """The same JSON with other whitespace is another message: only raw bytes verify."""
    signature = ed_sign(ed_key, BODY)
    reserialised = BODY.replace(b'","', b'", "')
    assert verify(reserialised, signature, None, keys, accept_legacy_rsa=False) == Rejected(
        Reason.BAD_SIGNATURE
    )


def test_ghl_without_ed25519_key_is_no_key(ed_key: Ed25519PrivateKey, keys: KeySet) -> None:
    """A GHL signature with no Ed25519 key configured is NO_KEY."""
    rsa_only = KeySet(ed25519=(), rsa=keys.rsa)
    assert verify(BODY, ed_sign(ed_key, BODY), None, rsa_only, accept_legacy_rsa=True) == Rejected(
        Reason.NO_KEY
    )


def test_key_rotation_second_key_verifies(
    ed_key: Ed25519PrivateKey, other_ed_key: Ed25519PrivateKey
) -> None:
    """With two Ed25519 keys configured, a signature by the second one verifies."""
    rotated = KeySet(ed25519=(other_ed_key.public_key(), ed_key.public_key()), rsa=())
    signature = ed_sign(ed_key, BODY)
    assert verify(BODY, signature, None, rotated, accept_legacy_rsa=False) == Verified(
        Scheme.ED25519, signature
    )


# --- legacy RSA (X-WH-Signature) ----------------------------------------------------------------


@pytest.mark.parametrize("ghl", [None, "", "N/A"])
def test_legacy_rsa_verifies_when_enabled(
    ghl: str | None, rsa_key: RSAPrivateKey, keys: KeySet
) -> None:
    """Only X-WH-Signature (GHL absent or N/A) and legacy enabled: RSA verifies."""
    signature = rsa_sign(rsa_key, BODY)
    assert verify(BODY, ghl, signature, keys, accept_legacy_rsa=True) == Verified(
        Scheme.RSA_SHA256, signature
    )


def test_legacy_rsa_disabled(rsa_key: RSAPrivateKey, keys: KeySet) -> None:
    """Only X-WH-Signature and legacy disabled: LEGACY_DISABLED, even if it is valid."""
    signature = rsa_sign(rsa_key, BODY)
    assert verify(BODY, None, signature, keys, accept_legacy_rsa=False) == Rejected(
        Reason.LEGACY_DISABLED
    )


@pytest.mark.parametrize(
    ("ghl", "reason"),
    [
        pytest.param(b64(bytes(64)), Reason.BAD_SIGNATURE, id="bad-signature"),
        pytest.param("garbage!", Reason.NOT_BASE64, id="not-base64"),
        pytest.param(b64(bytes(10)), Reason.BAD_LENGTH, id="bad-length"),
    ],
)
def test_bad_ghl_does_not_fall_back_to_valid_rsa(
    ghl: str, reason: Reason, rsa_key: RSAPrivateKey, keys: KeySet
) -> None:
    """A present but invalid GHL header is rejected even when a valid WH header follows."""
    result = verify(BODY, ghl, rsa_sign(rsa_key, BODY), keys, accept_legacy_rsa=True)
    assert result == Rejected(reason)


def test_forged_ghl_with_valid_rsa_is_bad_signature(
    other_ed_key: Ed25519PrivateKey, rsa_key: RSAPrivateKey, keys: KeySet
) -> None:
    """A well-formed but wrong GHL signature plus a valid WH header is BAD_SIGNATURE."""
    result = verify(
        BODY, ed_sign(other_ed_key, BODY), rsa_sign(rsa_key, BODY), keys, accept_legacy_rsa=True
    )
    assert result == Rejected(Reason.BAD_SIGNATURE)


@pytest.mark.parametrize(
    ("wh", "reason"),
    [
        pytest.param(None, Reason.MISSING, id="missing"),
        pytest.param("N/A", Reason.MISSING, id="n/a"),
        pytest.param("", Reason.MISSING, id="empty"),
        pytest.param("%%%", Reason.NOT_BASE64, id="not-base64"),
        pytest.param(b64(bytes(64)), Reason.BAD_LENGTH, id="ed25519-sized"),
        pytest.param(b64(bytes(512)), Reason.BAD_LENGTH, id="4096-sized-for-2048-key"),
        pytest.param(b64(b"\x01" * 256), Reason.BAD_SIGNATURE, id="bogus-256"),
    ],
)
def test_malformed_wh_signature_is_rejected(wh: str | None, reason: Reason, keys: KeySet) -> None:
    """Malformed legacy values get the same reasons as malformed Ed25519 ones."""
    assert verify(BODY, None, wh, keys, accept_legacy_rsa=True) == Rejected(reason)


def test_legacy_rsa_of_another_body_is_rejected(rsa_key: RSAPrivateKey, keys: KeySet) -> None:
    """An RSA signature of another body is BAD_SIGNATURE."""
    signature = rsa_sign(rsa_key, b"{}")
    assert verify(BODY, None, signature, keys, accept_legacy_rsa=True) == Rejected(
        Reason.BAD_SIGNATURE
    )


def test_legacy_rsa_other_hash_is_rejected(rsa_key: RSAPrivateKey, keys: KeySet) -> None:
    """PKCS#1 v1.5 with SHA-512 instead of SHA-256 is a wrong algorithm: BAD_SIGNATURE."""
    signature = b64(rsa_key.sign(BODY, padding.PKCS1v15(), hashes.SHA512()))
    assert verify(BODY, None, signature, keys, accept_legacy_rsa=True) == Rejected(
        Reason.BAD_SIGNATURE
    )


def test_legacy_rsa_without_rsa_key_is_no_key(rsa_key: RSAPrivateKey, keys: KeySet) -> None:
    """A WH signature with no RSA key configured is NO_KEY."""
    ed_only = KeySet(ed25519=keys.ed25519, rsa=())
    assert verify(BODY, None, rsa_sign(rsa_key, BODY), ed_only, accept_legacy_rsa=True) == Rejected(
        Reason.NO_KEY
    )


def test_rsa_rotation_across_key_sizes(rsa_key: RSAPrivateKey) -> None:
    """A 4096-bit and a 2048-bit key coexist; the signature length selects the key to try."""
    mixed = KeySet(ed25519=(), rsa=(*default_keys().rsa, rsa_key.public_key()))
    signature = rsa_sign(rsa_key, BODY)
    assert verify(BODY, None, signature, mixed, accept_legacy_rsa=True) == Verified(
        Scheme.RSA_SHA256, signature
    )


# --- property -----------------------------------------------------------------------------------


@settings(max_examples=200, database=None, deadline=None)
@given(body_a=st.binary(max_size=2048), body_b=st.binary(max_size=2048))
def test_signature_of_one_body_never_verifies_another(
    body_a: bytes, body_b: bytes, ed_key: Ed25519PrivateKey, keys: KeySet
) -> None:
    """For arbitrary bodies A != B, a signature of A never verifies B."""
    signature = ed_sign(ed_key, body_a)
    result = verify(body_b, signature, None, keys, accept_legacy_rsa=False)
    if body_a == body_b:
        assert result == Verified(Scheme.ED25519, signature)
    else:
        assert result == Rejected(Reason.BAD_SIGNATURE)


# --- key loading --------------------------------------------------------------------------------


def test_load_public_keys_sorts_by_type(
    tmp_path: Path, ed_key: Ed25519PrivateKey, rsa_key: RSAPrivateKey
) -> None:
    """Ed25519 and RSA PEM files land in the matching KeySet tuple."""
    ed_file = tmp_path / "ed.pem"
    ed_file.write_bytes(pem(ed_key))
    rsa_file = tmp_path / "rsa.pem"
    rsa_file.write_bytes(pem(rsa_key))
    loaded = load_public_keys([rsa_file, ed_file])
    assert [spki_sha256(k) for k in loaded.ed25519] == [spki_sha256(ed_key.public_key())]
    assert [spki_sha256(k) for k in loaded.rsa] == [spki_sha256(rsa_key.public_key())]


def test_load_public_keys_several_per_scheme_in_order(
    tmp_path: Path, ed_key: Ed25519PrivateKey, other_ed_key: Ed25519PrivateKey
) -> None:
    """Several Ed25519 files give several keys, in the order given."""
    first = tmp_path / "a.pem"
    first.write_bytes(pem(other_ed_key))
    second = tmp_path / "b.pem"
    second.write_bytes(pem(ed_key))
    loaded = load_public_keys([first, second])
    assert [spki_sha256(k) for k in loaded.ed25519] == [
        spki_sha256(other_ed_key.public_key()),
        spki_sha256(ed_key.public_key()),
    ]
    assert loaded.rsa == ()


def test_load_public_keys_rejects_ec_key(tmp_path: Path) -> None:
    """An EC public key is neither Ed25519 nor RSA: KeyFileError naming the file."""
    ec_file = tmp_path / "p256.pem"
    ec_file.write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(KeyFileError, match=r"p256\.pem.*EC key on secp256r1"):
        load_public_keys([ec_file])


def test_load_public_keys_missing_file(tmp_path: Path) -> None:
    """A path that does not exist is KeyFileError naming it."""
    missing = tmp_path / "nope.pem"
    with pytest.raises(KeyFileError, match=r"nope\.pem.*unreadable"):
        load_public_keys([missing])


def test_load_public_keys_garbage(tmp_path: Path) -> None:
    """A file that is not PEM is KeyFileError naming it."""
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"this is not a key\n")
    with pytest.raises(KeyFileError, match=r"junk\.pem.*not a PEM public key"):
        load_public_keys([junk])


def test_load_public_keys_mistyped_key(tmp_path: Path) -> None:
    """The community copy with the `DVF8` typo still parses but fails the pin."""
    keys = Path(__file__).parents[1] / "relay" / "ingress" / "keys"
    text = (keys / "highlevel-rsa.pem").read_text()
    typo = tmp_path / "typo.pem"
    typo.write_text(text.replace("DVfB", "DVF8"))
    (key,) = load_public_keys([typo]).rsa
    assert spki_sha256(key) != HIGHLEVEL_RSA_SPKI_SHA256


def test_load_public_keys_rejects_short_rsa(tmp_path: Path) -> None:
    """An RSA key under 2048 bits is KeyFileError naming the file and the size."""
    weak_file = tmp_path / "weak.pem"
    weak = rsa.generate_private_key(
        public_exponent=65537,
        key_size=1024,  # noqa: S505 -- a breakable key is the point: the loader must refuse it
    )
    weak_file.write_bytes(pem(weak))
    with pytest.raises(KeyFileError, match=r"weak\.pem.*1024 bits"):
        load_public_keys([weak_file])


def test_load_public_keys_rejects_private_key(tmp_path: Path, ed_key: Ed25519PrivateKey) -> None:
    """A private key file is refused rather than silently accepted."""
    private_file = tmp_path / "private.pem"
    private_file.write_bytes(
        ed_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match=r"private\.pem"):
        load_public_keys([private_file])


def test_load_public_keys_rejects_two_keys_in_one_file(
    tmp_path: Path, ed_key: Ed25519PrivateKey, other_ed_key: Ed25519PrivateKey
) -> None:
    """A file with two PEM blocks is refused instead of silently loading only the first."""
    both = tmp_path / "both.pem"
    both.write_bytes(pem(ed_key) + pem(other_ed_key))
    with pytest.raises(KeyFileError, match=r"both\.pem.*2 PEM blocks"):
        load_public_keys([both])


def test_load_public_keys_empty_is_empty_set() -> None:
    """No files give an empty KeySet, with which every signature is NO_KEY."""
    empty = load_public_keys([])
    assert empty == KeySet(ed25519=(), rsa=())
    assert verify(BODY, b64(bytes(64)), None, empty, accept_legacy_rsa=False) == Rejected(
        Reason.NO_KEY
    )
