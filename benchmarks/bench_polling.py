"""Vendor requests per poll cycle at steady state: the incremental CdnPoller vs a naive full re-fetch.

100k prefetch tasks a day from the simulator, a fake clock shared by simulator and exporter. After the
back-fill, the clock moves on by the poll interval (5m) and, at the same instant, two things read the
vendor over real HTTP:

* the incremental ``CdnPoller`` runs one cycle (one plan: from the oldest unfinished task or the last
  synced point minus the overlap, up to now);
* a naive poller re-reads the whole 24h window, page by page, at the same page size.

The simulator counts what arrives. The naive re-fetch is sent for real in the first steady cycle (and
must equal ceil(tasks in 24h / page size)); later cycles count the pages of the 24h range instead, which
saves about 25s a cycle. Part A gives the poller an unlimited budget, so the counts are what each
approach needs. Part B (no goal) runs the poller at the vendor's published budget, 1 request per
5 minutes, for several hours of fake time and reports how far behind it falls.

Goal: incremental needs >= 10x fewer requests than the naive re-fetch in every steady-state cycle, at
page size 100 (the default) and 500, and its window counts equal the simulator's truth after every cycle.

    python benchmarks/bench_polling.py
"""

from __future__ import annotations

import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import DAY, T0, Clock, Goals, print_table

from exporter.cdn import CdnClient, QueryPage, chunk_range, clamp_start
from exporter.config import Config, parse_config
from exporter.health import ApiHealth
from exporter.poller import CdnPoller
from exporter.simulator import Simulator
from exporter.store import Store
from exporter.windows import window_start

USER = "acme"
KIND = "prefetch"
PER_HOUR = 100_000 / 24
STEADY_CYCLES = 5
PAGE_SIZES: tuple[int | None, ...] = (None, 500)  # None: the configured default (100)
GOAL_RATIO = 10.0
BUDGET_HOURS = 8.0  # part B: fake hours at the published budget


class CountingClient(CdnClient):
    """The real client, plus a tally of the tasks its pages carried (for tasks/request)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks_read = 0

    def query(self, *args: Any, **kwargs: Any) -> QueryPage:
        page = super().query(*args, **kwargs)
        self.tasks_read += len(page.tasks)
        return page


@dataclass
class Side:
    """One incremental poller with its own store, and the naive re-fetch at the same page size."""

    label: str
    config: Config
    store: Store
    health: ApiHealth
    client: CountingClient
    poller: CdnPoller
    naive_client: CountingClient
    rows: list[list[object]] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def make_config(sim_url: str, storage: str, page_size: int | None, budget: dict[str, Any] | None) -> Config:
    """The shipped defaults (windows 15m/1h/24h, poll_interval 5m, lookback 24h) plus what the part changes."""
    prefetch: dict[str, Any] = {}
    if page_size is not None:
        prefetch["page_size"] = page_size
    if budget is not None:
        prefetch["rate_limit"] = budget
    return parse_config({
        "accounts": [{"name": USER, "username": USER, "api_key": "acme-key", "endpoint": sim_url}],
        "prefetch": prefetch,
        "storage": {"path": storage},
    })


def make_poller(config: Config, store: Store, clock: Clock) -> tuple[CdnPoller, CountingClient, ApiHealth]:
    health = ApiHealth()
    kcfg = config.prefetch
    client = CountingClient(config.accounts[0], clock=clock, timeout=kcfg.request_timeout, health=health)
    poller = CdnPoller(config.accounts[0], KIND, kcfg, store, client, health, clock=clock, rng=random.Random(7))
    return poller, client, health


def run_cycle(poller: CdnPoller, clock: Clock, max_steps: int = 20000) -> int:
    """Step (moving the fake clock only when the poller asks to wait) until one whole plan is read."""
    for _ in range(max_steps):
        due = poller.next_run()
        if due > clock():
            clock.t = due
        poller.step()
        if poller.plan is None and poller.synced_until is not None:
            return poller.requests_in_last_plan
    raise RuntimeError("the plan never finished")


def naive_full_refetch(client: CdnClient, now: float, lookback: float, max_age: float,
                       page_size: int) -> int:
    """What a poller that re-reads the whole window every cycle sends: every page of every <= 1 day chunk."""
    sent = 0
    for start, end in chunk_range(clamp_start(now - lookback, now, max_age), now):
        page_no = 1
        while True:
            page = client.query(KIND, start, end, page_no=page_no, page_size=page_size)
            sent += 1
            if page_no * page_size >= page.count or not page.tasks:
                break
            page_no += 1
    return sent


def windows_match_truth(sim: Simulator, side: Side, now: float) -> bool:
    """The poller's window counts, status by status, equal what the simulator says is there."""
    windows = [w.seconds for w in side.config.prefetch.windows]
    got = side.store.cdn_window_counts(USER, KIND, now, windows)
    for w, counts in zip(windows, got, strict=True):
        truth = sim.cdn_truth(USER, KIND, window_start(now, w), now)
        truth.pop("total")
        if {s: counts.get(("status", s), 0) for s in truth} != truth:
            print(f"  mismatch in window {w:.0f}s: store {dict(counts)} vs truth {truth}")
            return False
    return True


