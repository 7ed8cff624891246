"""The level a cell is credited with: the sparsity it achieved, not the one it asked for.

Most schedules reach their requested level by construction; the adaptive schedule stops when
its tolerance breaks, and a ladder of channel counts rounds per layer. Every reading of a
sweep (knees, recommendations) groups cells by :func:`credited_levels`, so a cell that stopped
at 0.75 is never recommended at its 0.9 ceiling. Rows store ``achieved_level`` (see
:func:`prunelab.prune.masks.level_reached`); stores written before it fall back to an adaptive
trajectory's final level, else to the requested level.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

REACHED_TOL = 0.005  # a cell within half a point of its requested level reached it
LEVEL_GRID = 1000  # a cell that stopped short is credited on a 0.001 grid, rounded down


def _trajectory_level(raw: object) -> float:
    """The final level of an adaptive trajectory (stores written before ``achieved_level``)."""
    if not isinstance(raw, str):
        return math.nan
    final = [r for r in json.loads(raw) if r.get("phase") == "final"]
    return float(final[-1]["sparsity"]) if final else math.nan


def credited_levels(df: pd.DataFrame) -> pd.Series:
    """The level each row is credited with: the requested ``level`` when the cell reached it
    (``achieved_level`` within :data:`REACHED_TOL`), else what it achieved, floored to 0.001.

    >>> credited_levels(pd.DataFrame({"level": [0.9, 0.9], "achieved_level": [0.8999, 0.75]}))
    0    0.90
    1    0.75
    Name: level, dtype: float64
    """
    level = df["level"].astype(float)
    got = (
        df["achieved_level"].astype(float)
        if "achieved_level" in df.columns
        else pd.Series(math.nan, index=df.index)
    )
    if "trajectory" in df.columns:
        got = got.fillna(df["trajectory"].map(_trajectory_level))
    short = got < level - REACHED_TOL
    floored = np.floor(got * LEVEL_GRID + 1e-6) / LEVEL_GRID
    return level.where(~short, floored).rename("level")


def credit(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with ``level`` the credited level and the requested one in ``requested``."""
    return df.assign(requested=df["level"].astype(float), level=credited_levels(df))
