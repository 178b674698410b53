"""The task browser with 1,000,000 stored CDN tasks: a page costs about what a scrape costs, whatever the store holds,
and scrapes stay fast while pages are requested.

The store is bench_metrics.py's: 2 accounts x (prefetch, purge) x 250k tasks over the last 3 days, 5% of them
failed, the newest 15 minutes half unfinished; the exporter opens it as after a restart.

* **Part A** (in process, the WSGI app called directly, so that only the work is timed): each page, interleaved
  with a cold ``/metrics`` render (the clock moved 15 s before it, as between two scrapes; bench_metrics.py's
  usual case), medians of ROUNDS each, and the ratio page/scrape. Pages: the failures of a day across both
  accounts and kinds (the alert's page), the same as JSON, every status of a day at 1,000 rows a page (the
  largest page), a page fifty pages deep (cost does not grow with depth), the stuck tasks, and a url substring
  filter (the bounded scan: at most 50,000 index entries read, then the hits' rows).
  **Goals: a 100-row page <= 3x a cold scrape; 50 pages deep <= 2x page 1; 1,000 rows <= 12x 100 rows; the
  1,000-row page <= 30x and the url filter page <= 40x a scrape.**
* **Part B** (over HTTP, the exporter's own server): scrape latency alone, then while 12 threads request the
  1,000-row page in a loop, honouring the Retry-After of a 503 (the slow lane takes 8 at once).
  **Goal: median scrape under page load <= 3x alone.**

    python benchmarks/bench_browser.py     # ~2 min
"""

from __future__ import annotations

import io
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from bench_metrics import TASKS, fill, make_config
from benchlib import T0, Clock, Goals, median_ms, p90_ms, print_table, time_interleaved
from prometheus_client import generate_latest

from exporter.app import Exporter
from exporter.http import browse

ROUNDS = 40
PAGE_RATIO = 3.0  # a 100-row page against a cold scrape
GOALS = {"1,000 rows, every status": 30.0, "url filter (bounded scan)": 40.0}  # pages that read more, by design
DEPTH_RATIO = 2.0
ROWS_RATIO = 12.0
LOAD_RATIO = 3.0
LOOPERS = 12


def wsgi_get(app: Any, path: str, query: str = "") -> tuple[str, bytes]:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "bench",
               "SERVER_PORT": "0", "wsgi.input": io.BytesIO(b""), "wsgi.url_scheme": "http"}
    got: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: got.append(status)))
    return got[0], body


