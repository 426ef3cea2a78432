"""``python -m bench.verifycost``: one Ed25519 verify, cryptography (OpenSSL) against PyNaCl.

The figures behind relay/ingress/signatures.py's choice of libsodium: the best of 5 runs of
3,000 verifies of a signature over a body of the benchmark's median size, on one core.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from importlib.metadata import version

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.signing import VerifyKey

BODY_BYTES = 723
ROUNDS, PER_ROUND = 5, 3000


def best_us(check: Callable[[], object]) -> float:
    """The best per-call time of ``ROUNDS`` rounds of ``PER_ROUND`` calls, in microseconds."""
    best = float("inf")
    for _ in range(ROUNDS):
        began = time.perf_counter()
        for _ in range(PER_ROUND):
            check()
        best = min(best, (time.perf_counter() - began) / PER_ROUND)
    return best * 1e6


def main() -> int:
    """Print the cost of one verify with each library."""
    key = Ed25519PrivateKey.generate()
    body = os.urandom(BODY_BYTES)
    signature = key.sign(body)
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    nacl_key = VerifyKey(raw)
    print(f"{platform.processor() or platform.machine()}, {BODY_BYTES}-byte body")
    openssl = best_us(lambda: public.verify(signature, body))
    sodium = best_us(lambda: nacl_key.verify(body, signature))
    print(f"cryptography {version('cryptography')}: {openssl:.0f} us per verify")
    print(f"pynacl {version('pynacl')}: {sodium:.0f} us per verify ({openssl / sodium:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
