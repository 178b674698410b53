"""Window maths: exact (now - W, now] windows from minute buckets plus exact edge counts, caching, pruning."""

import random
from collections import Counter

import pytest

from exporter.metrics.windows import BUCKET_SECONDS, WindowCounter, bucket_end, window_start

T0 = 1795334400.0  # on a minute boundary


class Entries:
    """The ground truth a store keeps next to its counter: every (group, ts, label, delta) ever added, and
    the exact count of a range computed from them (the role of the store's indexed query)."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []
        self.calls: list[tuple] = []

    def add(self, wc: WindowCounter, changes: list[tuple]) -> None:
        self.rows.extend(changes)
        wc.add_many(changes)

    def edge(self, group, after, until) -> Counter:
        self.calls.append((group, after, until))
        return self.exact(group, after, until)

    def exact(self, group, after, until) -> Counter:
        out: Counter = Counter()
        for g, ts, label, delta in self.rows:
            if g == group and after < ts <= until:
                out[label] += delta
        return Counter({k: v for k, v in out.items() if v != 0})


@pytest.fixture
def entries():
    return Entries()


@pytest.fixture
def wc(entries):
    return WindowCounter(entries.edge)


def test_bucket_end_and_window_start():
    assert bucket_end(T0) == T0  # buckets are (end - 60, end], like windows
    assert bucket_end(T0 + 0.001) == T0 + 60
    assert bucket_end(T0 + 59.9) == T0 + 60
    assert bucket_end(T0 - 1) == T0
    # (now - W, now] in whole seconds: at 10:07:30 the 15m window starts at 09:52:31, not 09:53:00.
    assert window_start(T0 + 30, 900) == T0 + 30 - 900 + 1
    assert window_start(T0 + 30.5, 900) == T0 + 30 - 900 + 1
    assert window_start(T0, 60) == T0 - 59


def test_window_edges_are_exact_to_the_second(wc, entries):
    # One entry every second for two hours; each second carries a distinct count so an off-by-one shows.
    entries.add(wc, [("g", T0 - 7200 + s, "a", s + 1) for s in range(7200)])
    for now in (T0 - 1800 + 30, T0 - 1, T0 - 60, T0 - 60 + 0.5, T0 - 3599.25):
        for w in (1, 30, 60, 61, 900, 3600):
            (got,) = wc.windows("g", now, [w])
            assert got == entries.exact("g", now - w, now), (now, w)


def test_exactly_at_now_minus_w_is_out_and_exactly_at_now_is_in(wc, entries):
    now = T0 + 450  # 08:07:30
    entries.add(wc, [("g", now - 900, "edge_out", 1), ("g", now - 899, "first_in", 1), ("g", now, "now", 1),
                     ("g", now + 1, "future", 1)])
    (w15,) = wc.windows("g", now, [900])
    assert w15 == Counter({"first_in": 1, "now": 1})


def test_sums_per_window_and_label(wc, entries):
    entries.add(wc, [("g", T0 - 30 * 60, "a", 1), ("g", T0 - 5 * 60, "a", 2), ("g", T0, "b", 1),
                     ("h", T0, "a", 9)])
    w15, w1h = wc.windows("g", T0 + 1, [900, 3600])
    assert w15 == Counter({"a": 2, "b": 1})
    assert w1h == Counter({"a": 3, "b": 1})


def test_whole_minutes_need_no_edge_query(wc, entries):
    entries.add(wc, [("g", T0 - 600 + s * 7, "a", 1) for s in range(80)])
    wc.windows("g", T0, [300, 900])  # both edges on minute boundaries
    assert entries.calls == []
    # The bucket of now is whole when nothing in it is newer than now: only the old edge is asked for.
    wc.windows("g", T0 + 20, [300])
    assert entries.calls == [("g", T0 + 20 - 300, T0 - 240)]


def test_random_entries_and_clocks_match_the_exact_count(wc, entries):
    rng = random.Random(5)
    changes = [("g", T0 - rng.random() * 7200, rng.choice("abc"), rng.choice((1, 1, 2, 0.5)))
               for _ in range(3000)]
    entries.add(wc, changes)
    # Moves between labels, as a task changing status: the old label loses what the new one gains.
    entries.add(wc, [c for g, ts, _, d in changes[:500] for c in ((g, ts, "a", -d), (g, ts, "z", d))])
    for _ in range(200):
        now = T0 - rng.random() * 3600
        ws = [rng.choice((30, 60, 90, 900, 3600)), 86400]
        for w, got in zip(ws, wc.windows("g", now, ws), strict=True):
            want = entries.exact("g", now - w, now)
            assert set(got) == set(want) and all(abs(got[k] - want[k]) < 1e-9 for k in want), (now, w)


def test_cache_follows_writes_to_its_group_and_the_clock(wc, entries):
    entries.add(wc, [("g", T0, "a", 1)])
    assert wc.windows("g", T0, [900])[0]["a"] == 1
    entries.add(wc, [("g", T0, "a", 1), ("other", T0, "a", 5)])
    assert wc.windows("g", T0, [900])[0]["a"] == 2  # a write to the group invalidates its cached sum
    assert wc.windows("g", T0 + 899, [900])[0]["a"] == 2
    assert wc.windows("g", T0 + 900, [900])[0]["a"] == 0  # and time moving past it, to the second
    entries.add(wc, [("g", T0 - 30, "b", 1), ("g", T0 - 2740, "c", 1), ("g", T0 - 2720, "c", 1)])
    calls = len(entries.calls)
    assert wc.windows("g", T0 + 870.5, [900, 3600]) == [Counter({"a": 2}), Counter({"a": 2, "b": 1, "c": 1})]
    wc.windows("g", T0 + 870.5, [900, 3600])  # the same scrape again: served from the cache
    # One edge query: the 1h edge splits the old minute ending at T0 - 2700; the 15m edge splits the newest
    # minute, which keeps per-second counts and needs none.
    assert entries.calls[calls:] == [("g", T0 + 870.5 - 3600, T0 - 2700)]


def test_moves_between_labels_and_zero_entries_disappear(wc, entries):
    entries.add(wc, [("g", T0, "wait", 1)])
    entries.add(wc, [("g", T0, "wait", -1), ("g", T0, "success", 1)])
    assert wc.windows("g", T0, [60])[0] == Counter({"success": 1})
    assert "wait" not in wc.windows("g", T0 + 30, [45])[0]


def test_prune_forgets_old_buckets(wc, entries):
    entries.add(wc, [("g", T0 - 7200, "a", 1), ("g", T0, "a", 1)])
    wc.prune(T0 - 3600)
    assert wc.windows("g", T0, [86400])[0]["a"] == 1


def test_bucket_size_is_a_minute():
    assert BUCKET_SECONDS == 60


def test_sums_slide_with_the_clock_and_stay_exact(wc, entries):
    """The clock walks forward (as between scrapes), the minute turns, writes land now and then: the sums slid
    from the previous minute's must equal a fresh exact count every time."""
    entries.add(wc, [("g", T0 - 3 * 3600 + s * 10, "ab"[s % 2], 1 + s % 3) for s in range(1080)])
    now = T0 - 7200 + 0.5
    for step in range(300):
        now += 23.7
        if step % 37 == 0:
            entries.add(wc, [("g", now - 1000, "c", 1), ("g", now - 30, "a", 1)])
        ws = [900, 3600, 86400]
        for w, got in zip(ws, wc.windows("g", now, ws), strict=True):
            assert got == entries.exact("g", now - w, now), (now - T0, w)


