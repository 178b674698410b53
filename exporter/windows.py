"""Rolling-window counts kept as per-minute buckets in memory.

A scrape must not cost more as history grows (1M stored tasks), so the store keeps, next to SQLite,
counts per (group, bucket start, label). A window sum then touches at most ``window / bucket`` buckets,
and results are cached until either the store changes or the clock crosses a bucket boundary, which
makes a scrape between two polls O(series).

Windows are evaluated at bucket resolution: window W at time ``now`` covers the buckets whose start lies
in ``(floor(now) - W, floor(now)]`` where ``floor`` rounds down to the bucket size, i.e. the last W
seconds rounded to whole buckets, including the current, partly elapsed one.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

BUCKET_SECONDS = 60


def bucket_of(ts: float, size: int = BUCKET_SECONDS) -> int:
    return int(ts // size) * size


def window_start(now: float, window: float, size: int = BUCKET_SECONDS) -> int:
    """Start (inclusive) of the first bucket that window ``window`` covers at ``now``."""
    return bucket_of(now, size) - int(window // size) * size + size


class WindowCounter:
    """Thread-safe counts by (group, bucket, label) with cached window sums."""

    def __init__(self, bucket_seconds: int = BUCKET_SECONDS) -> None:
        self._size = bucket_seconds
        self._data: dict[Hashable, dict[int, Counter]] = defaultdict(dict)
        self._lock = threading.Lock()
        # Per group, so that a write to one (account, kind) does not invalidate the others' cached sums.
        self._versions: dict[Hashable, int] = defaultdict(int)
        self._cache: dict[tuple, tuple[int, list[Counter]]] = {}

    def add_many(self, changes: Sequence[tuple[Hashable, float, Hashable, float]]) -> None:
        """Apply several (group, ts, label, delta) changes atomically with respect to readers."""
        with self._lock:
            for group, ts, label, delta in changes:
                self._add_locked(group, ts, label, delta)

    def _add_locked(self, group: Hashable, ts: float, label: Hashable, delta: float) -> None:
        buckets = self._data[group]
        b = bucket_of(ts, self._size)
        counter = buckets.get(b)
        if counter is None:
            counter = buckets[b] = Counter()
        counter[label] += delta
        if counter[label] == 0:
            del counter[label]
        self._versions[group] += 1

    def windows(self, group: Hashable, now: float, windows: Sequence[float]) -> list[Counter]:
        """Counter of label -> sum for each window (same order as ``windows``)."""
        current = bucket_of(now, self._size)
        key = (group, current, tuple(windows))
        with self._lock:
            version = self._versions[group]
            cached = self._cache.get(key)
            if cached is not None and cached[0] == version:
                return cached[1]
            buckets = self._data.get(group, {})
            starts = [window_start(now, w, self._size) for w in windows]
            earliest = min(starts) if starts else current
            totals = [Counter() for _ in windows]
            for b, counter in buckets.items():
                if b < earliest or b > current:
                    continue
                for i, start in enumerate(starts):
                    if b >= start:
                        totals[i].update(counter)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[key] = (version, totals)
            return totals

    def prune(self, before: float) -> None:
        """Forget buckets that start before ``before`` (older than any window we serve)."""
        cutoff = bucket_of(before, self._size)
        with self._lock:
            for group, buckets in self._data.items():
                for b in [b for b in buckets if b < cutoff]:
                    del buckets[b]
                self._versions[group] += 1
