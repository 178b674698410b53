"""The exporter's own view of the vendor APIs: request results, latency, up, last success, lag.

Kept in memory (like any exporter's self-metrics): counters restart at zero with the process, which
Prometheus' ``rate()`` handles as a counter reset.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from exporter.metrics.catalogue import API_REQUEST_DURATION

# Results of one vendor call; a bounded label set.
RESULTS = ("ok", "bad_request", "auth", "rate_limited", "server_error", "timeout", "malformed", "not_found",
           "connection", "too_large", "unknown")
DURATION_BUCKETS = API_REQUEST_DURATION.buckets


@dataclass
class _Hist:
    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0


class ApiHealth:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._durations: dict[str, _Hist] = defaultdict(_Hist)
        self._up: dict[tuple[str, str], int] = {}
        self._last_ok: dict[tuple[str, str], float] = {}
        self._lag: dict[tuple[str, str], float] = {}
        self._backfill: dict[tuple[str, str], float] = {}
        self._oldest_read: dict[tuple[str, str], float | None] = {}
        self.apis: set[str] = set()

    def declare(self, account: str, api: str, *, up: bool = True) -> None:
        """Make the series of a configured (account, api) exist before its first poll (known values start at
        0). ``up=False`` only registers the API's request counters: for an API polled on demand (Fmgr), 0 before
        any poll would read as "failing" when there was simply nothing to ask."""
        with self._lock:
            self.apis.add(api)
            if up:
                self._up.setdefault((account, api), 0)

    def retain(self, pairs: set[tuple[str, str]]) -> None:
        """After a reload: forget up/last-poll/lag of (account, api) pairs no longer configured, so a
        removed account's frozen timestamp does not look like a poller that stopped."""
        with self._lock:
            for table in (self._up, self._last_ok, self._lag, self._backfill, self._oldest_read):
                for key in [k for k in table if k not in pairs]:
                    del table[key]

    def observe_request(self, api: str, result: str, seconds: float) -> None:
        with self._lock:
            self.apis.add(api)
            self._requests[(api, result if result in RESULTS else "unknown")] += 1
            h = self._durations[api]
            for i, bound in enumerate(DURATION_BUCKETS):
                if seconds <= bound:
                    h.counts[i] += 1
                    break
            else:
                h.counts[-1] += 1
            h.total += seconds
            h.n += 1

    def poll_result(self, account: str, api: str, ok: bool, now: float) -> None:
        with self._lock:
            self._up[(account, api)] = 1 if ok else 0
            if ok:
                self._last_ok[(account, api)] = now

    def restore_last_ok(self, account: str, api: str, ts: float) -> None:
        """The last success of a poller that another replica (or an earlier run) ran: its series goes on from
        there rather than from this process's own, older or absent, memory of it."""
        with self._lock:
            if ts > self._last_ok.get((account, api), 0.0):
                self._last_ok[(account, api)] = ts

    def set_lag(self, account: str, api: str, seconds: float) -> None:
        with self._lock:
            self._lag[(account, api)] = max(0.0, seconds)

    def set_oldest_read(self, account: str, api: str, ts: float | None) -> None:
        """When the least recently read of the tasks shown unfinished was last read (None: none unfinished)."""
        with self._lock:
            self._oldest_read[(account, api)] = ts

    def staleness(self, now: float) -> dict[tuple[str, str], float]:
        """Per (account, api): how long ago the least recently read unfinished task was read, at ``now``."""
        with self._lock:
            return {k: 0.0 if ts is None else max(0.0, now - ts) for k, ts in self._oldest_read.items()}

    def set_backfill(self, account: str, api: str, seconds: float) -> None:
        with self._lock:
            self._backfill[(account, api)] = max(0.0, seconds)

    # Snapshots for the collector (copies, so a scrape never holds the lock while rendering).
    def requests(self) -> dict[tuple[str, str], int]:
        with self._lock:
            out = dict(self._requests)
            for api in self.apis:
                for result in RESULTS:
                    out.setdefault((api, result), 0)
            return out

    def durations(self) -> dict[str, tuple[list[tuple[float, int]], float, int]]:
        """api -> (cumulative buckets incl. +Inf, sum, count)."""
        with self._lock:
            out = {}
            for api in self.apis:
                h = self._durations[api]
                cum, buckets = 0, []
                for bound, c in zip((*DURATION_BUCKETS, float("inf")), h.counts, strict=True):
                    cum += c
                    buckets.append((bound, cum))
                out[api] = (buckets, h.total, h.n)
            return out

    def up(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._up)

    def last_ok(self) -> dict[tuple[str, str], float]:
        with self._lock:
            return dict(self._last_ok)

    def lag(self) -> dict[tuple[str, str], float]:
        with self._lock:
            return dict(self._lag)

    def backfill(self) -> dict[tuple[str, str], float]:
        with self._lock:
            return dict(self._backfill)