def sim_requests(sim: Simulator) -> int:
    return sim.requests[(KIND, USER)]


def part_a(sim: Simulator, clock: Clock, tmp: Path, goals: Goals) -> list[Side]:
    sides = []
    for ps in PAGE_SIZES:
        config = make_config(sim.url, str(tmp / f"page-{ps or 'default'}.db"), ps, {"requests": 1000, "per": "1s"})
        store = Store(config.storage.path, clock=clock)
        poller, client, health = make_poller(config, store, clock)
        naive = CountingClient(config.accounts[0], clock=clock, timeout=config.prefetch.request_timeout)
        sides.append(Side(f"{poller.page_size}", config, store, health, client, poller, naive))
    print(f"Part A: {PER_HOUR * 24:,.0f} tasks/day, unlimited budget, page sizes "
          f"{', '.join(s.label for s in sides)} (default {sides[0].config.prefetch.page_size})")

    started = time.perf_counter()
    for side in sides:
        before = sim_requests(sim)
        side_started = time.perf_counter()
        backfill = run_cycle(side.poller, clock)
        seconds = time.perf_counter() - side_started
        if sim_requests(sim) - before != backfill:
            raise RuntimeError("the simulator saw a different number of requests than the poller planned")
        side.rows.append(["back-fill", backfill, side.client.tasks_read,
                          side.client.tasks_read / backfill, "", "", "", "", "",
                          side.health.lag()[(USER, KIND)]])
        goals.note(f"page {side.label}: back-fill of {side.client.tasks_read:,} tasks in {backfill} requests took "
                   f"{seconds:.1f}s real time (simulator, HTTP, parsing and store upserts in one process)")
    print(f"  back-fill done in {time.perf_counter() - started:.1f}s real time")

    for cycle in range(1, STEADY_CYCLES + 1):
        previous = clock()
        clock.advance(sides[0].config.prefetch.poll_interval)
        now = clock()
        new_tasks = sim.cdn_truth(USER, KIND, previous + 1, now)["total"]
        for side in sides:
            side.client.tasks_read = 0
            before = sim_requests(sim)
            incremental = run_cycle(side.poller, clock)
            if clock() != now:
                raise RuntimeError("an unlimited budget should never make the poller wait")
            seen = sim_requests(sim) - before
            if seen != incremental:
                side.problems.append(f"cycle {cycle}: simulator counted {seen} requests, poller {incremental}")
            if not windows_match_truth(sim, side, now):
                side.problems.append(f"cycle {cycle}: window counts differ from the simulator's truth")
            lag = side.health.lag()[(USER, KIND)]
            kcfg = side.config.prefetch
            in_window = sim.cdn_truth(USER, KIND, now - kcfg.lookback, now)["total"]
            pages = math.ceil(in_window / side.poller.page_size)
            if cycle == 1:
                # Sent for real once per page size (10-15s each: 100k tasks through both ends); later
                # cycles count the pages of the same range, which this first cycle shows to be equal.
                side.naive_client.tasks_read = 0
                before = sim_requests(sim)
                naive = naive_full_refetch(side.naive_client, now, kcfg.lookback, kcfg.max_query_age,
                                           side.poller.page_size)
                goals.check(sim_requests(sim) - before == naive == pages,
                            f"page {side.label}: naive re-fetch sent {naive} requests = ceil({in_window} tasks "
                            f"/ {side.poller.page_size}) = {pages}")
                naive_how, naive_tpr = "sent", f"{side.naive_client.tasks_read / naive:.1f}"
            else:
                naive, naive_how, naive_tpr = pages, "counted", f"{in_window / pages:.1f}"
            ratio = naive / incremental
            side.ratios.append(ratio)
            side.rows.append([cycle, incremental, side.client.tasks_read, side.client.tasks_read / incremental,
                              new_tasks, naive, naive_how, naive_tpr, ratio, lag])
    print(f"  {STEADY_CYCLES} steady cycles done in {time.perf_counter() - started:.1f}s real time")

    for side in sides:
        print()
        print(f"page size {side.label}: requests per cycle (incremental vs naive 24h re-fetch)")
        print_table(["cycle", "incr req", "tasks read", "tasks/req", "new tasks", "naive req", "naive",
                     "naive tasks/req", "naive/incr", "lag after (s)"], side.rows)
        goals.check(not side.problems, f"page {side.label}: in all {STEADY_CYCLES} steady cycles the simulator "
                    "counted what the poller planned and the 15m/1h/24h counts equal the simulator's truth"
                    + "".join(f"; {p}" for p in side.problems))
        worst = min(side.ratios)
        goals.check(worst >= GOAL_RATIO,
                    f"page {side.label}: incremental needs {worst:.0f}x fewer requests than a 24h re-fetch "
                    f"in the worst steady cycle (median {sorted(side.ratios)[len(side.ratios) // 2]:.0f}x; "
                    f"goal >= {GOAL_RATIO:.0f}x)")
    return sides


