"""CLI/TOML spellings of schedules, parsed at the boundary into typed configs.

``name[:arg[:arg...]]`` where each arg is positional (in the schedule's ``positional``
order), an alias (``rewind``, ``linear``) or ``field=value``; values are converted to the
field's declared type.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from prunelab.errors import PrunelabError
from prunelab.recover.schedules.base import SCHEDULES


def _convert(cls: type, field: str, raw: str) -> Any:
    hint = str(typing.get_type_hints(cls)[field])
    text = raw.strip()
    if "None" in hint and text.lower() in ("none", "off"):
        return None
    try:
        if "int" in hint and "float" not in hint:
            return int(text)
        if "float" in hint:
            return float(text)
    except ValueError:
        kind = "an integer" if "int" in hint and "float" not in hint else "a number"
        raise PrunelabError(f"schedule {cls.name}: {field} must be {kind}, got '{raw}'") from None
    return text


def parse_schedule(text: str) -> Any:
    """Parse e.g. ``"iterative:3:rewind"`` into ``Iterative(rounds=3, rewind=0.0)``.

    >>> parse_schedule("iterative:3:rewind")
    Iterative(rounds=3, rewind=0.0)
    >>> parse_schedule("gradual:linear:every_steps=50").every_steps
    50
    >>> parse_schedule("adaptive:agreement:min_value=0.98:max_drop=none").min_value
    0.98
    """
    name, *args = [p.strip() for p in text.strip().split(":")]
    cls = SCHEDULES.get(name.lower())
    fields = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    positional = list(getattr(cls, "positional", ()))
    for arg in args:
        arg = cls.aliases.get(arg, arg) if hasattr(cls, "aliases") else arg
        key, eq, raw = arg.partition("=")
        if not eq:
            if not positional:
                raise PrunelabError(
                    f"schedule '{text}': unexpected argument '{arg}'; "
                    f"use field=value with fields: {', '.join(fields)}"
                )
            key, raw = positional.pop(0), arg
        if key not in fields:
            raise PrunelabError(
                f"schedule '{text}': unknown option '{key}'; valid: {', '.join(fields)}"
            )
        if key in positional:
            positional.remove(key)
        values[key] = _convert(cls, key, raw)
    return cls(**values)


def format_schedule(schedule: Any) -> str:
    """The canonical spelling of a schedule (non-default fields only); parses back equal.

    Use it to normalise spellings before hashing sweep cells ("iterative" == "iterative:3").

    >>> format_schedule(parse_schedule("iterative:3:rewind"))
    'iterative:rewind=0.0'
    >>> format_schedule(parse_schedule("gradual:cubic"))
    'gradual'
    """
    parts = [type(schedule).name]
    for f in dataclasses.fields(schedule):
        value = getattr(schedule, f.name)
        if value != f.default:
            parts.append(f"{f.name}={value}")
    return ":".join(parts)


def canonical_schedule(text: str) -> str:
    """Validate a spelling and return its canonical form (what sweep cells store and hash).

    >>> canonical_schedule("iterative") == canonical_schedule("iterative:3")
    True
    """
    return format_schedule(parse_schedule(text))
