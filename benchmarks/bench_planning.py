"""The cost of planning re-reads: one plan (``Planner._build_plan``) over a store of 100k tasks a day with 2,000
of them unfinished (the newest quarter hour and 1% spread over the day, as slow tasks are), against the time
between two requests at 25 a minute, the budget where plans are made most often (about two per request).

Goal: a plan costs under 5% of a request slot (2.4 s at 25 a minute), so that planning never competes with the
requests it plans. Before the bisection was bounded by the observed rate it cost 1.2 s here (half a slot).

    python benchmarks/bench_planning.py
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from benchlib import Goals, print_table

from exporter.polling.cdn_poller import _TaskView
from exporter.polling.planner import Planner
from exporter.storage.model import CdnTask
from exporter.storage.store import Store

T0 = 1795334400.0
PER_DAY = 100_000
SLOT = 60 / 25  # seconds between requests at 25 a minute
RUNS = 5


def main() -> int:
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "db.sqlite"), clock=lambda: T0)
        try:
            tasks = []
            for i in range(PER_DAY):
                created = float(int(T0 - rng.uniform(0, 86400)))
                unfinished = created > T0 - 900 or rng.random() < 0.01
                tasks.append(CdnTask(url=f"https://x.example/{i}", create_ts=created,
                                     status="run" if unfinished else "success"))
            for k in range(0, len(tasks), 5000):
                store.upsert_cdn_tasks("acme", "prefetch", tasks[k:k + 5000])
            view = _TaskView(store, "acme", "prefetch")
            unfinished = len(store.cdn_unfinished("acme", "prefetch", T0 - 3 * 86400, T0))
            planner = Planner(poll_interval=10, overlap=300, lookback=86400, shortest_window=900,
                              longest_window=86400, max_query_age=3 * 86400, page_size=500, head=int(T0),
                              rate=PER_DAY / 86400, slot=SLOT)
            started = time.perf_counter()
            for k in range(RUNS):
                planner._plan = None
                parts = planner._build_plan(T0 + k, view) or []
            per_plan = (time.perf_counter() - started) / RUNS
        finally:
            store.close()
    share = per_plan / SLOT
    print_table(["tasks", "unfinished", "parts", "plan ms", "share of a slot at 25/min"],
                [[PER_DAY, unfinished, len(parts), f"{per_plan * 1000:.1f}", f"{share:.1%}"]])
    goals = Goals("planning")
    goals.check(share < 0.05, f"a plan costs {per_plan * 1000:.1f} ms, {share:.1%} of a request slot at 25 a minute "
                "(goal < 5%)")
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
