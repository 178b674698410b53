"""The range planner's bookkeeping, as pure functions of its state, the clock and what the store holds.

The store is a plain list of (create_ts, url, status, last seen) rows here: the planner only asks it for range
counts and unfinished tasks, and the poller tests and the truth test run the same planner against the real
store and the simulator over HTTP.
"""

from __future__ import annotations

import math

import pytest

from exporter.polling.planner import (
    DAY,
    FILL,
    PROBE_INTERVAL,
    RECHECK_MAX,
    SWEEP_SPAN,
    SWEEP_STATES,
    Planner,
    Read,
    recheck_interval,
    split,
    subtract,
)

T0 = 1795334400


class Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[float, str, str, float]] = []

    def add(self, create: float, status: str = "success", seen: float = T0, url: str | None = None) -> None:
        self.rows.append((create, url or f"u{len(self.rows)}", status, seen))

    def range_count(self, start: float, end: float) -> int:
        return sum(1 for c, _, _, _ in self.rows if start <= c <= end)

    def unfinished(self, start: float, end: float) -> list[tuple[float, str, float, str]]:
        return sorted((c, u, seen, s) for c, u, s, seen in self.rows if s in ("wait", "run") and start <= c <= end)


def planner(**kw) -> Planner:
    args = {"poll_interval": 300.0, "overlap": 300.0, "lookback": DAY, "shortest_window": 900.0,
            "longest_window": DAY, "max_query_age": 3 * DAY, "page_size": 500}
    args.update(kw)
    return Planner(**args)


def answer(p: Planner, now: float, read: Read, count: int) -> str:
    return p.on_answer(now, read, count)


def test_subtract_and_split_are_exact_on_whole_seconds():
    assert subtract([[0, 9]], 3, 5) == [[6, 9], [0, 2]]
    assert subtract([[0, 9], [20, 29]], 5, 25) == [[0, 4], [26, 29]]
    assert subtract([[0, 9]], 10, 20) == [[0, 9]]
    assert subtract([[0, 9]], 0, 9) == []
    pieces = split(100, 199, 3)
    assert pieces[0][1] == 199 and pieces[-1][0] == 100  # newest first
    assert sum(b - a + 1 for a, b in pieces) == 100
    assert all(pieces[i][0] == pieces[i + 1][1] + 1 for i in range(len(pieces) - 1))
    assert split(5, 5, 10) == [[5, 5]]


def test_recheck_interval_grows_with_age_within_bounds():
    assert recheck_interval(60, 300) == 300
    assert recheck_interval(4 * 3600, 300) == 3600
    assert recheck_interval(40 * 3600, 300) == RECHECK_MAX


def test_a_first_start_reads_the_shortest_window_before_history():
    p, store = planner(), Rows()
    read = p.next_read(T0, store, slot=300)
    # The part of the 15m window it still needs after two poll intervals: the head reads then complete it.
    assert (read.purpose, read.start, read.end) == ("recent", T0 - 299, T0)
    assert p.history == [[T0 - DAY + 1, T0 - 300]]
    assert p.lag(T0) == 300
    assert p.backfill_remaining() == DAY - 300


def test_a_dense_range_is_split_newest_first_and_the_lag_follows():
    p, store = planner(), Rows()
    read = p.next_read(T0, store, slot=300)
    assert answer(p, T0, read, 1200) == "split"  # 1,200 tasks do not fit two pages: three pieces of 400
    assert len(p.recent) == 3 and p.recent[0][1] == T0
    assert p.rate == pytest.approx(1200 / 300)
    read = p.next_read(T0 + 1, store, slot=300)
    assert (read.purpose, read.end) == ("recent", T0)
    assert answer(p, T0 + 1, read, 400) == "done"
    assert p.lag(T0 + 1) == pytest.approx(T0 + 1 - (p.recent[-1][0] - 1))


def test_up_to_two_pages_are_paged_through_and_a_changed_count_restarts():
    p, store = planner(), Rows()
    read = p.next_read(T0, store, slot=300)
    assert answer(p, T0, read, 700) == "more" and read.page_no == 2
    assert answer(p, T0, read, 701) == "more" and read.page_no == 1  # the set moved: start over
    assert answer(p, T0, read, 701) == "more" and read.page_no == 2
    assert answer(p, T0, read, 701) == "done" and p.current is None
    assert p.recent == []


