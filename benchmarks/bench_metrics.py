"""/metrics render time with 1,000,000 stored CDN tasks vs a static registry holding the same series.

The store holds 2 accounts x (prefetch, purge) x 250k tasks spread over the last 3 days (what the
exporter keeps: the API's 3-day reach plus an hour), windows 15m/1h/24h. It is filled fast by inserting
rows straight into its SQLite table in one transaction; the exporter then opens it as after a restart
and rebuilds its in-memory minute buckets from the rows.

The baseline is ``generate_latest`` of a ``CollectorRegistry`` whose one collector yields the very
families the exporter rendered, parsed once up front: the cost of formatting the same series with no
work behind them. Both sides are rendered interleaved, medians of RENDERS renders each:

* warm: the same scrape again (nothing changed, the clock has not moved: window sums cached);
* cold (upsert): one task upserted before each exporter render, so every window sum is recomputed;
* cold (15 s): the clock moves on by a typical scrape interval before each render, nothing written: the
  windows' edges have moved, so their partial minutes are counted again (the interior is cached while the
  minute lasts);
* cold (minute): the clock moves on by a minute before each render (what every scrape after the minute
  turns sees), recomputing the window sums.

Windows are exact, ``(now - W, now]`` to the second, so the clock is kept off the minute (at :27.5): a window
whose edges fall on whole minutes needs no edge count and would flatter the exporter.

Goals: warm exporter/static <= 2x and warm < 50 ms; cold < 50 ms.

    python benchmarks/bench_metrics.py
"""

from __future__ import annotations

import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    DAY,
    T0,
    Clock,
    Goals,
    median_ms,
    p90_ms,
    print_table,
    samples_of,
    static_registry,
    time_interleaved,
)
from prometheus_client import generate_latest

from exporter.app import Exporter
from exporter.config import Config, parse_config
from exporter.storage.store import CdnTask, Store

TASKS = 1_000_000
ACCOUNTS = ("acme", "globex")
KINDS = ("prefetch", "purge")
SPREAD = 3 * DAY
RENDERS = 100
GOAL_RATIO = 2.0
GOAL_MS = 50.0


def make_config(storage: str | dict[str, Any]) -> Config:
    """Two accounts, prefetch and purge; ``storage``: an SQLite path, or a whole storage section."""
    kind = {"enabled": True, "windows": ["15m", "1h", "24h"]}
    return parse_config({
        "accounts": [
            # Never contacted: nothing polls in this benchmark.
            {"name": "acme", "username": "acme", "api_key": "k", "endpoint": "http://127.0.0.1:9"},
            {"name": "globex", "auth": "aksk", "access_key": "ak", "secret_key": "sk",
             "endpoint": "http://127.0.0.1:9"},
        ],
        "prefetch": kind,
        "purge": kind,
        "fmgr": {"enabled": False},
        "storage": storage if isinstance(storage, dict) else {"path": storage},
    })


def task_rows(now: float, rng: random.Random) -> list[tuple[Any, ...]]:
    """Rows of the cdn_tasks table: finished tasks, and waiting/running ones in the last 15 minutes."""
    rows = []
    per_group = TASKS // (len(ACCOUNTS) * len(KINDS))
    for account in ACCOUNTS:
        for kind in KINDS:
            for i in range(per_group):
                create = float(int(now - rng.random() * SPREAD))
                age = now - create
                roll = rng.random()
                if age < 900 and roll < 0.5:
                    status = "wait" if roll < 0.2 else "run"
                    begin = None if status == "wait" else create + 30
                    rows.append((account, kind, f"https://static.example.com/{kind}/{i}.jpg", create, status,
                                 begin, None, None, now))
                    continue
                status = "failure" if roll < 0.05 else "success"
                rate = float(rng.randrange(100)) if status == "failure" else 100.0
                finish = min(now, create + 30 + rng.random() * 600)
                rows.append((account, kind, f"https://static.example.com/{kind}/{i}.jpg", create, status,
                             create + 30, finish, rate, now))
    return rows


def fill(path: str, clock: Clock) -> float:
    """1M rows in one transaction; returns the seconds it took.

    Rows go in primary-key order with the secondary indexes dropped and then rebuilt from their own
    definitions (sorting once is several times faster than a million random index inserts).
    """
    Store(path, clock=clock).close()  # creates the schema
    started = time.perf_counter()
    rows = task_rows(clock(), random.Random(11))
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA cache_size=-262144")  # 256 MiB: the whole table fits, nothing spills mid-transaction
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'cdn_tasks' AND sql IS NOT NULL"
    ).fetchall()
    conn.execute("BEGIN")
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    conn.executemany("INSERT INTO cdn_tasks VALUES (?,?,?,?,?,?,?,?,?)", rows)
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


