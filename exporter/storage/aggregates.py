"""What scrapes read without SQL: persistent counters and histograms, rolling-window counts, the pending
Fmgr task count, all kept in memory next to the repository that persists them.

A write transaction collects its changes in a ``Work`` and they reach memory only once it committed, all of
them under one lock acquisition: a scrape that takes a ``Snapshot`` sees every transaction whole or not at
all (a histogram's ``+Inf`` bucket always equals its ``_count``), and a rolled-back transaction leaves
nothing behind.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from exporter.fmgr import wire as fmgrwire
from exporter.metrics.windows import Counts, Delta, EdgeCounts, WindowCounter
from exporter.storage.repository import Transaction

CDN_STATUSES = ("success", "failure", "wait", "run", "unknown")
CDN_FINAL = frozenset({"success", "failure"})

CounterKey = tuple[str, str]  # (name, encoded label set)


def labels_key(labels: dict[str, str]) -> str:
    return _labels_key_of(tuple(sorted(labels.items())))


# Label sets repeat endlessly (a few per account and bucket): encoding and decoding them once keeps
# json off the scrape path and out of the per-task write path.
@lru_cache(maxsize=8192)
def _labels_key_of(items: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(items), separators=(",", ":"))


@lru_cache(maxsize=8192)
def labels_of(key: str) -> tuple[tuple[str, str], ...]:
    return tuple(json.loads(key).items())


# ---------------------------------------------------------------------- what a row adds to the windows
def cdn_deltas(account: str, kind: str, create_ts: float, status: str, rate: float | None,
               sign: int) -> list[Delta]:
    """A CDN task's contribution to its (account, kind) windows: its status, and its rate once final."""
    group = (account, kind)
    out: list[Delta] = [(group, create_ts, ("status", status), sign)]
    if status in CDN_FINAL and rate is not None:
        out.append((group, create_ts, ("rate_sum",), sign * rate))
        out.append((group, create_ts, ("rate_n",), sign))
    return out


def fmgr_task_deltas(first_seen: float, code: int | None, sign: int) -> list[Delta]:
    # Keys stay bounded: unknown codes collapse to -1 ("other"); None = not polled yet.
    key = code if code is None or code in fmgrwire.TASK_STATES else -1
    return [("tasks", first_seen, key, sign)]


def fmgr_item_deltas(first_seen: float, op: str, code: int | None, sign: int) -> list[Delta]:
    key = code if code is None or code in fmgrwire.ITEM_STATES else -1
    out: list[Delta] = [("items", first_seen, (op, key), sign)]
    outcome = fmgrwire.item_outcome(code)
    if outcome is not None:
        out.append(("outcomes", first_seen, outcome, sign))
    return out


def sum_deltas(deltas: Iterable[Delta], group: object | None = None) -> Counts:
    """label -> sum of the deltas (of ``group`` only, when given)."""
    out: Counts = Counter()
    for g, _, label, delta in deltas:
        if group is None or g == group:
            out[label] += delta  # type: ignore[assignment]  # float rate sums, see windows.Counts
    return out


# ---------------------------------------------------------------------- counters and histograms
@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, float], ...]  # cumulative (upper bound, count), +Inf last
    total: float
    count: float


