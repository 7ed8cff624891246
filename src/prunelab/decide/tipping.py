"""Find each configuration's highest holding level with a fraction of a ladder's cells.

The policy is pure: a :class:`Climb` is what one configuration's search knows (the levels it
probed and their verdicts, from :mod:`prunelab.decide.verdict`); :func:`plan_round` says which
level each configuration probes next and why; :func:`record` adds the answer. The sweep runs
the cells (:mod:`prunelab.sweep.auto`). Levels are points of a grid (``low`` to ``high`` in
steps of the resolution), and the metric is assumed to worsen with sparsity, so one probe
splits the grid: a level that holds lifts the floor, one that does not (breaks, or still
undecided on all the data) lowers the ceiling.

1. **Bracket**: the first probe is the grid point nearest 0.5; while everything probed holds,
   the next one halves the remaining density (0.5, 0.75, 0.875, ... up to ``high``); while
   nothing holds, the next one halves the level (0.25, 0.125, ... down to ``low``).
2. **Bisect** the grid between the highest holding and the lowest failing level, until they
   are neighbours.
3. **Race**: every configuration probes the start level; then one leader at a time climbs
   while the others wait, and each of them next probes the level the leader settled at. One
   whose ceiling (the level below its lowest failure) is under the leader's highest holding
   level cannot win and stops, so a loser usually costs one or two cells.

Every level below a configuration's final floor that it probed held, so the recommendation
rule read on the stored cells (holding at every lower level) lands on the same floor.

>>> grid = tuple(round(0.05 + 0.05 * i, 2) for i in range(19))  # 0.05 .. 0.95
>>> climbs, truth = {"a": Climb(grid)}, 0.8  # holds up to 0.8
>>> while True:
...     climbs, asks = plan_round(climbs)
...     if not asks:
...         break
...     for key, (level, why) in asks.items():
...         ok = "holds" if level <= truth else "breaks"
...         climbs[key] = record(climbs[key], level, ok, why)
>>> climbs["a"].best, [p.level for p in climbs["a"].probes]
(0.8, [0.5, 0.75, 0.85, 0.8])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from prunelab.decide.verdict import Evidence, Verdict

START = 0.5  # the first probe: the middle of the usual range, and where halving density starts


@dataclass(frozen=True)
class Probe:
    level: float
    verdict: Verdict
    why: str
    drop: float | None = None  # the drop vs dense the verdict rests on (metric units)
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Climb:
    """One configuration's search so far over ``grid`` (increasing levels)."""

    grid: tuple[float, ...]
    probes: tuple[Probe, ...] = ()
    stopped: str = ""  # why the race stopped it early ("" while running or settled)

    def _index(self, level: float) -> int:
        return min(range(len(self.grid)), key=lambda i: abs(self.grid[i] - level))

    @property
    def floor(self) -> int:
        """Index of the highest level that held (-1: none yet)."""
        held = [self._index(p.level) for p in self.probes if p.verdict == "holds"]
        return max(held, default=-1)

    @property
    def roof(self) -> int:
        """Index of the lowest level that did not hold (``len(grid)``: none yet)."""
        failed = [self._index(p.level) for p in self.probes if p.verdict != "holds"]
        return min(failed, default=len(self.grid))

    @property
    def best(self) -> float | None:
        """The highest level that held (None: none did)."""
        return self.grid[self.floor] if self.floor >= 0 else None

    @property
    def ceiling(self) -> float | None:
        """The highest level this configuration may still reach (None: not even ``low``)."""
        return self.grid[self.roof - 1] if self.roof > 0 else None

    @property
    def settled(self) -> bool:
        return self.roof - self.floor <= 1

    @property
    def done(self) -> bool:
        return self.settled or bool(self.stopped)

    def outcome(self) -> str:
        """Where and why the search of this configuration ended, in one line."""
        if self.stopped:
            return self.stopped
        if not self.settled:
            return "still searching"
        if self.best is None:
            return f"nothing holds, not even {self.grid[0]:g}"
        if self.floor == len(self.grid) - 1:
            return f"holds up to the top of the grid, {self.best:g}"
        return f"holds at {self.best:g}, not at {self.grid[self.roof]:g} (one grid step apart)"


