"""Schedule spellings at the sweep boundary: validated and normalised (see prunelab.schedules)."""

from __future__ import annotations


def parse_schedule(text: str) -> str:
    """Validate a schedule spelling and return its canonical form.

    >>> parse_schedule("iterative") == parse_schedule("iterative:3")
    True
    """
    from prunelab.schedules import format_schedule
    from prunelab.schedules import parse_schedule as parse

    return format_schedule(parse(text))