def test_the_head_reads_up_to_now_and_reaches_back_only_as_far_as_the_page_allows():
    p, store = planner(), Rows()
    p.begin(T0)
    p.recent, p.history = [], []
    p.rate = 1.0  # FILL * 500 seconds fill a page
    read = p.next_read(T0 + 300, store, slot=300)
    assert read.purpose == "head" and read.end == T0 + 300
    assert read.start == max(T0 + 1 - 300, T0 + 300 - int(0.75 * FILL * 500 / 1.0) + 1)
    answer(p, T0 + 300, read, 300)
    assert p.head == T0 + 300 and p.lag(T0 + 300) == 0


def test_a_head_that_does_not_fit_a_page_leaves_a_recent_hole_and_a_failed_head_is_replanned():
    p, store = planner(), Rows()
    p.begin(T0)
    p.recent, p.history = [], []
    p.rate = 1.0
    read = p.next_read(T0 + 1800, store, slot=300)  # far behind: the newest page first
    assert read.start == T0 + 1800 - int(FILL * 500) + 1
    p.current = read  # the request failed: a head read not started is planned again, up to the new now
    read = p.next_read(T0 + 1900, store, slot=300)
    assert read.end == T0 + 1900
    answer(p, T0 + 1900, read, 400)
    assert p.recent == [[T0 + 1, read.start - 1]]
    assert p.lag(T0 + 1900) == 1900


def test_a_head_a_little_behind_reads_one_full_page_from_its_oldest_second():
    p, store = planner(), Rows()
    p.begin(T0)
    p.recent, p.history = [], []
    p.rate = 1.0
    read = p.next_read(T0 + 600, store, slot=300)  # 600 s behind, more than a page, less than two
    assert (read.start, read.end) == (T0 + 1, T0 + int(FILL * 500))
    answer(p, T0 + 600, read, 400)
    assert p.recent == [] and p.head == read.end
    assert not p.head_due(T0 + 600) and p.head_due(T0 + 900)  # the rest (less than a page) with the next slot
    p.last_head_at = T0  # had it been more than a page, it would be due at once
    p.head = T0 + 100
    assert p.head_due(T0 + 600)


def test_recent_holes_older_than_the_shortest_window_become_history():
    p, store = planner(), Rows()
    p.begin(T0)
    p.next_read(T0 + 2000, store, slot=300)
    assert p.recent == [] or all(b > T0 + 2000 - 900 for _, b in p.recent)
    assert any(a <= T0 - 899 for a, _ in p.history)


def test_at_low_volume_the_head_waits_a_slot_for_maintenance():
    p, store = planner(), Rows()
    p.begin(T0)
    p.recent = []
    p.rate = 0.2  # 60 new tasks a slot: two slots' worth still fit a page
    purposes = []
    now = float(T0)
    for _ in range(8):
        now += 300
        read = p.next_read(now, store, slot=300)
        purposes.append(read.purpose)
        answer(p, now, read, 40000 if read.purpose == "history" and read.end - read.start > 3600 else 60)
        assert p.lag(now) <= 600
    assert purposes.count("head") == 4  # every other slot: the head still within two poll intervals


def test_maintenance_gets_a_share_while_the_head_is_busy_but_never_beyond_the_lag_limit():
    p, store = planner(), Rows()
    p.begin(T0)
    p.recent = []
    p.rate = 1.0  # 300 new tasks a slot: a head that waits a slot no longer fits a page
    purposes = []
    now = float(T0)
    for _ in range(12):
        now += 300
        read = p.next_read(now, store, slot=300)
        purposes.append(read.purpose)
        dense_day = read.purpose == "history" and read.end - read.start > 3600
        # A dense day is split, then read piece by piece; one task a second elsewhere.
        answer(p, now, read, 40000 if dense_day else min(500, read.end - read.start + 1))
        assert p.lag(now) <= 600
    maintenance = [x for x in purposes if x not in ("head", "recent")]
    assert len(maintenance) == 3 and "history" in maintenance  # a quarter of the requests
    assert purposes[0] == "head"
    p2 = planner()
    p2.begin(T0)
    p2.recent, p2.rate, p2.credit = [], 1.0, 1.0
    p2.head = T0 - 400  # 700 s behind: a skipped head would pass two poll intervals
    assert p2.next_read(T0 + 300, store, slot=300).purpose == "head"


