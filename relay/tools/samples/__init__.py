"""The published example payload of each HoopAI event, exactly as published (mistakes included).

Shipped with the package for ``relay send --type``; the tests use them too. ``workflow/``
holds bodies of HighLevel workflow webhook actions, for ``relay send --workflow`` (its
README says where they come from).
"""

from __future__ import annotations

from pathlib import Path

SAMPLES = Path(__file__).resolve().parent
WORKFLOW_SAMPLES = SAMPLES / "workflow"


def sample_names(folder: Path = SAMPLES) -> list[str]:
    """The sample names (file stems), e.g. ``ContactCreate``, ``InboundMessage.Call``."""
    return sorted(p.stem for p in folder.glob("*.json"))


def sample(name: str, folder: Path = SAMPLES) -> bytes:
    """The raw bytes of one sample of ``folder``, by name."""
    path = folder / f"{name}.json"
    if path.parent != folder or not path.is_file():
        raise KeyError(name)
    return path.read_bytes()