@dataclass
class Work:
    """The in-memory side of one write transaction: applied by ``Aggregates.apply`` after the commit."""

    tx: Transaction
    incs: dict[CounterKey, float] = field(default_factory=dict)
    cdn: list[Delta] = field(default_factory=list)
    fmgr: list[Delta] = field(default_factory=list)
    pending: int = 0  # change of the pending Fmgr task count
    prunes: list[tuple[str, float]] = field(default_factory=list)  # ("cdn" | "fmgr", forget before)
    # Tasks and items that ended in failure in this transaction: what --log.task-failures logs (the store writes
    # them to failure_log with the transaction, when that is on).
    failures: list[dict[str, Any]] = field(default_factory=list)

    def inc(self, name: str, labels: dict[str, str], delta: float = 1.0) -> None:
        key = (name, labels_key(labels))
        self.incs[key] = self.incs.get(key, 0.0) + delta

    def observe(self, name: str, labels: dict[str, str], value: float, bounds: Sequence[float]) -> None:
        """A histogram observation, kept as persistent counters (``_bucket`` with ``le``, ``_sum``, ``_count``)."""
        for bound in bounds:
            if value <= bound:
                self.inc(name + "_bucket", {**labels, "le": repr(float(bound))})
        self.inc(name + "_bucket", {**labels, "le": "+Inf"})
        self.inc(name + "_sum", labels, value)
        self.inc(name + "_count", labels)

    def counter_rows(self) -> list[tuple[str, str, float]]:
        return [(name, labels, value) for (name, labels), value in self.incs.items()]


class Snapshot:
    """The counters as of one moment (one scrape reads them all from here)."""

    def __init__(self, counters: dict[CounterKey, float]) -> None:
        self._counters = counters

    def counters(self, name: str) -> list[tuple[dict[str, str], float]]:
        """All label sets and values of counter ``name``."""
        return [(dict(labels_of(lab)), v) for (n, lab), v in self._counters.items() if n == name]

    def histogram(self, name: str, labels: dict[str, str], bounds: Sequence[float]) -> Histogram:
        """A cumulative histogram with every bucket present (zeros included)."""
        get = self._counters.get
        buckets = [(b, get((name + "_bucket", labels_key({**labels, "le": repr(float(b))})), 0.0)) for b in bounds]
        buckets.append((float("inf"), get((name + "_bucket", labels_key({**labels, "le": "+Inf"})), 0.0)))
        return Histogram(tuple(buckets), get((name + "_sum", labels_key(labels)), 0.0),
                         get((name + "_count", labels_key(labels)), 0.0))


class Aggregates:
    def __init__(self, cdn_edge: EdgeCounts, fmgr_edge: EdgeCounts) -> None:
        self.cdn_windows = WindowCounter(cdn_edge)
        self.fmgr_windows = WindowCounter(fmgr_edge)
        self._lock = threading.Lock()
        self._counters: dict[CounterKey, float] = {}
        self._pending = 0

    def load(self, counters: Iterable[tuple[str, str, float]],
             cdn_rows: Iterable[tuple[str, str, float, str, float | None]],
             fmgr_tasks: Iterable[tuple[float, int | None]], fmgr_items: Iterable[tuple[float, str, int | None]],
             pending: int) -> None:
        """Rebuild everything from the repository's rows after a (re)start."""
        self.cdn_windows.add_many([d for account, kind, create_ts, status, rate in cdn_rows
                                   for d in cdn_deltas(account, kind, create_ts, status, rate, +1)])
        fchanges = [d for first_seen, code in fmgr_tasks for d in fmgr_task_deltas(first_seen, code, +1)]
        fchanges += [d for first_seen, op, code in fmgr_items for d in fmgr_item_deltas(first_seen, op, code, +1)]
        self.fmgr_windows.add_many(fchanges)
        with self._lock:
            self._counters = {(name, labels): value for name, labels, value in counters}
            self._pending = pending

    def apply(self, work: Work) -> None:
        """A committed transaction's changes, all at once."""
        with self._lock:
            for key, delta in work.incs.items():
                self._counters[key] = self._counters.get(key, 0.0) + delta
            self._pending += work.pending
        if work.cdn:
            self.cdn_windows.add_many(work.cdn)
        if work.fmgr:
            self.fmgr_windows.add_many(work.fmgr)
        for which, before in work.prunes:
            (self.cdn_windows if which == "cdn" else self.fmgr_windows).prune(before)

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(dict(self._counters))

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def set_pending(self, n: int) -> None:
        with self._lock:
            self._pending = n
