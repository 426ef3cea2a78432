"""``relay keygen``: development key pairs, so that ``relay send`` can stand in for HoopAI.

The relay only ever holds public keys. These private keys sign test deliveries on a dev
machine; they are not HighLevel's and must never be configured in production.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from relay.ingress.signatures import spki_sha256

DEFAULT_DIR: Final = Path(".dev-keys")
#: HighLevel's legacy key is RSA-4096; the dev key has the same size and signature length.
RSA_BITS: Final = 4096
_PRIVATE_MODE: Final = 0o600
_PUBLIC_MODE: Final = 0o644


@dataclass(frozen=True, slots=True)
class KeyPair:
    """One written key pair: its files and the SPKI SHA-256 fingerprint of the public key."""

    scheme: str
    private_path: Path
    public_path: Path
    fingerprint: str


class KeyFilesExist(FileExistsError):
    """A key file is already there and ``force`` was not given."""


def key_paths(folder: Path, *, rsa_only: bool) -> list[tuple[str, Path, Path]]:
    """(scheme, private key path, public key path) of the pair ``keygen`` writes.

    ``--rsa`` adds the RSA pair beside an Ed25519 one and leaves that alone: replacing it
    would make a relay started with the old public key answer 401 to every delivery.
    """
    scheme = "rsa" if rsa_only else "ed25519"
    return [(scheme, folder / f"{scheme}.key", folder / f"{scheme}.pem")]


def generate(folder: Path, *, rsa_only: bool = False, force: bool = False) -> list[KeyPair]:
    """Write an Ed25519 pair (or, ``rsa_only``, an RSA-4096 pair) into ``folder``.

    Refuses to overwrite a key file unless ``force``.
    """
    pairs = key_paths(folder, rsa_only=rsa_only)
    if not force:
        existing = [str(p) for _, *paths in pairs for p in paths if p.exists()]
        if existing:
            raise KeyFilesExist(f"refusing to overwrite {', '.join(existing)} (use --force)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for scheme, private_path, public_path in pairs:
        key: Ed25519PrivateKey | RSAPrivateKey = (
            Ed25519PrivateKey.generate()
            if scheme == "ed25519"
            else rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        )
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write(private_path, private_pem, _PRIVATE_MODE)
        _write(public_path, public_pem, _PUBLIC_MODE)
        written.append(KeyPair(scheme, private_path, public_path, spki_sha256(key.public_key())))
    return written


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode``, also when the file was already there."""
    # The mode is set at creation, so a private key is never readable by others, not even
    # for an instant; fchmod covers a file that --force overwrites.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)


def report(pairs: Sequence[KeyPair]) -> list[str]:
    """What ``relay keygen`` prints: the files, fingerprints and how to use them.

    The relay to start trusts every public key of the folder, the pairs written before
    included (an RSA pair added beside an Ed25519 one).
    """
    lines = []
    for pair in pairs:
        lines += [
            f"{pair.scheme} private key: {pair.private_path} (mode 600, keep it to yourself)",
            f"{pair.scheme} public key:  {pair.public_path}",
            f"{pair.scheme} SPKI SHA-256: {pair.fingerprint}",
        ]
    folders = {pair.public_path.parent for pair in pairs}
    pems = [f / f"{s}.pem" for f in sorted(folders) for s in ("ed25519", "rsa")]
    public = ",".join(str(pem) for pem in pems if pem.exists())
    legacy = " RELAY_ACCEPT_LEGACY_RSA=true" if any(p.scheme == "rsa" for p in pairs) else ""
    lines += [
        "",
        "Start the relay with these keys instead of HighLevel's:",
        f"  RELAY_PUBLIC_KEYS={public}{legacy} relay serve",
        "then sign deliveries with the private key:",
    ]
    for pair in pairs:
        rsa_flag = " --rsa" if pair.scheme == "rsa" else ""
        lines.append(f"  relay send --type ContactCreate --key {pair.private_path}{rsa_flag}")
    return lines