def _toward(climb: Climb, density_factor: float, origin: float) -> int:
    """The grid index nearest the level whose density is ``density_factor`` x ``origin``'s."""
    return climb._index(1.0 - (1.0 - origin) * density_factor)


def next_probe(climb: Climb) -> tuple[float, str] | None:
    """The level ``climb`` probes next and why; None when it is done."""
    if climb.done:
        return None
    lo, hi, grid = climb.floor, climb.roof, climb.grid
    if not climb.probes:
        return grid[climb._index(START)], f"bracket: start at {START:g}"
    if hi == len(grid):  # everything probed held: halve the density left
        i = max(_toward(climb, 0.5, grid[lo]), lo + 1)
        return grid[i], f"bracket up: {grid[lo]:g} holds, halve the density"
    if lo < 0:  # nothing held yet: halve the level
        i = min(climb._index(grid[hi] / 2), hi - 1)
        return grid[i], f"bracket down: {grid[hi]:g} fails, halve the level"
    i = (lo + hi) // 2
    return grid[i], f"bisect: {grid[lo]:g} holds, {grid[hi]:g} fails"


def leader(climbs: Mapping[Hashable, Climb]) -> float | None:
    """The highest level any configuration holds at so far."""
    return max((c.best for c in climbs.values() if c.best is not None), default=None)


def _headroom(climb: Climb) -> float:
    """How far below the tolerance its highest holding level dropped (larger: more room)."""
    held = [p for p in climb.probes if p.verdict == "holds" and p.level == climb.best]
    return -(held[-1].drop or 0.0) if held else float("-inf")


def _stop_losers(climbs: Mapping[Hashable, Climb], top: float | None) -> dict[Hashable, Climb]:
    out = {}
    for key, climb in climbs.items():
        if not climb.done and top is not None:
            ceiling = climb.ceiling
            if ceiling is None or ceiling < top - 1e-9:
                fails = climb.grid[climb.roof]
                why = f"race: fails at {fails:g}, cannot beat the leader's {top:g}"
                climb = dataclasses.replace(climb, stopped=why)
        out[key] = climb
    return out


def plan_round(
    climbs: Mapping[Hashable, Climb],
) -> tuple[dict[Hashable, Climb], dict[Hashable, tuple[float, str]]]:
    """Stop the configurations that cannot beat the leader; the next probe of the others.

    The first round probes every configuration at the start level (one shared probe usually
    separates the contenders). After it, one leader at a time climbs (the one with the most
    headroom at the top level); the others wait, then probe the level it settled at, where they
    either fail (and stop) or hold (and climb on from there).
    """
    top = leader(climbs)
    climbs = _stop_losers(climbs, top)
    running = {k: c for k, c in climbs.items() if not c.done}
    if any(not c.probes for c in running.values()):
        return climbs, {k: a for k, c in running.items() if (a := next_probe(c)) is not None}
    front = [k for k, c in running.items() if c.best == top]
    if front:
        key = max(front, key=lambda k: _headroom(running[k]))
        ask = next_probe(running[key])
        return climbs, {} if ask is None else {key: ask}
    asks = {}
    for key, climb in running.items():  # every leader is settled: can the others reach it?
        i = climb._index(top) if top is not None else -1
        if climb.floor < i < climb.roof:
            asks[key] = (climb.grid[i], f"race: can it reach the leader's {top:g}?")
        elif (ask := next_probe(climb)) is not None:
            asks[key] = ask
    return climbs, asks


def record(climb: Climb, level: float, verdict: Verdict | Evidence, why: str = "") -> Climb:
    """``climb`` with the answer at ``level`` (an :class:`Evidence` or a bare verdict)."""
    if isinstance(verdict, Evidence):
        probe = Probe(level, verdict.verdict, why, verdict.drop, verdict.low, verdict.high)
    else:
        probe = Probe(level, verdict, why)
    return dataclasses.replace(climb, probes=(*climb.probes, probe))