def main() -> int:
    goals = Goals("bench_browser")
    clock = Clock(T0)
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        path = str(Path(tmp) / "store.db")
        filled = fill(path, clock)
        exporter = Exporter(make_config(path), listen_address="127.0.0.1:0", clock=clock)
        try:
            stored = exporter.store.cdn_task_count()
            goals.check(stored == TASKS, f"store holds {stored:,} CDN tasks (inserted in {filled:.0f} s)")
            clock.advance(27.5)
            app = exporter.app
            # A cursor ten pages deep, taken the way a client takes it: from each page's "next".
            deep = ""
            for _ in range(50):
                status, body = wsgi_get(app, "/api/v1/cdn/tasks", "window=24h" + (f"&cursor={deep}" if deep else ""))
                deep = __import__("json").loads(body)["next"]
            pages = {
                "failures of a day (alert)": ("/tasks", "status=failure&window=24h"),
                "same, JSON": ("/api/v1/cdn/tasks", "status=failure&window=24h"),
                "every status, page 1": ("/tasks", "window=24h"),
                "every status, 50 pages deep": ("/tasks", f"window=24h&cursor={deep}"),
                "1,000 rows, every status": ("/tasks", "window=24h&limit=1000"),
                "stuck tasks": ("/tasks", "stuck"),
                "url filter (bounded scan)": ("/tasks", "window=24h&url=/purge/12345"),
            }
            for name, (p, q) in pages.items():
                status, body = wsgi_get(app, p, q)
                goals.check(status.startswith("200"), f"{name}: {status}, {len(body):,} bytes")
            text = wsgi_get(app, "/tasks", "window=24h&url=/purge/12345")[1].decode()
            goals.check("reads at most" in text, "the url filter page says its scan stopped at the bound")

            def scrape() -> bytes:
                return generate_latest(exporter.registry)

            rows = []
            medians: dict[str, float] = {}
            for name, (p, q) in pages.items():
                def page(p: str = p, q: str = q) -> object:
                    return wsgi_get(app, p, q)

                runs = time_interleaved({"page": page, "scrape": scrape}, ROUNDS,
                                        {"scrape": lambda: clock.advance(15)})
                medians[name] = median_ms(runs["page"])
                ratio = medians[name] / median_ms(runs["scrape"])
                rows.append((name, medians[name], p90_ms(runs["page"]), median_ms(runs["scrape"]), ratio))
                bound = GOALS.get(name, PAGE_RATIO)
                goals.check(ratio <= bound, f"{name}: page {medians[name]:.1f} ms = {ratio:.2f}x a cold scrape "
                            f"({median_ms(runs['scrape']):.1f} ms) (goal <= {bound:g}x)")
            print(f"\nPart A: pages vs a cold /metrics render, {stored:,} stored tasks, medians of {ROUNDS}")
            print_table(("page", "page ms", "page p90 ms", "scrape ms", "page/scrape"), rows)
            depth = medians["every status, 50 pages deep"] / medians["every status, page 1"]
            goals.check(depth <= DEPTH_RATIO, f"50 pages deep costs {depth:.2f}x page 1 (goal <= {DEPTH_RATIO:g}x: "
                        "a cursor is a range seek)")
            per_row = medians["1,000 rows, every status"] / medians["every status, page 1"]
            goals.check(per_row <= ROWS_RATIO, f"1,000 rows cost {per_row:.1f}x 100 rows (goal <= {ROWS_RATIO:g}x: "
                        "linear in the rows shown, not in the rows stored)")

            # Part B: over HTTP.
            exporter.server.start()
            url = exporter.server.local_url
            session = requests.Session()

            def scrapes(n: int) -> list[float]:
                out = []
                for _ in range(n):
                    started = time.perf_counter()
                    r = session.get(url + "/metrics", timeout=30)
                    out.append(time.perf_counter() - started)
                    assert r.status_code == 200
                return out

            scrapes(5)
            alone = scrapes(60)
            stop = threading.Event()
            statuses: list[int] = []

            def loop() -> None:
                with requests.Session() as s:
                    deadline = time.monotonic() + 120
                    while not stop.is_set() and time.monotonic() < deadline:
                        r = s.get(url + "/tasks", params={"window": "24h", "limit": 1000}, timeout=60)
                        statuses.append(r.status_code)
                        if r.status_code == 503:  # as a browser or a script that honours Retry-After
                            stop.wait(float(r.headers.get("Retry-After", "1")))

            threads = [threading.Thread(target=loop) for _ in range(LOOPERS)]
            for t in threads:
                t.start()
            time.sleep(2)
            loaded = scrapes(60)
            stop.set()
            for t in threads:
                t.join(130)
            served, busy = statuses.count(200), statuses.count(503)
            ratio = median_ms(loaded) / median_ms(alone)
            print(f"\nPart B: scrapes over HTTP, alone and while {LOOPERS} threads request the 1,000-row page")
            print_table(("", "median ms", "p90 ms"),
                        [("alone", median_ms(alone), p90_ms(alone)), ("under page load", median_ms(loaded),
                                                                       p90_ms(loaded))])
            print(f"pages meanwhile: {served} served, {busy} answered 503 (slow lane full), "
                  f"{len(statuses) - served - busy} other")
            goals.check(len(statuses) == served + busy and served > 0, f"pages under load: {served} x 200, "
                        f"{busy} x 503, nothing else")
            goals.check(ratio <= LOAD_RATIO, f"median scrape under page load {median_ms(loaded):.1f} ms = "
                        f"{ratio:.2f}x alone ({median_ms(alone):.1f} ms) (goal <= {LOAD_RATIO:g}x)")
            goals.note(f"url filter scan bound: {browse.SCAN_ROWS:,} rows a page")
        finally:
            exporter.stop()
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
