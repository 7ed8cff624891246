"""Schedule names accepted by the sweep (the schedules module registers the full set)."""

from __future__ import annotations

from prunelab.errors import PrunelabError

BUILTIN = ("oneshot",)


def parse_schedule(text: str) -> str:
    """Validate a schedule spelling; returns it normalised."""
    t = text.strip().lower()
    if t in BUILTIN:
        return t
    raise PrunelabError(f"unknown schedule '{text}'; valid: {', '.join(BUILTIN)}")
