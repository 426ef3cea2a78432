"""The published example payload of each HoopAI event, exactly as published (mistakes included).

Shipped with the package for ``relay send --type``; the tests use them too.
"""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parent


def sample_names() -> list[str]:
    """The sample names (file stems), e.g. ``ContactCreate``, ``InboundMessage.Call``."""
    return sorted(p.stem for p in SAMPLES.glob("*.json"))


def sample(name: str) -> bytes:
    """The raw bytes of one sample, by name."""
    path = SAMPLES / f"{name}.json"
    if path.parent != SAMPLES or not path.is_file():
        raise KeyError(name)
    return path.read_bytes()
