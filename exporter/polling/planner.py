"""Which range of CDN tasks to read next: one request at a time, freshest first, within the vendor's budget.

The vendor answers a query with ``count`` (every match) and one page of rows; a request costs the same
whether it carries 1 row or a full page. So the planner works in *time ranges sized to fit one page*
(``FILL`` of it, from the observed task rate), never in "every page of a day", and chooses each request
by what it buys:

1. **head**: ``(S, now]``, the tasks created since the last read (S is the head point). When it does not
   fit a page, one full page from its oldest second (the rest follows at the next slot); when it is more
   than four pages behind (an outage), its newest page first and the rest becomes a *recent hole*. A head
   read that leaves room in its page reaches back over ``overlap`` to re-read the newest tasks (most are
   still unfinished at their first read, and a task may become visible a little late).
2. **recent holes**, newest first (at a first start, the part of the shortest window the next two head
   reads cannot give).
3. **maintenance**: every other slot while the head still fits a page a slot later, otherwise on a share
   of the requests (``MAINTENANCE_SHARE``), never pushing the head past ``LAG_LIMIT_INTERVALS`` poll
   intervals behind. Turns between *re-checks* of unfinished tasks (young ones as page-sized ranges or one
   ``url`` query; older ones by *sweeps* that ask for the states ``SWEEP_STATES`` over a 4-hour block: a
   task stored unfinished in no answer has succeeded), *late tasks* (``pageSize: 1`` counts of ranges
   already read, the newest two hours every half hour and every day of the longest window every six
   hours; a count above what the store holds makes a *suspect* range, halved until it fits a page and is
   read again) and *history* back-fill, newest day first.

Order of rows within an answer does not matter: a range is read whole when its ``count`` fits a page (or
two pages, paged through and read again from page 1 if its count changes meanwhile), and split in time
when it holds more.

Everything here is pure bookkeeping on whole seconds; the poller does the I/O.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from exporter.polling.pagesize import PageSize

FILL = 0.85  # plan a range to 85% of a page: counts vary (Poisson, bursts, late tasks); an overflow costs a slot
MAINTENANCE_SHARE = 0.25  # of the requests while the head is busy, for re-checks, probes and back-fill
LAG_LIMIT_INTERVALS = 2  # maintenance never pushes the head further behind than this many poll intervals
PROBE_INTERVAL = 1800.0  # how often the newest read range is checked for tasks that became visible late
PROBE_SPAN = 2 * 3600  # ... that range: where late tasks land; small, so a mismatch is found in a few halvings
DEEP_PROBE_INTERVAL = 6 * 3600.0  # how often every read day within the longest window is checked
RECHECK_MAX = 2 * 3600.0  # an unfinished task is due for a re-read at least this often (within the API's reach)
YOUNG = 900  # unfinished tasks younger than this are re-read by range; older ones by status sweeps
# A sweep asks for these states, one query each, in this order (a task moving on between two queries is then
# still seen once); a task stored as waiting or running that is in none of the answers has succeeded. ("init",
# which the API accepts as a filter, is not asked: a task seen waiting or running does not go back to it, and
# a task stored with a status the documents do not list is never taken as succeeded.)
SWEEP_STATES = ("wait", "run", "failure")
SWEEP_EVERY = 900.0  # a task old enough to be swept is due at most this often (a sweep costs three requests)
SWEEP_SPAN = 4 * 3600  # failures are ~5% of tasks: at 100k a day, 4 hours of them fill about two pages
DAY = 86400
# When the budget gives at least this many requests per poll interval, the newest tasks are read the moment
# they are due and re-reads are spaced to fit the budget (``_reread_plan``); below it (the published budget of
# 1 request per 5 minutes) every request is weighed against the head as before.
SPACED_MIN_CAPACITY = 2.0
HISTORY_SHARE = 0.3  # of the requests while history is unread: the longest window fills at a known pace
REREAD_SHARE = 0.9  # of what is left after the head and history: a margin for probes and page-size probes
MAX_SPACING = 0.25  # the most stretched re-read interval is a quarter of a task's age (today's published spacing)


class StoreView(Protocol):
    def range_count(self, start: float, end: float) -> int: ...
    def unfinished(self, start: float, end: float) -> list[tuple[float, str, float, str]]: ...


@dataclass
class Read:
    """One range query in progress; ``[start, end]`` are inclusive whole seconds of createTime."""

    start: int
    end: int
    purpose: str  # head | recent | history | recheck | sweep | probe | suspect
    url: str | None = None
    status: str | None = None  # sweeps: only the tasks in this state
    page_no: int = 1
    count: int | None = None  # the vendor's count on the first page (paging restarts if it changes)
    stored: int | None = None  # probes: what the store held for the range when the probe was sent
    diff: int = 0  # suspects: how many tasks the vendor has there that the store lacks
    parent_start: int | None = None  # suspects: where the range being narrowed down starts
    truncated: bool = False  # heads: stopped a page short of now, so the next head read is due at once

    @property
    def count_only(self) -> bool:
        return self.purpose in ("probe", "suspect")


def recheck_interval(age: float, poll_interval: float) -> float:
    """How long an unfinished task may go unread: young tasks change fast, old stuck ones rarely."""
    return min(RECHECK_MAX, max(poll_interval, age / 4))


def spaced_interval(age: float, poll_interval: float, spacing: float) -> float:
    """How long an unfinished task of ``age`` may go unread when the budget allows re-reads ``spacing``
    (0: every poll interval; up to ``MAX_SPACING``, a quarter of its age)."""
    return max(poll_interval, min(RECHECK_MAX, spacing * age))


@dataclass(frozen=True)
class Part:
    """A page-sized createTime range holding unfinished tasks, re-read as a whole (every task in it, due or
    not: a request costs the same with 1 row or a full page); ``url`` when one second alone fills a page."""

    start: int
    end: int
    due: float  # when its most overdue task is due
    url: str | None = None


def fit_spacing(ages: list[float], poll_interval: float, capacity: float) -> float | None:
    """The smallest spacing (0..MAX_SPACING) at which re-reading parts of these ages costs at most
    ``capacity`` requests per poll interval; None when even the widest spacing does not fit."""
    def demand(spacing: float) -> float:
        return sum(poll_interval / spaced_interval(a, poll_interval, spacing) for a in ages)

    if demand(0.0) <= capacity:
        return 0.0
    if demand(MAX_SPACING) > capacity:
        return None
    lo, hi = 0.0, MAX_SPACING
    for _ in range(24):
        mid = (lo + hi) / 2
        if demand(mid) <= capacity:
            hi = mid
        else:
            lo = mid
    return hi


def last_fitting(store: StoreView, c0: int, creates: list[float], lo: int, hi: int, limit: float) -> int:
    """The largest index in ``[lo, hi]`` of the sorted ``creates`` whose range from ``c0`` spans less than a day and
    holds at most ``limit`` stored tasks (``lo``, which the caller knows fits, when no later one does)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        c = math.floor(creates[mid])
        if c - c0 < DAY and store.range_count(c0, c) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def subtract(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    """``ranges`` minus ``[start, end]`` (inclusive integer ranges; order kept)."""
    out: list[list[int]] = []
    for a, b in ranges:
        if b < start or a > end:
            out.append([a, b])
            continue
        if b > end:
            out.append([end + 1, b])
        if a < start:
            out.append([a, start - 1])
    return out


def split(start: int, end: int, pieces: int) -> list[list[int]]:
    """``[start, end]`` in ``pieces`` near-equal whole-second ranges, newest first."""
    span = end - start + 1
    pieces = max(1, min(pieces, span))
    out = []
    for i in range(pieces):
        a = start + span * i // pieces
        b = start + span * (i + 1) // pieces - 1
        out.append([a, b])
    out.reverse()
    return out


@dataclass
class Planner:
    poll_interval: float
    overlap: float
    lookback: float
    shortest_window: float
    longest_window: float
    max_query_age: float
    page_size: int = 100
    pages: PageSize | None = None  # the search for the vendor's page-size cap (None: page_size is fixed)
    head: int | None = None  # every task created up to here was read once, except inside the holes
    recent: list[list[int]] = field(default_factory=list)  # unread, newest first; counts as lag
    history: list[list[int]] = field(default_factory=list)  # unread back-fill, newest first
    suspects: list[list[int]] = field(default_factory=list)  # [start, end, missing]: narrow down, re-read
    rate: float = 0.0  # tasks per second, from counts
    last_head_at: float = 0.0
    last_probe_at: float = 0.0
    last_deep_probe_at: float = 0.0
    deep_cursor: int | None = None  # the end of the next day a deep probe counts (None: a new round)
    credit: float = 0.0
    turn: int = 0  # maintenance turns: re-checks, late tasks, back-fill
    current: Read | None = None
    sweep: list[int] | None = None  # [start, end, started, states done] of a status sweep in progress
    paused: Read | None = None  # a maintenance read between pages, set aside while the newest tasks are due
    slot: float = 0.0  # seconds per request at the budget's pace (the poller sets it; 0: unlimited)
    history_credit: float = 0.0  # history's share of the requests, owed while it is unread
    spacing: float | None = None  # the last re-read spacing that fitted the budget (None: it did not)
    _plan: tuple[float, list[Part] | None] | None = field(default=None, repr=False)  # (when, parts) until an answer

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        return {
            "head": self.head, "recent": self.recent, "history": self.history, "suspects": self.suspects,
            "rate": self.rate, "last_head_at": self.last_head_at, "last_probe_at": self.last_probe_at,
            "last_deep_probe_at": self.last_deep_probe_at, "deep_cursor": self.deep_cursor,
            "current": asdict(self.current) if self.current else None,
            "sweep": self.sweep, "paused": asdict(self.paused) if self.paused else None,
        }

    def restore(self, saved: dict[str, Any] | None) -> None:
        if not saved or saved.get("head") is None:
            return
        self.head = int(saved["head"])
        self.recent = [list(map(int, r)) for r in saved.get("recent") or []]
        self.history = [list(map(int, r)) for r in saved.get("history") or []]
        self.suspects = [list(map(int, r)) for r in saved.get("suspects") or []]
        self.rate = float(saved.get("rate") or 0.0)
        self.last_head_at = float(saved.get("last_head_at") or 0.0)
        self.last_probe_at = float(saved.get("last_probe_at") or 0.0)
        self.last_deep_probe_at = float(saved.get("last_deep_probe_at") or 0.0)
        cursor = saved.get("deep_cursor")
        self.deep_cursor = int(cursor) if cursor is not None else None
        cur = saved.get("current")
        self.current = Read(**cur) if isinstance(cur, dict) else None
        paused = saved.get("paused")
        self.paused = Read(**paused) if isinstance(paused, dict) else None
        sweep = saved.get("sweep")
        self.sweep = [int(x) for x in sweep] if isinstance(sweep, list) and len(sweep) == 4 else None

    # ------------------------------------------------------------------ derived figures
    def reach(self, now: float) -> int:
        """The oldest second the API still answers for (with a margin for clock skew)."""
        return math.ceil(now - self.max_query_age + 120)

    def page_seconds(self) -> float:
        """How many seconds of tasks fill a page at the observed rate."""
        return math.inf if self.rate <= 0 else max(1.0, FILL * self.page_size / self.rate)

    def lag(self, now: float) -> float:
        """Seconds since the newest point up to which everything is read once (holes count as unread)."""
        if self.head is None:
            return self.lookback
        synced = self.head
        if self.recent:
            synced = min(synced, min(a for a, _ in self.recent) - 1)
        return max(0.0, now - synced)

    def backfill_remaining(self) -> float:
        return float(sum(b - a + 1 for a, b in self.history))

    # ------------------------------------------------------------------ start
    def begin(self, now: float) -> None:
        """First start: the range feeding the shortest window is read first, then history newest first.

        Only the part the shortest window still needs two poll intervals from now: reads of the newest tasks
        at the next two poll intervals complete the window then (at the published budget, sooner is not
        possible), and a first read of the whole window would take more pages than that part does."""
        end = math.floor(now)
        first = max(self.poll_interval, self.shortest_window - 2 * self.poll_interval)
        reach = self.reach(now)
        recent_start = max(reach, end - int(first) + 1)
        history_start = max(reach, math.floor(now - self.lookback) + 1)
        self.head = end
        self.recent = [[recent_start, end]]
        self.history = [[history_start, recent_start - 1]] if history_start < recent_start else []
        self.last_head_at = now
        self.last_probe_at = self.last_deep_probe_at = now

    # ------------------------------------------------------------------ choice
    def _trim(self, now: float) -> None:
        """Ranges the API no longer answers for are dropped (nothing could read them)."""
        reach = self.reach(now)
        # A recent hole older than the shortest window feeds no short window any more: it is history now.
        edge = math.floor(now - self.shortest_window)
        aged = [[a, min(b, edge)] for a, b in self.recent if a <= edge]
        if aged:
            self.recent = subtract(self.recent, min(a for a, _ in aged), edge)
            self.history = sorted(self.history + aged, key=lambda r: -r[1])
        self.recent = [[max(a, reach), b] for a, b in self.recent if b >= reach]
        self.history = [[max(a, reach), b] for a, b in self.history if b >= reach]
        self.suspects = [[max(a, reach), b, d] for a, b, d in self.suspects if b >= reach]

    def head_due(self, now: float) -> bool:
        assert self.head is not None
        unread = math.floor(now) - self.head
        # A slot's timing is float arithmetic: a hair under the poll interval is the poll interval.
        since = now - self.last_head_at + 1e-6
        return unread > 0 and (since >= self.poll_interval or unread >= self.page_seconds())

    # ------------------------------------------------------------------ page size
    def sync_page_size(self) -> int:
        """The page size of the next request, as the page-size search has it."""
        if self.pages is not None:
            self.page_size = self.pages.size
        return self.page_size

    def page_refused(self, now: float) -> None:
        """The vendor said ``page size error``: search on, and start the read in progress over (its page
        borders move with the size)."""
        if self.pages is not None:
            self.pages.on_refused(self.page_size, now)
        if self.current is not None:
            self.current.page_no, self.current.count = 1, None
        self.sync_page_size()

    def page_served(self, size: int, rows: int, expected: int, now: float) -> bool:
        """A page of ``size`` answered with ``rows`` of ``expected``; False when the vendor capped it silently
        (the read in progress starts over with the vendor's size: paging on with ours would skip rows)."""
        if self.pages is None or self.pages.on_served(size, rows, expected, now):
            return True
        if self.current is not None:
            self.current.page_no, self.current.count = 1, None
        self.sync_page_size()
        return False

    def grow_pages(self) -> bool:
        """When the new tasks of one poll interval no longer fit a page, every read of them would need two:
        fewer, larger pages are the only way to keep up within the vendor's limits. Only then: the largest
        size is undocumented, and a refused one costs a whole slot of the budget. True when it grew."""
        per_interval = self.rate * self.poll_interval
        return self.pages is not None and per_interval > FILL * self.pages.want and self.pages.grow()

    def capacity(self, slot: float) -> float:
        """Requests the budget gives per poll interval."""
        return self.poll_interval / slot if slot > 0 else math.inf

    def next_read(self, now: float, store: StoreView, slot: float) -> Read | None:
        """The next request to send, or None when nothing is due (see ``next_due``)."""
        self.slot = slot
        if self.head is None:
            self.begin(now)
        if self.current is not None and self.current.purpose == "head" and self.current.page_no == 1:
            self.current = None  # not started (or failed): a head read always reaches up to now
        if self.current is not None and self.current.purpose not in ("head", "recent") and self.head is not None \
                and self.head_due(now) and now - self.head + slot > LAG_LIMIT_INTERVALS * self.poll_interval:
            # A maintenance read with pages to go never holds the newest tasks past the lag limit: it waits
            # (its count is checked again when it resumes, and it starts over if the set moved).
            self.paused, self.current = self.current, None
        if self.current is not None:
            return self.current
        self._trim(now)
        assert self.head is not None
        busy = self.head_due(now) or bool(self.recent)
        if busy:
            # Skipping the head for one slot must leave it no more than two poll intervals behind.
            lag_after = max(self.lag(now), now - self.head) + slot
            # The newest tasks can wait a slot when they will still fit one page then (low volume): the slot
            # goes to maintenance. Otherwise maintenance gets its share of the requests.
            # With room for more than the head in every poll interval, the newest tasks never wait.
            can_wait = not self.recent and (now + slot - self.head) * self.rate <= FILL * self.page_size and \
                self.capacity(slot) < SPACED_MIN_CAPACITY
            if (self.credit >= 1 or can_wait) and lag_after <= LAG_LIMIT_INTERVALS * self.poll_interval:
                read = self._maintenance(now, store)
                if read is not None:
                    if not can_wait:
                        self.credit -= 1
                    self.current = read
                    return read
            # One maintenance request per (1 - share) / share busy ones: the share is of all requests.
            self.credit = min(1.0, self.credit + MAINTENANCE_SHARE / (1 - MAINTENANCE_SHARE))
            read = self._head(now, store) if self.head_due(now) else self._recent()
        else:
            read = self._maintenance(now, store)
        self.current = read
        return read

    def _head(self, now: float, store: StoreView) -> Read:
        assert self.head is not None
        # Up to the current second, which may still gain tasks: the next head read reaches back over it.
        end = math.floor(now)
        start = self.head + 1
        room = self.page_seconds()
        span = end - start + 1
        if span > 4 * room:
            # Far behind (an outage): the newest page first, the rest becomes a recent hole.
            start = end - int(room) + 1
        elif span > room:
            # A little behind (a slot went to maintenance, a page more than planned): one full page from the
            # oldest unread second. Pages stay full and no hole is left; the rest is read at the next slot.
            end = start + int(room) - 1
            return Read(start, end, "head", truncated=True)
        else:
            # Room left in the page: re-read the newest tasks (statuses, late arrivals) for free.
            back = start - int(self.overlap)
            if room != math.inf:
                # Up to three quarters of the page: a burst must not push the read over a page.
                back = max(back, end - int(0.75 * room) + 1)
            start = min(start, max(back, self.reach(now)))  # reaching back, never leaving a gap
            start = min(start, self._reach_back(now, store, end))
        return Read(start, end, "head")

    def _reach_back(self, now: float, store: StoreView, end: int) -> int:
        """How far back a head read can reach and still hold one page: back to the oldest unfinished task whose
        range, with the tasks stored after it and the new ones expected since the head, fits. At a tight budget
        this re-reads every unfinished task with each read of the newest (a change then shows within a poll
        interval, as a naive re-reader's would) where otherwise a re-check or a sweep would come much later."""
        assert self.head is not None
        limit = FILL * self.page_size
        expected = 1.5 * (end - self.head) * self.rate  # new tasks since the head, with room for a burst
        if expected >= limit:
            return end
        span = DAY - 1.0 if self.rate <= 0 else min(DAY - 1.0, limit / self.rate)
        unfinished = store.unfinished(max(self.reach(now), math.floor(end - span)), self.head)
        creates = [math.floor(u[0]) for u in unfinished]
        lo, hi = 0, len(creates)  # the first index whose range fits (counts shrink as the index grows)
        while lo < hi:
            mid = (lo + hi) // 2
            if store.range_count(creates[mid], self.head) + expected <= limit:
                hi = mid
            else:
                lo = mid + 1
        return creates[lo] if lo < len(creates) else end

    def _recent(self) -> Read:
        a, b = self.recent[0]
        room = self.page_seconds()
        if b - a + 1 > room:
            a = b - int(room) + 1
        return Read(a, b, "recent")

    def _maintenance(self, now: float, store: StoreView) -> Read | None:
        """Re-checks, late tasks (suspects, probes) and back-fill take turns, so none starves the others: a
        stuck task seen finishing matters as much as a task served late or an hour of history."""
        if self.paused is not None:
            read, self.paused = self.paused, None
            return read
        def late() -> Read | None:
            read = self._suspect(store)
            if read is None and now - self.last_probe_at >= PROBE_INTERVAL:
                read = self._probe(now, store)
            if read is None and now - self.last_deep_probe_at >= DEEP_PROBE_INTERVAL:
                read = self._deep_probe(now, store)
            return read

        def recheck() -> Read | None:
            return self._recheck(now, store)

        if self.capacity(self.slot) >= SPACED_MIN_CAPACITY:
            # Re-reads are spaced to fit what the head and history leave (``_reread_plan``): one that is due
            # goes first, except when history is owed its share; then late tasks, then history.
            if self.history:
                self.history_credit = min(1.0, self.history_credit + HISTORY_SHARE)
            if self.history and self.history_credit >= 1.0:
                self.history_credit -= 1.0
                return self._history()
            return recheck() or late() or self._history()
        # Re-checks take two turns in four: statuses of tasks already counted are what the windows show.
        options: list[Callable[[], Read | None]] = [recheck, late, recheck, self._history]
        for i in range(len(options)):
            chosen = options[(self.turn + i) % len(options)]()
            if chosen is not None:
                self.turn = (self.turn + i + 1) % len(options)
                return chosen
        return None

    def _suspect(self, store: StoreView) -> Read | None:
        while self.suspects:
            a, b, missing = self.suspects[0]
            if a == b or store.range_count(a, b) + missing <= FILL * self.page_size:
                # Small enough to read whole: it becomes a hole (history, read by back-fill turns).
                self.suspects.pop(0)
                self.history = [[a, b], *subtract(self.history, a, b)]
                continue
            mid = (a + b + 1) // 2
            return Read(mid, b, "suspect", stored=store.range_count(mid, b), diff=missing, parent_start=a)
        return None

    def _read_segments(self, start: int, end: int) -> list[list[int]]:
        """The parts of [start, end] already read (not in any hole), newest first."""
        return _minus_all([[start, end]], self.recent + self.history) if start <= end else []

    def _probe(self, now: float, store: StoreView) -> Read | None:
        """One count over the newest read range (where late tasks land): more than the store holds means
        tasks the vendor served late; the range then becomes suspect and is narrowed down."""
        assert self.head is not None
        self.last_probe_at = now
        end = self.head - int(self.overlap)
        segments = self._read_segments(max(self.reach(now), end - PROBE_SPAN + 1), end)
        if not segments:
            return None
        a, b = segments[0]
        return Read(a, b, "probe", stored=store.range_count(a, b))

    def _deep_probe(self, now: float, store: StoreView) -> Read | None:
        """Every read day within the longest window, one count per maintenance turn, a round every few hours."""
        assert self.head is not None
        end = self.head - int(self.overlap) - PROBE_SPAN
        start = max(self.reach(now), math.floor(now - self.longest_window) + 1)
        if self.deep_cursor is not None:
            end = min(end, self.deep_cursor)
        for a, b in self._read_segments(start, end):
            a = max(a, b - DAY + 1)
            self.deep_cursor = a - 1
            return Read(a, b, "probe", stored=store.range_count(a, b))
        self.deep_cursor = None  # the round is over
        self.last_deep_probe_at = now
        return None

    def _reread_plan(self, now: float, store: StoreView) -> list[Part] | None:
        """The unfinished tasks as page-sized parts, each due by a spacing that fits the budget, or None when
        the budget is too tight for re-reads by range (then ``_recheck`` weighs each task by its age and
        sweeps old ones by state, as at the published budget). Cached for one instant: the poller's answer
        (``on_answer``, ``abandon``) clears it."""
        # The parts change only with the store (an answer clears the cache); the spacing drifts with the tasks'
        # ages, so a plan is kept for a tenth of a poll interval at most.
        if self._plan is not None and self._plan[0] <= now < self._plan[0] + self.poll_interval / 10:
            return self._plan[1]
        parts = self._build_plan(now, store)
        self._plan = (now, parts)
        return parts

    def _build_plan(self, now: float, store: StoreView) -> list[Part] | None:
        assert self.head is not None
        capacity = self.capacity(self.slot)
        if capacity < SPACED_MIN_CAPACITY:
            self.spacing = None
            return None
        reach = self.reach(now)
        if self.head < reach:
            return []
        unfinished = store.unfinished(reach, self.head)
        if not unfinished:
            self.spacing = 0.0
            return []
        # Greedy from the oldest: each part reaches as far as one page holds (every stored task of the range
        # comes back, finished or not), within the API's one-day span.
        limit = FILL * self.page_size
        creates = [u[0] for u in unfinished]
        bounds: list[tuple[int, int, int, str | None]] = []  # (first index, last index, start, url)
        i = 0
        while i < len(unfinished):
            c0 = math.floor(creates[i])
            j = i
            # Most parts are either isolated tasks or a dense run: try the neighbour first, then bisect, only
            # over tasks that twice the observed rate could still bring within a page: counting a day of tasks
            # to learn that it is too much cost more than the rest of the plan (1.2 s -> 26 ms with 2,000
            # unfinished tasks among 100k a day).
            span = min(DAY - 1.0, 2 * limit / self.rate) if self.rate > 0 else DAY - 1.0
            last = bisect.bisect_right(creates, c0 + span, i + 1) - 1
            if last > i and store.range_count(c0, math.floor(creates[i + 1])) <= limit:
                j = last_fitting(store, c0, creates, i + 1, last, limit)
            if j == i and store.range_count(c0, c0) > self.page_size:
                bounds.append((i, i, c0, unfinished[i][1]))  # one second fills a page: this task by its url
            else:
                bounds.append((i, j, c0, None))
            i = j + 1
        # Requests per poll interval left for re-reads: the head's, and history's share while it is unread,
        # come first.
        head = max(1.0, self.rate * self.poll_interval / limit)
        left = capacity * (1 - (HISTORY_SHARE if self.history or self.recent else 0.0)) - head
        ages = [now - unfinished[j][0] for _, j, _, _ in bounds]
        spacing = fit_spacing(ages, self.poll_interval, REREAD_SHARE * left)
        self.spacing = spacing
        if spacing is None:
            return None
        parts = []
        for (i, j, c0, url), age in zip(bounds, ages, strict=True):
            interval = spaced_interval(age, self.poll_interval, spacing)
            due = min(seen for _, _, seen, _ in unfinished[i:j + 1]) + interval
            parts.append(Part(c0, math.floor(unfinished[j][0]), due, url))
        return parts

    def _recheck(self, now: float, store: StoreView) -> Read | None:
        """Unfinished tasks: a sweep in progress first, then the most overdue part (or, on a budget too tight
        for parts, whatever task is most due)."""
        assert self.head is not None
        if self.sweep is not None:
            a, b, _, done = self.sweep
            return Read(a, b, "sweep", status=SWEEP_STATES[done])
        parts = self._reread_plan(now, store)
        if parts is not None:
            overdue = [p for p in parts if p.due <= now + 1e-6]
            if not overdue:
                return None
            part = min(overdue, key=lambda p: p.due)
            return Read(part.start, part.end, "recheck", url=part.url)
        end = self.head - int(self.overlap)
        reach = self.reach(now)
        if end < reach:
            return None
        unfinished = store.unfinished(reach, end)
        due = [(c, u, seen + self._interval(c, seen, now)) for c, u, seen, _ in unfinished]
        due = [(c, u, at) for c, u, at in due if at <= now]
        if not due:
            return None
        # The oldest task goes first when it is due (it decides the oldest-unfinished age, which alerts page
        # on); otherwise the one longest overdue (never the same old ones again and again).
        oldest = unfinished[0]
        if due[0][0] == oldest[0] and due[0][1] == oldest[1]:
            target = 0
        else:
            target = min(range(len(due)), key=lambda i: due[i][2])
        first, url, _ = due[target]
        c0 = math.floor(first)
        if first < now - YOUNG:
            # An old one: a sweep asks for the range's tasks by state (a few requests, however many of them are
            # unfinished or stuck); the ones in no answer have succeeded.
            # Blocks aligned to SWEEP_SPAN: a block is swept as a whole, never in overlapping pieces.
            a = max(c0 - c0 % SWEEP_SPAN, reach)
            b = min(c0 - c0 % SWEEP_SPAN + SWEEP_SPAN - 1, math.floor(now - YOUNG))
            self.sweep = [a, b, math.floor(now), 0]
            return Read(a, b, "sweep", status=SWEEP_STATES[0])
        # A young one, with the due tasks created after it that share one page-sized range (most of them
        # finish within minutes, so reading the range is cheaper than asking by state).
        lo = last_fitting(store, c0, [d[0] for d in due], target, len(due) - 1, FILL * self.page_size)
        if lo == target:
            return Read(c0, c0, "recheck", url=url)
        return Read(c0, math.floor(due[lo][0]), "recheck")

    def _interval(self, create: float, seen: float, now: float) -> float:
        interval = recheck_interval(seen - create, self.poll_interval)
        return max(interval, SWEEP_EVERY) if create < now - YOUNG else interval

    def _history(self) -> Read | None:
        """The newest day of unread history at once: its count says how dense it really is (history is often
        sparser than today), and a dense one is split by that count into page-sized pieces."""
        if not self.history:
            return None
        a, b = self.history[0]
        return Read(max(a, b - DAY + 1), b, "history")

    # ------------------------------------------------------------------ results
    def on_answer(self, now: float, read: Read, count: int) -> str:
        """Account for one page of ``read``: "done" (all of it read), "split" (more than a page: the range
        went back to its list in page-sized pieces) or "more" (page on)."""
        self._plan = None  # the store changes with this answer
        if read.count_only:
            self._on_count(read, count)
            self.current = None
            return "done"
        span = read.end - read.start + 1
        if read.url is None and read.status is None and span >= 60 and read.page_no == 1:
            sample = count / span
            self.rate = sample if self.rate <= 0 else 0.5 * self.rate + 0.5 * sample
        if read.page_no == 1 and count > 2 * self.page_size and read.url is None and span > 1 and \
                read.purpose not in ("recheck", "sweep"):
            # Far more than a page (a first start, an outage, a burst): split the range in time so that each
            # piece fits one page and the newest is read first. A page or two more is cheaper to page through.
            start = read.start
            if read.purpose == "head" and self.head is not None:
                start = max(start, self.head + 1)  # what it re-read before the head was read before
            share = count * (read.end - start + 1) / span
            pieces = split(start, read.end, math.ceil(share / (FILL * self.page_size)))
            self._complete(now, read, pieces)
            return "split"
        if read.count is not None and read.count != count:
            read.page_no = 1  # the set moved under us: page borders moved, start over
            read.count = count
            return "more"
        read.count = count
        if read.page_no * self.page_size < count:
            read.page_no += 1
            return "more"
        self._complete(now, read, [])
        return "done"

    def _complete(self, now: float, read: Read, unread: list[list[int]]) -> None:
        """``read`` is done; ``unread`` (parts of it still to read) goes back to the right list."""
        self.current = None
        if read.purpose == "sweep":
            assert self.sweep is not None
            self.sweep[3] += 1
            return
        if read.purpose == "head":
            assert self.head is not None
            if read.start > self.head + 1:
                unread = [*unread, [self.head + 1, read.start - 1]]  # did not fit the page: read next
            self.head = max(self.head, read.end)
            if not read.truncated or self.capacity(self.slot) < SPACED_MIN_CAPACITY:
                self.last_head_at = now  # (at the published budget the next slot comes a poll interval on)
        self.recent = subtract(self.recent, read.start, read.end)
        self.history = subtract(self.history, read.start, read.end)
        if not unread:
            return
        if read.purpose in ("head", "recent"):
            self.recent = sorted(self.recent + unread, key=lambda r: -r[1])
        else:
            self.history = sorted(self.history + unread, key=lambda r: -r[1])

    def _on_count(self, read: Read, count: int) -> None:
        stored = read.stored or 0
        if read.purpose == "probe":
            if count > stored:
                self.suspects.append([read.start, read.end, count - stored])
            return
        # A suspect's newer half: what it lacks is there; the rest of the shortfall is in the older half.
        self.suspects.pop(0)
        missing_new = max(0, count - stored)
        if missing_new:
            self.suspects.append([read.start, read.end, missing_new])
        if read.diff > missing_new:
            start = read.parent_start if read.parent_start is not None else read.start
            self.suspects.append([start, read.start - 1, read.diff - missing_new])

    def sweep_done(self, store: StoreView) -> list[tuple[float, str]] | None:
        """After a sweep's last state: the stored unfinished tasks that no answer of it showed (not seen since
        it started) are no longer initial, waiting, running or failed: they succeeded. None while the sweep
        is not over."""
        if self.sweep is None or self.sweep[3] < len(SWEEP_STATES):
            return None
        a, b, started, _ = self.sweep
        self.sweep = None
        return [(c, u) for c, u, seen, status in store.unfinished(a, b)
                if seen < started and status in ("wait", "run")]

    def abandon(self) -> None:
        """The vendor refused the read as it stands: drop it (its range stays in its list, if any)."""
        self.current = None
        self._plan = None

    def next_due(self, now: float, store: StoreView) -> float:
        """When there will be something to read, if nothing is due now."""
        assert self.head is not None
        due = self.last_head_at + self.poll_interval
        if self.suspects or self.history or self.recent or self.sweep is not None or self.paused is not None:
            return now
        due = min(due, self.last_probe_at + PROBE_INTERVAL, self.last_deep_probe_at + DEEP_PROBE_INTERVAL)
        parts = self._reread_plan(now, store)
        if parts is not None:
            return min([due, *(p.due for p in parts)])
        end = self.head - int(self.overlap)
        reach = self.reach(now)
        if end >= reach:
            for c, _, seen, _ in store.unfinished(reach, end):
                due = min(due, seen + self._interval(c, seen, now))
        return due


def _minus_all(ranges: list[list[int]], holes: list[list[int]]) -> list[list[int]]:
    """``ranges`` minus every hole, newest first."""
    for a, b in holes:
        ranges = subtract(ranges, a, b)
    return sorted(ranges, key=lambda r: -r[1])