def test_young_unfinished_tasks_are_rechecked_as_one_page_sized_cluster_or_by_url():
    p, store = planner(), Rows()
    p.begin(T0 + 800)
    p.recent, p.history = [], []
    now = T0 + 801
    store.add(T0, "wait", seen=T0 + 100, url="lonely")  # the oldest, and due
    read = p.next_read(now, store, slot=300)
    assert (read.purpose, read.start, read.end, read.url) == ("recheck", T0, T0, "lonely")
    p.current = None
    for i in range(10):
        store.add(T0 + 200 + i, "run", seen=T0 + 300)
    read = p.next_read(now, store, slot=300)
    assert (read.purpose, read.start, read.end, read.url) == ("recheck", T0, T0 + 209, None)
    p.current = None
    for i in range(600):  # too many finished tasks in between: the cluster stops where a page would overflow
        store.add(T0 + 1 + i % 199)
    read = p.next_read(now, store, slot=300)
    assert (read.start, read.end, read.url) == (T0, T0, "lonely")


def test_old_unfinished_tasks_are_swept_by_state_and_those_in_no_state_have_succeeded():
    p, store = planner(), Rows()
    now = T0 + 30 * 3600
    p.begin(now)
    p.recent, p.history = [], []
    for i in range(100):  # a hundred stuck tasks: one sweep of three requests covers them all
        store.add(T0 + i * 100, "wait", seen=T0 + 20 * 3600, url=f"stuck{i}")
    states = []
    for step in range(len(SWEEP_STATES)):
        read = p.next_read(now + step, store, slot=300)
        assert read.purpose == "sweep" and read.start == T0 - T0 % SWEEP_SPAN  # the aligned block holding it
        assert read.end == read.start + SWEEP_SPAN - 1
        states.append(read.status)
        if read.status == "wait":  # what the vendor answered: all but three still waiting, seen now
            store.rows = [(c, u, s, now) if u not in ("stuck3", "stuck50", "stuck77") else (c, u, s, seen)
                          for c, u, s, seen in store.rows]
        assert answer(p, now + step, read, 97 if read.status == "wait" else 0) == "done"
        assert (p.sweep_done(store) is None) == (step < len(SWEEP_STATES) - 1)
    assert states == ["wait", "run", "failure"]  # a task moving on between two answers is seen once
    p2 = planner()
    p2.sweep = [T0 - T0 % SWEEP_SPAN, T0 - T0 % SWEEP_SPAN + SWEEP_SPAN - 1, math.floor(now), len(SWEEP_STATES)]
    assert sorted(u for _, u in p2.sweep_done(store)) == ["stuck3", "stuck50", "stuck77"]


def test_a_probe_that_counts_more_than_the_store_holds_is_narrowed_down_and_read_again():
    p, store = planner(), Rows()
    p.begin(T0)
    p.recent, p.history = [], []
    for i in range(0, 20000, 10):
        store.add(T0 - 20000 + i)
    now = T0 + PROBE_INTERVAL
    p.head = math.floor(now)
    p.last_head_at = now
    read = p.next_read(now, store, slot=300)
    assert read.purpose == "probe" and read.count_only
    assert answer(p, now, read, read.stored + 3) == "done"
    assert p.suspects and p.suspects[0][2] == 3
    seen = 0
    while p.suspects and seen < 30:
        read = p.next_read(now, store, slot=300)
        if read is None or read.purpose != "suspect":
            break
        # The three late tasks are all in the newer half, whatever range is asked.
        answer(p, now, read, read.stored + 3)
        seen += 1
    assert p.history and p.suspects == []
    a, b = p.history[0]
    assert store.range_count(a, b) + 3 <= FILL * 500
    assert seen <= math.ceil(math.log2(20000 / 450)) + 2  # halving: a few counts, not a re-read of the day


def test_a_maintenance_read_between_pages_waits_while_the_newest_tasks_are_due():
    p, store = planner(), Rows()
    now = T0 + 30 * 3600
    p.begin(now)
    p.recent, p.history = [], []
    store.add(T0, "wait", seen=T0, url="old")
    read = p.next_read(now, store, slot=300)
    assert read.purpose == "sweep"
    assert answer(p, now, read, 1200) == "more"  # three pages to go
    p.rate = 0.5
    later = now + 600  # the newest tasks are 10 minutes behind: one more slot would pass the lag limit
    head = p.next_read(later, store, slot=300)
    assert head.purpose == "head" and p.paused is read
    answer(p, later, head, 400)
    p.credit = 1.0
    resumed = p.next_read(later + 300, store, slot=300)
    assert resumed is read and resumed.page_no == 2