def part_b(sim: Simulator, clock: Clock, sides: list[Side], goals: Goals) -> None:
    """The published budget (config default: 1 request per 5m), continuing from part A's synced stores."""
    pollers = []
    for side in sides:
        config = make_config(sim.url, side.config.storage.path, side.poller.page_size, None)
        poller, _, health = make_poller(config, side.store, clock)
        pollers.append((side.label, poller, health, []))
    budget = pollers[0][1].cfg.rate_limit
    print()
    print(f"Part B: the published budget ({budget.requests} request per {budget.per:.0f}s), "
          f"{BUDGET_HOURS:.0f} fake hours; lag = now - end of the fully synced range, after each cycle")
    end = clock() + BUDGET_HOURS * 3600
    while True:
        # One shared clock: always step the poller that is due first.
        label, poller, health, cycles = min(pollers, key=lambda p: p[1].next_run())
        due = poller.next_run()
        if due > end:
            break
        clock.t = max(clock.t, due)
        synced = poller.synced_until
        poller.step()
        if poller.synced_until != synced:  # the plan was read to its end
            cycles.append((poller.requests_in_last_plan, health.lag()[(USER, KIND)]))
    rows = []
    for label, poller, _, cycles in pollers:
        lags = [lag for _, lag in cycles]
        rows.append([label, len(cycles), " ".join(str(r) for r, _ in cycles) or "-",
                     " ".join(f"{lag / 60:.0f}" for lag in lags) or "-",
                     f"{poller.clock() - (poller.synced_until or 0):.0f}"])
        needed = PER_HOUR / 12 / poller.page_size
        # Bounded: the last cycles end no further behind than the ones before them.
        trend = "bounded" if len(lags) >= 3 and lags[-1] <= 1.2 * lags[-2] else "growing"
        lag_text = f"{lags[0] / 60:.0f}, max {max(lags) / 60:.0f}, last {lags[-1] / 60:.0f}" if lags else "-"
        goals.note(f"page {label} at the published budget ({budget.requests} req/{budget.per:.0f}s): "
                   f"{len(cycles)} cycles in {BUDGET_HOURS:.0f}h, lag after a cycle (min) first {lag_text} -> "
                   f"{trend}; the new tasks alone need {needed:.1f} requests per 5m")
    print_table(["page", "cycles", "requests per cycle", "lag after each cycle (min)", "lag at end (s)"], rows)


def main() -> int:
    goals = Goals("bench_polling")
    clock = Clock()
    sim = Simulator(clock=clock)
    sim.add_account(USER, "acme-key")
    sim.add_cdn_stream(USER, KIND, per_hour=PER_HOUR, failure_ratio=0.05, start_ts=T0 - 2 * DAY)
    sim.start()
    stores: list[Store] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-polling-") as tmp:
            sides = part_a(sim, clock, Path(tmp), goals)
            stores = [s.store for s in sides]
            part_b(sim, clock, sides, goals)
            for store in stores:
                store.close()
    finally:
        sim.stop()
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