class Churn:
    """New tasks for the cold runs, as a poll would bring them (also fills counters and histograms)."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store, self.clock, self.n = store, clock, 0

    def upsert_one(self) -> None:
        self.n += 1
        now = self.clock()
        account, kind = ACCOUNTS[self.n % 2], KINDS[(self.n // 2) % 2]
        self.store.upsert_cdn_tasks(account, kind, [CdnTask(f"https://img.example.com/new/{self.n}.jpg",
                                                            now - 120, "success", now - 90, now - 5, 100.0)])

    def next_scrape(self) -> None:
        self.clock.advance(15)

    def next_minute(self) -> None:
        self.clock.advance(60)


def main() -> int:
    goals = Goals("bench_metrics")
    clock = Clock(T0)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        path = str(Path(tmp) / "store.db")
        filled = fill(path, clock)
        started = time.perf_counter()
        exporter = Exporter(make_config(path), listen_address="127.0.0.1:0", clock=clock)
        reopened = time.perf_counter() - started
        try:
            store = exporter.store
            stored = store.cdn_task_count()
            goals.check(stored == TASKS, f"store holds {stored:,} CDN tasks")
            churn = Churn(store, clock)
            clock.advance(27.5)  # off the minute: every window has a partial minute at its far edge
            for _ in range(200):  # finished-task counters and duration histograms with values in them
                churn.upsert_one()
            print(f"{stored:,} CDN tasks: inserted in {filled:.1f}s, store reopened (buckets rebuilt) in "
                  f"{reopened:.1f}s")

            def render() -> bytes:
                return generate_latest(exporter.registry)

            started = time.perf_counter()
            text = render().decode()
            first = time.perf_counter() - started
            static = static_registry(text)

            def render_static() -> bytes:
                return generate_latest(static)

            same = samples_of(text) == samples_of(render_static().decode())
            goals.check(same, f"static registry serves the same {len(samples_of(text))} samples "
                        f"({len(text):,} bytes)")
            print(f"first render after the restart: {first * 1000:.1f} ms; {len(samples_of(text))} samples")

            sides = {"exporter": render, "static": render_static}
            runs = {
                "warm": time_interleaved(sides, RENDERS),
                "cold (upsert)": time_interleaved(sides, RENDERS, {"exporter": churn.upsert_one}),
                "cold (15 s)": time_interleaved(sides, RENDERS, {"exporter": churn.next_scrape}),
                "cold (minute)": time_interleaved(sides, RENDERS, {"exporter": churn.next_minute}),
            }
        finally:
            exporter.store.close()

    rows = []
    for name, samples in runs.items():
        ex, st = median_ms(samples["exporter"]), median_ms(samples["static"])
        rows.append([name, ex, p90_ms(samples["exporter"]), st, p90_ms(samples["static"]), ex / st])
    print()
    print(f"/metrics render, ms (median and p90 of {RENDERS} interleaved renders per side)")
    print_table(["scrape", "exporter", "exporter p90", "static", "static p90", "ratio"], rows)

    warm_ex, warm_st = median_ms(runs["warm"]["exporter"]), median_ms(runs["warm"]["static"])
    goals.check(warm_ex / warm_st <= GOAL_RATIO,
                f"warm: exporter {warm_ex:.2f} ms vs static {warm_st:.2f} ms = {warm_ex / warm_st:.2f}x "
                f"(goal <= {GOAL_RATIO:.0f}x)")
    goals.check(warm_ex < GOAL_MS, f"warm: {warm_ex:.2f} ms (goal < {GOAL_MS:.0f} ms)")
    for name in ("cold (upsert)", "cold (15 s)", "cold (minute)"):
        ms = median_ms(runs[name]["exporter"])
        goals.check(ms < GOAL_MS, f"{name}: {ms:.2f} ms, p90 {p90_ms(runs[name]['exporter']):.2f} ms "
                    f"(goal < {GOAL_MS:.0f} ms)")
    goals.note(f"store reopen with {TASKS:,} tasks (rebuilding the minute buckets) took {reopened:.1f}s")
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
