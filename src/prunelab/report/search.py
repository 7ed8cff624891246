"""What a ``levels = "auto"`` search did, as the report shows it: one row per probe.

Read from the search's stored record (:func:`prunelab.sweep.auto.search_record`), never from a
model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

CONFIG = ("method", "allocation", "structure", "schedule")


def probe_table(record: Mapping[str, Any]) -> pd.DataFrame:
    """Every probe of every configuration in order: level, verdict, drop, interval, why.

    >>> rec = {"configs": [{"method": "magnitude", "allocation": "global", "structure": "u",
    ...        "schedule": "oneshot", "probes": [{"level": 0.5, "verdict": "holds", "why": "x",
    ...        "drop": 0.0, "low": 0.0, "high": 0.0}]}]}
    >>> probe_table(rec)[["configuration", "level", "verdict"]].values.tolist()
    [['magnitude/global/u/oneshot', 0.5, 'holds']]
    """
    rows = []
    for c in record.get("configs", []):
        name = "/".join(str(c[k]) for k in CONFIG)
        for i, p in enumerate(c.get("probes", []), 1):
            rows.append({"configuration": name, "probe": i, "level": p["level"],
                         "verdict": p["verdict"], "drop": p.get("drop"),
                         "drop_hi": p.get("high"), "why": p["why"]})  # fmt: skip
    return pd.DataFrame(rows)


def outcome_lines(record: Mapping[str, Any]) -> list[str]:
    """One line per configuration: its best level and where and why its search stopped."""
    grid = record.get("grid", {})
    head = (
        f"Searched levels {grid.get('low'):g} to {grid.get('high'):g} in steps of "
        f"{grid.get('resolution'):g} for the highest level whose {record.get('metric')} drop "
        f"stays within {record.get('max_drop'):g}: {record.get('cells')} cells."
    )
    lines = [head]
    for c in record.get("configs", []):
        name = "/".join(str(c[k]) for k in CONFIG)
        lines.append(f"{name}: {len(c.get('probes', []))} probes; {c.get('outcome')}.")
    return lines
