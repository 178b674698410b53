"""Rolling-window counts, exact to the timestamp, at a cost independent of the number of stored tasks.

A window ``W`` at ``now`` covers exactly the timestamps in ``(now - W, now]``: what the vendor console shows
for "the last 15 minutes" (CDN createTimes are whole seconds, so that is exact to the second). Rounding the
window to whole minutes made a 15m gauge up to 60 s short, about 3% on average.

A scrape must not cost more as history grows (1M stored tasks), so next to SQLite the store keeps counts
per (group, minute bucket, label) in memory. A window then splits into

* the interior: whole buckets inside the window, summed from memory (cached until the group changes; when
  the clock enters another minute, the buckets that entered and left are added and taken out);
* at most two partial buckets at the edges, the one holding ``now - W`` and the one holding ``now``. A
  partial bucket counts whole from memory when every timestamp it ever held lies inside the window (the
  usual case for the bucket of ``now``: tasks are not created in the future), else it is counted exactly by
  the ``edge`` callback, an indexed range query over at most one minute of rows.
* the newest buckets (the latest minute of each group and the one before it) also keep their counts per
  second. While notifications arrive, the bucket of ``now`` nearly always holds a timestamp later than a
  scrape's ``now`` (one stored while the scrape renders); it is then summed from its whole seconds and only
  the second holding ``now`` is counted by ``edge``: a second of rows instead of a minute (at 1,400
  notifications/s the minute was 16,000 item rows, and one scrape in ten cost 100 ms).

So a scrape reads at most ``2 x windows`` minutes of rows per group, whatever the history holds (while the
newest minute is written to, a second of rows for it), and a scrape that repeats the same ``now`` with nothing
written in between is served from a cache.

Buckets are right-closed, ``(end - size, end]``, keyed by their end, like the windows: a window whose
edges fall on minute boundaries (``now`` on a minute, ``W`` whole minutes) needs no edge query at all.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence

BUCKET_SECONDS = 60
_SLIDE_MAX = 30  # minutes the clock may move for the window sums to be slid rather than summed afresh

# label -> sum of the deltas added under it. Counts are ints except the CDN rate sums (a Counter takes any
# number; typeshed declares its values as int, hence the one ``type: ignore`` where a delta is added).
Counts = Counter[Hashable]
# (group, ts, label, delta): one change to the counts
Delta = tuple[Hashable, float, Hashable, float]
# counts(group, after, until) -> label -> sum over the entries of ``group`` with after < ts <= until.
EdgeCounts = Callable[[Hashable, float, float], Counts]
# (group, top bucket, the low edge bucket of each window): the key of a window set's interior sums.
InteriorKey = tuple[Hashable, int, tuple[int, ...]]


def bucket_end(ts: float, size: int = BUCKET_SECONDS) -> int:
    """End (inclusive) of the bucket ``(end - size, end]`` that holds ``ts``."""
    return math.ceil(ts / size) * size


def window_start(now: float, window: float) -> int:
    """First whole second inside window ``window`` at ``now``, i.e. the inclusive start of ``(now - W, now]``
    for second-resolution timestamps (what the vendor's ``startTime`` means)."""
    return math.floor(now - window) + 1


class _Bucket:
    __slots__ = ("counts", "fine", "hi", "lo")

    def __init__(self, fine: bool = False) -> None:
        self.counts: Counts = Counter()
        # Bounds of every timestamp ever added here (never narrowed): enough to tell when the bucket
        # lies wholly inside or outside a window, so that it needs no exact count.
        self.lo = math.inf
        self.hi = -math.inf
        # The same counts per second, (end - 1, end] keyed by end; kept only by the newest buckets, and only
        # by a bucket that had them from its first entry (so that they always hold all of it).
        self.fine: dict[int, _Bucket] | None = {} if fine else None

    def add(self, ts: float, label: Hashable, delta: float) -> None:
        if ts < self.lo:
            self.lo = ts
        if ts > self.hi:
            self.hi = ts
        counter = self.counts
        counter[label] += delta  # type: ignore[assignment]  # float rate sums, see Counts
        if counter[label] == 0:
            del counter[label]
        if self.fine is not None:
            end = math.ceil(ts)
            second = self.fine.get(end)
            if second is None:
                second = self.fine[end] = _Bucket()
            second.add(ts, label, delta)

    def split(self, lo: float, hi: float, whole: list[Counts], exact: list[tuple[float, float]],
              start: float, end: float) -> None:
        """What of this bucket, which covers ``(start, end]``, lies in ``(lo, hi]``: counts known from memory go
        to ``whole``, ranges that need an exact count from the rows to ``exact``."""
        if self.hi <= lo or self.lo > hi:
            return  # nothing of it inside
        if self.lo > lo and self.hi <= hi:
            whole.append(self.counts)  # wholly inside
        elif self.fine is not None:
            for second_end, second in self.fine.items():
                second.split(lo, hi, whole, exact, second_end - 1, second_end)
        else:
            exact.append((max(lo, start), min(hi, end)))


class WindowCounter:
    """Thread-safe counts by (group, bucket, label) with exact window sums.

    ``edge`` must count exactly what was added for ``group`` in a time range (the store queries the rows the
    deltas were made from); it is called without this counter's lock held.
    """

    def __init__(self, edge: EdgeCounts, bucket_seconds: int = BUCKET_SECONDS) -> None:
        self._edge = edge
        self._size = bucket_seconds
        self._data: dict[Hashable, dict[int, _Bucket]] = defaultdict(dict)
        # Per group, the end of its newest bucket: that bucket and the one before it keep per-second counts.
        self._newest: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        # Per group, so that a write to one (account, kind) does not invalidate the others' cached sums.
        self._versions: dict[Hashable, int] = defaultdict(int)
        self._interior: dict[InteriorKey, tuple[int, list[Counts]]] = {}
        # The last interior computed per (group, number of windows): slid forward when the minute turns.
        self._last_interior: dict[tuple[Hashable, int], tuple[int, int, tuple[int, ...], list[Counts]]] = {}
        # (group, now, windows) -> the answer of windows()
        self._results: dict[tuple[Hashable, float, tuple[float, ...]], tuple[int, list[Counts]]] = {}

    def add_many(self, changes: Sequence[Delta]) -> None:
        """Apply several (group, ts, label, delta) changes atomically with respect to readers."""
        with self._lock:
            for group, ts, label, delta in changes:
                self._add_locked(group, ts, label, delta)

    def _add_locked(self, group: Hashable, ts: float, label: Hashable, delta: float) -> None:
        buckets = self._data[group]
        end = bucket_end(ts, self._size)
        bucket = buckets.get(end)
        if bucket is None:
            bucket = buckets[end] = self._new_bucket_locked(group, buckets, end)
        bucket.add(ts, label, delta)
        self._versions[group] += 1

    def _new_bucket_locked(self, group: Hashable, buckets: dict[int, _Bucket], end: int) -> _Bucket:
        """A bucket for ``end``, with per-second counts when it is among the group's two newest minutes."""
        size = self._size
        newest = self._newest.setdefault(group, end)
        if end > newest:
            for old in (newest - size, newest):  # the buckets that kept per-second counts until now
                if old < end - size and old in buckets:
                    buckets[old].fine = None  # no longer the bucket of a scrape's now
            self._newest[group] = newest = end
        return _Bucket(fine=end >= newest - size)

    def windows(self, group: Hashable, now: float, windows: Sequence[float]) -> list[Counts]:
        """Counter of label -> sum over ``(now - w, now]`` for each ``w`` in ``windows`` (same order)."""
        size = self._size
        edges = [(now - w, bucket_end(now - w, size)) for w in windows]
        top = bucket_end(now, size)
        result_key = (group, now, tuple(windows))
        interior_key: InteriorKey = (group, top, tuple(end for _, end in edges))
        with self._lock:
            version = self._versions[group]
            cached = self._results.get(result_key)
            if cached is not None and cached[0] == version:
                return cached[1]
            buckets = self._data.get(group, {})
            interior = self._interior_locked(group, version, interior_key, buckets)
            totals = [Counter(c) for c in interior]
            queries: list[tuple[int, float, float]] = []  # (window index, after, until)
            for i, (after, low_end) in enumerate(edges):
                # The partial buckets at the edges: (after, low_end] and (top - size, now], or (after, now]
                # when the window starts and ends in the same bucket.
                parts = [(low_end, after, now)] if low_end == top else [(low_end, after, low_end),
                                                                          (top, top - size, now)]
                for end, lo, hi in parts:
                    bucket = buckets.get(end)
                    if bucket is None:
                        continue
                    whole: list[Counts] = []
                    ranges: list[tuple[float, float]] = []
                    bucket.split(lo, hi, whole, ranges, end - size, end)
                    for counts in whole:
                        totals[i].update(counts)
                    queries.extend((i, a, b) for a, b in ranges)
        exact: dict[tuple[float, float], Counts] = {}
        for i, lo, hi in queries:
            if (lo, hi) not in exact:  # the bucket of now is shared by every window
                exact[(lo, hi)] = self._edge(group, lo, hi)
            totals[i].update(exact[(lo, hi)])
        for counter in totals:
            for label in [k for k, v in counter.items() if v == 0]:
                del counter[label]
        with self._lock:
            if self._versions[group] == version:  # else a write landed meanwhile: do not keep this answer
                if len(self._results) > 256:
                    self._results.clear()
                self._results[result_key] = (version, totals)
        return totals

    def _interior_locked(self, group: Hashable, version: int, key: InteriorKey,
                         buckets: dict[int, _Bucket]) -> list[Counts]:
        """Per window, the sum of the buckets strictly between its two edge buckets."""
        cached = self._interior.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        top, lows = key[1], key[2]
        last = self._last_interior.get((group, len(lows)))
        if last is not None and last[0] == version and abs(top - last[1]) <= _SLIDE_MAX * self._size:
            sums = self._slide(buckets, last[1], last[2], last[3], top, lows)
        else:
            earliest = min(lows, default=top)
            sums = [Counter() for _ in lows]
            for end, bucket in buckets.items():
                if end <= earliest or end >= top:
                    continue
                for i, low_end in enumerate(lows):
                    if end > low_end:
                        sums[i].update(bucket.counts)
        if len(self._interior) > 256:
            self._interior.clear()
        self._interior[key] = (version, sums)
        self._last_interior[(group, len(lows))] = (version, top, lows, sums)
        return sums

    def _slide(self, buckets: dict[int, _Bucket], old_top: int, old_lows: tuple[int, ...], old_sums: list[Counts],
               top: int, lows: tuple[int, ...]) -> list[Counts]:
        """The interior sums after the clock moved a few minutes: add the buckets that entered a window and
        take out those that left it, instead of summing a day of buckets again."""
        size = self._size
        out = []
        for old_low, old, low in zip(old_lows, old_sums, lows, strict=True):
            new = Counter(old)
            # Every bucket inside one range and not the other lies between the two lows or the two tops.
            candidates = {*range(min(low, old_low) + size, max(low, old_low) + size, size),
                          *range(min(top, old_top), max(top, old_top), size)}
            for end in candidates:
                bucket = buckets.get(end)
                if bucket is None:
                    continue
                inside, was_inside = low < end < top, old_low < end < old_top
                if inside and not was_inside:
                    new.update(bucket.counts)
                elif was_inside and not inside:
                    new.subtract(bucket.counts)
            for label in [k for k, v in new.items() if v == 0]:
                del new[label]
            out.append(new)
        return out

    def prune(self, before: float) -> None:
        """Forget buckets that end before ``before`` (older than any window we serve)."""
        with self._lock:
            for group, buckets in self._data.items():
                for end in [end for end in buckets if end < before]:
                    del buckets[end]
                self._versions[group] += 1
