"""Freshness of the CDN numbers against the vendor's real state: how long each change at the vendor (a task
appears, starts running, ends) takes to show, for the exporter, a naive re-reader and the round-robin bound,
across budgets, volumes and stuck or slow tasks (the matrix of issue 18).

Cells: budgets {unlimited (1000 per 1 s and the simulator without a limit; poll 10 s), 25 per minute (poll
10 s), 30 per 5 minutes (poll 60 s), 1 per 5 minutes (poll 300 s, the default)} x volumes {10k, 100k prefetch
tasks a day} x variants {``none``; ``stuck``: plus 2 tasks created 20 and 23 h before the start that wait
forever; ``slow``: 0.5% of the stream runs 2 to 48 h longer}. One account, windows 15m/1h/24h, lookback 24h,
page size 500 (the simulator's default cap), a first start with 26 h of history at the vendor. "Unlimited" is
1000 requests per second rather than 100000: ``RateBudget`` keeps up to ``requests`` send times and walks them
all on every ``wait_time()``, and 1000 a second is already a hundred times what any cell asks for.

Per cell, on one fake clock (figures are fake-time seconds, so they are deterministic; the wall time is not),
over real HTTP to two simulators holding the same tasks (one per side, so that neither side's requests count
against the other's budget):

* the exporter: the real ``CdnPoller`` from a first start (store in a temporary directory);
* a naive re-reader (``NaiveRereader``) paced by the same ``RateBudget`` and budget: at each poll interval it
  reads every page from its oldest unfinished task (at its first start: now - lookback) to now, in chunks of
  at most a day; a sweep the budget cuts short is resumed, and the next one starts when it is done;
* the round-robin bound: the pages needed to re-read every unfinished range once plus one head read, over the
  budget's requests per second. The pages are the planner's re-read parts (``Planner._reread_plan``) where it
  plans by parts; where it does not (a budget too tight for them), the vendor's really unfinished tasks in
  groups of at most a page of the vendor's tasks (a lower bound that does not grow with the exporter's own
  staleness). Sampled a few times over the measured span; the median is reported.

A cell has a warm-up from the first start until the exporter's back-fill is done (``health.backfill()`` 0:
the 24h window complete), at least two poll intervals, at most a cap; then a fixed span of fake time is
measured with a staleness tracker (``exporter.simulator.staleness``) per side, started at the end of the
warm-up and observed right after every request (requests less than 10 ms of fake time apart are observed once,
after the last). The spans bound the wall time (every 500-row page costs ~40 ms of real work on each side):
the 24 cells take about 8.5 minutes on two shared cores.

    budget      warm-up cap  measured  why
    unlimited   5 min        1 min     the naive side reads ~200 full pages every 10 s with stuck or slow tasks
    25/min      30 min       10 min    the back-fill of 100k tasks takes ~19 min (30% of the budget)
    30/5min     90 min       30 min    ~80 min of back-fill at 100k; 30 poll intervals measured
    1/5min      1 h          3 h       36 requests measured; the back-fill cannot finish here (see README)

Reported per cell and side: staleness p50/p99/max of the changes of the 15m and the 24h window (changes not
shown at the end count with their age so far), requests per poll interval, rows read per task created in the
span, max lag after the warm-up (``health.lag()``; the naive side: since the end of its last complete sweep),
minutes from the first start until the 15m window holds every task the vendor serves for it and until the 24h
window is complete.

Goals: p99 staleness of the 15m window <= 2 poll intervals wherever the round-robin bound <= the poll
interval, elsewhere <= 1.5x the bound; the exporter never worse than the naive re-reader (p99 of the 15m
window, with a tolerance of one poll interval); at 1 per 5 minutes: rows per new task <= 1.5, lag <= 10 min,
the 15m window complete within two poll intervals of the first start.

    python benchmarks/bench_freshness.py            # all 24 cells
    python benchmarks/bench_freshness.py --quick    # 8 cells, under 2 minutes
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_polling import CountingClient
from benchlib import T0, Clock, Goals, print_table

from exporter.config import RateLimit, parse_config
from exporter.metrics.health import ApiHealth
from exporter.polling.budget import RateBudget
from exporter.polling.cdn_poller import CdnPoller
from exporter.simulator import Simulator
from exporter.simulator.staleness import Change, Staleness, store_lookup
from exporter.storage.store import Store
from exporter.vendor.cdn import ApiError, chunk_range

KIND = "prefetch"
USER = "acme"
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
START = T0 + 37  # off the minute
WINDOWS = {"15m": 900.0, "1h": 3600.0, "24h": DAY}
LOOKBACK = DAY
PAGE_SIZE = 500
OBSERVE_GRAIN = 0.01  # requests closer together than this (fake seconds) are observed once, after the last
BOUND_SAMPLES = 6


@dataclass(frozen=True)
class Budget:
    name: str
    requests: int
    per: float
    poll: float
    warmup_cap: float
    span: float
    limited: bool = True

    @property
    def per_second(self) -> float:
        return self.requests / self.per


BUDGETS = (
    Budget("unlimited", 1000, 1.0, 10.0, 5 * MINUTE, MINUTE, limited=False),
    Budget("25/min", 25, MINUTE, 10.0, 30 * MINUTE, 10 * MINUTE),
    Budget("30/5min", 30, 5 * MINUTE, 60.0, 90 * MINUTE, 30 * MINUTE),
    Budget("1/5min", 1, 5 * MINUTE, 300.0, HOUR, 3 * HOUR),
)
VOLUMES = (10_000, 100_000)
VARIANTS = ("none", "stuck", "slow")
QUICK = {(b, v, s) for b in ("25/min", "1/5min") for v in VOLUMES for s in ("none", "stuck")}


def populate(sim: Simulator, per_day: int, variant: str) -> None:
    sim.add_account(USER, f"{USER}-key")
    sim.add_cdn_stream(USER, KIND, per_hour=per_day / 24, failure_ratio=0.05, start_ts=START - 26 * HOUR,
                       slow_ratio=0.005 if variant == "slow" else 0.0)
    if variant == "stuck":
        for i, hours in enumerate((20.0, 23.0)):
            sim.add_cdn_task(USER, KIND, f"https://stuck.example/{i}", START - hours * HOUR, wait=1000 * HOUR,
                             run=60)


class NaiveRereader:
    """Re-reads everything that may still change, every poll interval, within the same budget.

    At each poll interval a sweep reads every page from the oldest task it holds unfinished (within the
    lookback; at its first start, now - lookback) up to now, in chunks of at most a day, oldest chunk first,
    one request per budget slot. A sweep the budget cuts short is resumed at the next slot, and the next sweep
    starts when it is done (at once when its poll interval has passed)."""

    def __init__(self, client: CountingClient, budget: RateBudget, poll: float, clock: Clock) -> None:
        self.client, self.budget, self.poll, self.clock = client, budget, poll, clock
        self.tasks: dict[int, dict[str, str]] = {}  # createTime -> {url: status}
        self.unfinished: set[tuple[int, str]] = set()
        self.chunks: list[tuple[float, float]] = []
        self.page_no = 1
        self.next_sweep = clock()
        self.sweep_end: float | None = None
        self.synced: float | None = None  # every task created up to here was read by a complete sweep
        self.first_done: float | None = None
        self.requests_sent = 0
        self.errors = 0

    def next_run(self) -> float:
        at = self.clock() + self.budget.wait_time()
        return at if self.chunks else max(at, self.next_sweep)

    def _begin(self, now: float) -> None:
        floor = math.floor(now - LOOKBACK) + 1
        start = floor
        if self.synced is not None:
            oldest = min((c for c, _ in self.unfinished if c >= floor), default=self.synced + 1)
            start = max(floor, min(oldest, self.synced + 1))
        self.sweep_end = math.floor(now)
        self.chunks = chunk_range(start, self.sweep_end, DAY)
        self.page_no = 1
        self.next_sweep = now + self.poll

    def step(self) -> None:
        now = self.clock()
        if not self.chunks:
            self._begin(now)
        start, end = self.chunks[0]
        try:
            page = self.client.query(KIND, start, end, page_no=self.page_no, page_size=PAGE_SIZE)
        except ApiError:
            self.errors += 1
            return  # the same page again at the next slot
        finally:
            self.budget.record()
            self.requests_sent += 1
        for task in page.tasks:
            create = int(task.create_ts)
            self.tasks.setdefault(create, {})[task.url] = task.status
            if task.status in ("success", "failure"):
                self.unfinished.discard((create, task.url))
            else:
                self.unfinished.add((create, task.url))
        if self.page_no * PAGE_SIZE < page.count:
            self.page_no += 1
            return
        self.chunks.pop(0)
        self.page_no = 1
        if not self.chunks:
            self.synced = self.sweep_end
            if self.first_done is None:
                self.first_done = now

    def lookup(self, start: float, end: float) -> dict[tuple[str, int], str]:
        out: dict[tuple[str, int], str] = {}
        for create in range(math.ceil(start), math.floor(end) + 1):
            for url, status in self.tasks.get(create, {}).items():
                out[(url, create)] = status
        return out

    def count(self, start: float, end: float) -> int:
        return sum(len(self.tasks.get(c, ())) for c in range(math.ceil(start), math.floor(end) + 1))


class ChangeFeed:
    """``Simulator.cdn_changes`` for the trackers, listed once for the whole measured span: the model is a pure
    function of time, so a change listed ahead is the one the API shows when its time comes, and a tracker need
    not list a day of slots again at every observation."""

    def __init__(self, sim: Simulator, start: float, end: float) -> None:
        self.changes = sorted(sim.cdn_changes(USER, KIND, start - DAY + 1, end, start, end), key=lambda c: c[4])
        self.at = [c[4] for c in self.changes]

    def __call__(self, start: float, end: float, after: float, until: float) -> list[Change]:
        lo, hi = bisect.bisect_right(self.at, after), bisect.bisect_right(self.at, until)
        return [c for c in self.changes[lo:hi] if start <= c[1] <= end]


def vendor_groups(sim: Simulator, now: float) -> int:
    """The vendor's unfinished tasks of the lookback in groups of at most a page of its tasks (greedy from the
    oldest, within one day): the pages a perfect re-reader needs to see every one of them once."""
    # Every task unfinished at ``now`` ends later: its phase-2 change is the only one listed for it.
    ends = sim.cdn_changes(USER, KIND, now - LOOKBACK + 1, now, now, now + 3650 * DAY)  # stuck ones too
    unfinished = sorted(float(c[1]) for c in ends if c[2] == 2)
    groups, i = 0, 0
    while i < len(unfinished):
        c0 = unfinished[i]

        def fits(c: float, c0: float = c0) -> bool:
            return c - c0 < DAY and sim.cdn_truth(USER, KIND, c0, c, at=now)["total"] <= PAGE_SIZE

        lo, hi = i, len(unfinished) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(unfinished[mid]):
                lo = mid
            else:
                hi = mid - 1
        groups += 1
        i = lo + 1
    return groups


def bound_pages(poller: CdnPoller, sim: Simulator, now: float) -> tuple[int, str]:
    """Pages to re-read every unfinished range once, plus one head read; and where the figure comes from."""
    planner = poller.planner
    saved = planner._plan, planner.spacing  # looked at, not changed
    try:
        parts = planner._reread_plan(now, poller.view)
    finally:
        planner._plan, planner.spacing = saved
    if parts is not None:
        return len(parts) + 1, "parts"
    return vendor_groups(sim, now) + 1, "vendor"


@dataclass
class Side:
    name: str
    tracker: Staleness | None = None
    requests0: int = 0
    rows0: int = 0
    max_lag: float = 0.0
    complete_15m: float | None = None
    complete_24h: float | None = None
    dirty_since: float | None = None


def run_cell(budget: Budget, per_day: int, variant: str, tmp: Path) -> dict[str, Any]:
    wall = time.perf_counter()
    clock = Clock(START)
    limits = {KIND: (budget.requests, budget.per)} if budget.limited else None
    sim_e, sim_n = (Simulator(clock=clock, rate_limits=limits) for _ in range(2))
    for sim in (sim_e, sim_n):
        populate(sim, per_day, variant)
        sim.start()
    try:
        config = parse_config({
            "accounts": [{"name": USER, "username": USER, "api_key": f"{USER}-key", "endpoint": sim_e.url}],
            "prefetch": {"windows": list(WINDOWS), "poll_interval": f"{budget.poll:g}s", "lookback": "24h",
                         "page_size": PAGE_SIZE,
                         "rate_limit": {"requests": budget.requests, "per": f"{budget.per:g}s"}},
            "storage": {"path": str(tmp / f"{budget.name.replace('/', '-')}-{per_day}-{variant}.db")},
            "fmgr": {"enabled": False},
        })
        account = config.accounts[0]
        store = Store(config.storage.path, clock=clock)
        health = ApiHealth()
        client = CountingClient(account, clock=clock, timeout=30, health=health)
        poller = CdnPoller(account, KIND, config.kinds[KIND], store, client, health, clock=clock,
                           rng=random.Random(7))
        nclient = CountingClient(dataclasses.replace(account, endpoint=sim_n.url), clock=clock, timeout=30)
        naive = NaiveRereader(nclient, RateBudget(RateLimit(budget.requests, budget.per), clock), budget.poll,
                              clock)
        try:
            out = _drive(budget, poller, naive, store, sim_e, client, nclient, health, clock)
        finally:
            store.close()
        out["violations"] = sim_e.rate_limit_violations + sim_n.rate_limit_violations
    finally:
        sim_e.stop()
        sim_n.stop()
    out["wall"] = time.perf_counter() - wall
    return out


def _drive(budget: Budget, poller: CdnPoller, naive: NaiveRereader, store: Store, sim: Simulator,
           client: CountingClient, nclient: CountingClient, health: ApiHealth, clock: Clock) -> dict[str, Any]:
    exp, nai = Side("exporter"), Side("naive")
    lookups = {"exporter": store_lookup(store, USER, KIND), "naive": naive.lookup}
    warmup_cap, span = budget.warmup_cap, budget.span
    warm_deadline = START + warmup_cap
    m0: float | None = None
    end = math.inf
    next_sample, samples, sources = math.inf, [], set()

    def flush(sides: tuple[Side, ...]) -> None:
        for side in sides:
            if side.tracker is not None:
                side.tracker.observe(clock(), lookups[side.name])
            side.dirty_since = None

    te: float | None = None  # when the exporter steps next, asked once after each of its steps
    while True:
        if te is None:
            te = poller.next_run()
        tn = naive.next_run()
        t = max(clock(), min(te, tn))
        if m0 is None and t >= warm_deadline:
            clock.t = max(clock(), warm_deadline)
            m0, end = clock(), clock() + span
            feed = ChangeFeed(sim, m0, end)
            for side, c in ((exp, client), (nai, nclient)):
                side.tracker = Staleness(feed, WINDOWS, m0)
                side.requests0, side.rows0 = (poller.requests_sent if side is exp else naive.requests_sent), c.rows
            next_sample = m0
            continue
        for side in (exp, nai):
            if side.dirty_since is not None and t > side.dirty_since + OBSERVE_GRAIN:
                flush((side,))
        while next_sample <= min(t, end):
            pages, source = bound_pages(poller, sim, clock())
            samples.append(pages)
            sources.add(source)
            next_sample += span / BOUND_SAMPLES
        if t > end:
            break
        clock.t = t
        now = clock()
        if te <= tn:
            te = None
            before = poller.requests_sent
            poller.step()
            if poller.requests_sent == before:
                continue
            side = exp
            if exp.complete_24h is None and health.backfill().get((USER, KIND), 1) == 0:
                exp.complete_24h = now - START
                warm_deadline = min(warm_deadline, max(START + 2 * budget.poll, now))
            shown_15m = store.cdn_range_count(USER, KIND, now - 899, now)
            lag = health.lag().get((USER, KIND), math.inf)
        else:
            naive.step()
            side = nai
            if nai.complete_24h is None and naive.first_done is not None:
                nai.complete_24h = naive.first_done - START
            shown_15m = naive.count(now - 899, now)
            lag = now - naive.synced if naive.synced is not None else math.inf
        if side.complete_15m is None and shown_15m >= sim.cdn_truth(USER, KIND, now - 899, now)["total"]:
            side.complete_15m = now - START
        if m0 is not None:
            side.max_lag = max(side.max_lag, lag)
            if side.dirty_since is None:
                side.dirty_since = now
    assert m0 is not None
    clock.t = end
    flush((exp, nai))
    new = sim.cdn_truth(USER, KIND, m0 + 1, end, at=end)["total"]
    out: dict[str, Any] = {"m0": m0 - START, "span": span, "bound_pages": statistics.median(samples),
                           "bound_source": sources, "new": new}
    out["bound"] = out["bound_pages"] / budget.per_second
    for side, sent, c in ((exp, poller.requests_sent, client), (nai, naive.requests_sent, nclient)):
        assert side.tracker is not None
        report = side.tracker.report(end)
        out[side.name] = {
            "15m": report["15m"], "24h": report["24h"],
            "req_per_poll": (sent - side.requests0) / (span / budget.poll),
            "rows_per_new": (c.rows - side.rows0) / max(1, new),
            "max_lag": side.max_lag, "complete_15m": side.complete_15m, "complete_24h": side.complete_24h,
        }
    out["naive_errors"] = naive.errors
    return out


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds / 60:.1f}"


def _staleness(report: dict[str, Any]) -> str:
    """p50/p99/max seconds (p50 of the changes shown, "-" for none), and (in parentheses) the changes still not
    shown at the end, which count in p99 and max with their age so far."""
    shown = report["changes"] > report["unshown"]
    text = "/".join(_s(report[k]) if shown or k != "p50" else "-" for k in ("p50", "p99", "max"))
    return f"{text} ({report['unshown']})" if report["unshown"] else text


def _s(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 or seconds == 0 else f"{seconds:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8 cells (25/min and 1/5min, no slow tasks)")
    parser.add_argument("--only", default="", help="cells whose 'budget volume variant' contains this text")
    args = parser.parse_args()
    goals = Goals("bench_freshness")
    cells = [(b, v, s) for b in BUDGETS for v in VOLUMES for s in VARIANTS
             if (not args.quick or (b.name, v, s) in QUICK) and args.only in f"{b.name} {v // 1000}k {s}"]
    started = time.perf_counter()
    stale_rows: list[list[object]] = []
    other_rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp:
        for budget, per_day, variant in cells:
            r = run_cell(budget, per_day, variant, Path(tmp))
            e, n = r["exporter"], r["naive"]
            name = [budget.name, f"{per_day // 1000}k", variant]
            print(f"  {' '.join(name)}: {r['wall']:.0f} s wall, warm-up {r['m0'] / 60:.0f} min", flush=True)
            stale_rows.append([*name, f"{r['m0'] / 60:.0f}+{r['span'] / 60:g}", e["15m"]["changes"],
                               _staleness(e["15m"]), _staleness(n["15m"]), _staleness(e["24h"]),
                               _staleness(n["24h"]), _s(r["bound"]),
                               f"{r['bound_pages']:.0f} ({'/'.join(sorted(r['bound_source']))})"])
            other_rows.append([*name, f"{e['req_per_poll']:.2f}", f"{n['req_per_poll']:.2f}",
                               f"{e['rows_per_new']:.2f}", f"{n['rows_per_new']:.2f}",
                               _minutes(e["max_lag"]), _minutes(n["max_lag"]),
                               _minutes(e["complete_15m"]), _minutes(n["complete_15m"]),
                               _minutes(e["complete_24h"]), _minutes(n["complete_24h"]), r["violations"],
                               f"{r['wall']:.0f}"])
            _check(goals, budget, name, r)
    wall = time.perf_counter() - started
    print()
    print("Staleness (fake seconds, p50/p99/max) of the changes in the 15m and the 24h window, measured span; "
          "round-robin bound = pages to re-read every unfinished range once + 1 head read, over the budget")
    print_table(["budget", "volume", "variant", "warm-up+span min", "15m changes", "15m exporter", "15m naive",
                 "24h exporter", "24h naive", "bound s", "bound pages (from)"], stale_rows)
    print()
    print("Requests per poll interval and rows read per new task (measured span), max lag after the warm-up "
          "(min), minutes from the first start until the 15m window holds every served task and until the 24h "
          "window is complete (-: not within the run)")
    print_table(["budget", "volume", "variant", "req/poll exp", "naive", "rows/new exp", "naive", "max lag exp",
                 "naive", "15m complete exp", "naive", "24h complete exp", "naive", "violations", "wall s"],
                other_rows)
    print(f"\n{len(cells)} cells, {wall:.0f} s wall")
    goals.note(f"{len(cells)} cells in {wall:.0f} s of wall time")
    return goals.exit_code()


def _check(goals: Goals, budget: Budget, name: list[str], r: dict[str, Any]) -> None:
    e, n = r["exporter"], r["naive"]
    cell = " ".join(name)
    p99 = e["15m"]["p99"]
    if r["bound"] <= budget.poll:
        goals.check(p99 <= 2 * budget.poll, f"{cell}: 15m p99 staleness {p99:.0f} s <= 2 poll intervals "
                    f"({2 * budget.poll:.0f} s; round-robin bound {r['bound']:.1f} s)")
    else:
        goals.check(p99 <= 1.5 * r["bound"], f"{cell}: 15m p99 staleness {p99:.0f} s <= 1.5x the round-robin "
                    f"bound ({1.5 * r['bound']:.0f} s)")
    goals.check(p99 <= n["15m"]["p99"] + budget.poll, f"{cell}: 15m p99 staleness {p99:.0f} s, naive re-reader "
                f"{n['15m']['p99']:.0f} s (+ one poll interval allowed)")
    goals.check(r["violations"] == 0, f"{cell}: {r['violations']} rate-limit violations at the vendor")
    if budget.name == "1/5min":
        if name[1] == "100k":
            # The goal of the published budget at the volume it was set for (bench_polling's 100k a day), where
            # pages are full and every row costs room. At 10k a page holds every unfinished task with the new
            # ones, and the head read re-reads them in the same request: those rows cost no request.
            goals.check(e["rows_per_new"] <= 1.5, f"{cell}: {e['rows_per_new']:.2f} rows read per new task "
                        "(goal <= 1.5)")
        else:
            goals.note(f"{cell}: {e['rows_per_new']:.2f} rows read per new task (re-reads in the same requests)")
        goals.check(e["max_lag"] <= 600, f"{cell}: max lag {e['max_lag'] / 60:.1f} min after the warm-up "
                    "(goal <= 10 min)")
        c15 = e["complete_15m"]
        goals.check(c15 is not None and c15 <= 2 * budget.poll, f"{cell}: 15m window complete "
                    f"{'never' if c15 is None else f'{c15 / 60:.1f} min'} after the first start (goal within "
                    "two poll intervals)")


if __name__ == "__main__":
    sys.exit(main())
