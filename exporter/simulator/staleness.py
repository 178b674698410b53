"""Staleness against the vendor's real state: for every change the API showed, how long until the exporter
shows it.

Comparing the exporter with what it was *served* cannot see what it failed to learn (a task shown running an
hour after it succeeded passes such a check). This tracker takes the changes from the simulator's own model
(``Simulator.cdn_changes``: a task appearing, starting to run, ending) and, at each observation, what the
exporter shows for those tasks, and records for each change the time from the change to the first
observation that shows it (or a later phase). Observing right after every request the exporter makes gives
the exact figure, since nothing else changes what it shows.

Used by the truth tests and ``benchmarks/bench_freshness.py``; it reads the exporter only through a
``lookup`` callable, so the same tracker measures any exporter (the benchmark's naive re-reader too).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# What the exporter shows, as the phase of a task's life it stands for (``unknown``: a sweep could not place
# it, so nothing past its first appearance is claimed).
PHASE = {"wait": 0, "unknown": 0, "run": 1, "success": 2, "failure": 2}

# (url, create, phase, status, at): one change at the vendor (see ``CdnModel.changes``).
Change = tuple[str, int, int, str, float]
# (start, end) -> {(url, create): status}: what the exporter shows for the tasks created in [start, end].
Lookup = Callable[[float, float], Mapping[tuple[str, int], str]]


def shows(status: str | None, phase: int, final: str) -> bool:
    """Whether a task shown as ``status`` shows the change to ``phase`` (ending as ``final``) or a later one."""
    if status is None:
        return False
    shown = PHASE.get(status, 0)
    return shown > phase or (shown == phase and (phase < 2 or status == final))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Staleness:
    """Changes of one (account, kind) after ``start``, by window: the task's createTime lay within the window
    when the change happened."""

    changes: Callable[[float, float, float, float], list[Change]]  # (start, end, after, until) -> changes
    windows: Mapping[str, float]
    start: float
    samples: dict[str, list[float]] = field(default_factory=dict)
    pending: list[Change] = field(default_factory=list)
    expired: dict[str, list[float]] = field(default_factory=dict)  # never shown while in the longest window

    def __post_init__(self) -> None:
        self.last = self.start
        self.longest = max(self.windows.values())
        for name in self.windows:
            self.samples.setdefault(name, [])
            self.expired.setdefault(name, [])

    def _windows_of(self, change: Change) -> list[str]:
        _, create, _, _, at = change
        return [name for name, w in self.windows.items() if create > at - w]

    def observe(self, now: float, lookup: Lookup) -> None:
        """Take the changes up to ``now`` and resolve those the exporter shows now."""
        if now > self.last:
            self.pending.extend(self.changes(now - self.longest + 1, now, self.last, now))
            self.last = now
        if not self.pending:
            return
        shown = _lookup_clusters(self.pending, lookup)
        still: list[Change] = []
        for change in self.pending:
            url, create, phase, final, at = change
            if shows(shown.get((url, create)), phase, final):
                for name in self._windows_of(change):
                    self.samples[name].append(now - at)
            elif create <= now - self.longest:
                for name in self._windows_of(change):
                    self.expired[name].append(now - at)
            else:
                still.append(change)
        self.pending = still

    def unshown(self, now: float, older_than: float = 0.0) -> list[Change]:
        """Changes not shown yet that happened more than ``older_than`` seconds before ``now``."""
        return [c for c in self.pending if c[4] < now - older_than]

    def report(self, now: float) -> dict[str, dict[str, Any]]:
        """Per window: changes shown, p50/p99/max seconds until shown, and those not shown yet (their age so
        far counts in the max: a lower bound)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.windows:
            waiting = [now - c[4] for c in self.pending if name in self._windows_of(c)] + self.expired[name]
            values = self.samples[name]
            out[name] = {
                "changes": len(values) + len(waiting),
                "p50": percentile(values, 0.5),
                "p99": percentile(values + waiting, 0.99),
                "max": max([0.0, *values, *waiting]),
                "mean": statistics.fmean(values) if values else 0.0,
                "unshown": len(waiting),
            }
        return out


def _lookup_clusters(pending: Sequence[Change], lookup: Lookup, gap: float = 900.0) -> dict[tuple[str, int], str]:
    """What the exporter shows for the pending changes' tasks, asked in createTime clusters (slow tasks
    spread over a day would otherwise make one lookup read the whole day)."""
    creates: list[float] = sorted({float(c[1]) for c in pending})
    shown: dict[tuple[str, int], str] = {}
    first = prev = creates[0]
    for create in [*creates[1:], math.inf]:
        if create - prev > gap:
            shown.update(lookup(first, prev))
            first = create
        prev = create
    return shown


def store_lookup(store: Any, account: str, kind: str) -> Lookup:
    """A ``Lookup`` over an exporter's store (``Store.cdn_rows``)."""

    def lookup(start: float, end: float) -> dict[tuple[str, int], str]:
        return {(url, int(create)): status for create, url, status in store.cdn_rows(account, kind, start, end)}

    return lookup