def test_a_burst_newer_than_now_costs_a_second_of_rows_not_a_minute(wc, entries):
    """Notifications stored while a scrape renders are later than its ``now``: the bucket of now is then summed
    from its whole seconds, and only the second holding ``now`` is counted from the rows."""
    ts = T0 - 0.013
    for step in range(1500):  # 150 s at 10 entries a second (float timestamps, as notification receipt times)
        ts += 0.1
        entries.add(wc, [("g", ts, "ok" if step % 7 else "failed", 1)])
        if step % 23 == 0:
            now = ts - 0.25  # the scrape started a little before the last write
            before = len(entries.calls)
            got = wc.windows("g", now, [60, 900])
            assert got == [entries.exact("g", now - w, now) for w in (60, 900)], step
            for _, after, until in entries.calls[before:]:
                if until > bucket_end(now) - BUCKET_SECONDS:  # a query inside the bucket of now
                    assert until - after <= 1, (step, after - T0, until - T0)
    # Per-second counts are kept by the two newest minutes only, not by every minute the stream went through.
    assert sorted(end for end, b in wc._data["g"].items() if b.fine is not None) == [T0 + 120, T0 + 180]


def test_per_second_counts_stay_exact_under_late_old_and_future_writes(entries):
    """A live stream with scrapes just behind it, writes for old timestamps (status changes of old tasks, moving
    between labels), and now and then a timestamp far ahead (clock skew) that makes another minute the newest:
    every window equals the exact count."""
    rng = random.Random(11)
    wc = WindowCounter(entries.edge)
    live = T0
    for step in range(2500):
        live += rng.random() * 0.5
        roll = rng.random()
        if roll < 0.05:
            old = live - rng.random() * 3000
            entries.add(wc, [("g", old, "a", 1)])
            entries.add(wc, [("g", old, "a", -1), ("g", old, "b", 1)])
        elif roll < 0.06:
            entries.add(wc, [("g", live + rng.choice((61, 200, 3600)), "skew", 1)])
        else:
            entries.add(wc, [("g", live, rng.choice("ab"), rng.choice((1, 2)))])
        if step % 17 == 0:
            now = live - rng.choice((0, 0.3, 1.5, 59, 75))
            ws = [rng.choice((30, 60, 61, 300)), 3600]
            for w, got in zip(ws, wc.windows("g", now, ws), strict=True):
                assert got == entries.exact("g", now - w, now), (step, now - T0, w)
