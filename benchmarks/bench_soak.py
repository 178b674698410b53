"""Soak: notifications at 200/s, a scrape every second and polling against the simulator, for N minutes.

The exporter runs as it is deployed: ``python -m exporter.cli`` with a config file, a child process on
127.0.0.1, polling prefetch tasks and Fmgr statuses from the vendor simulator (real clock) in this process.
Signed notifications (distinct ids, 1 to 3 items, shaped like seed 001's) are sent at a steady 200/s by four
keep-alive ``http.client`` connections; ``/metrics`` is scraped once a second. The exporter's RSS
(``/proc/<pid>/status`` VmRSS) is read every 5 s.

Checks: every notification answered 200 ``accepted`` and counted once; every scrape 200; the exporter's RSS
at the end within 10% of its RSS after the first minute (the goal of issue 11, reported as measured); and the
steady-state measure proposed in benchmarks/README.md: RSS at the end within 10% of RSS at the end of the
warm-up, which lasts until the CDN poller has read its whole 24 h lookback (``cdnetworks_poll_backfill_
remaining_seconds`` 0) and one more minute has passed (the SQLite page caches, the thread arenas and the minute
buckets of the 24 h back-fill fill up meanwhile: data a deployment keeps, not growth). RSS is also split into
anonymous memory and mapped files. Exits non-zero when a check fails.

    python benchmarks/bench_soak.py [--minutes 10] [--rate 200]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from benchlib import Goals, signed_notification, stop_process, wait_ready
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import Simulator

NOTIFY_URL = "https://exporter.example.com/notify/fmgr"
NOTIFY_PATH = "/notify/fmgr"
ACCESS_KEY, SECRET_KEY = "soak-access-key", "soak-secret-key"
SENDERS = 4
OPS = ("fetch", "copy", "move", "delete", "deletePrefix", "compress")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notification(n: int) -> tuple[bytes, str]:
    return signed_notification(n, prefix="soak", ops=OPS, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                               notify_url=NOTIFY_URL)


def rss_kb(pid: int) -> int:
    return memory_kb(pid)["VmRSS"]


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon, RssFile, RssShmem) of a process, in kB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(m.group(1)) if (m := re.search(rf"{key}:\s+(\d+)", status)) else 0
            for key in ("VmRSS", "RssAnon", "RssFile", "RssShmem")}


def write_config(path: Path, sim_url: str) -> None:
    path.write_text(f"""\
accounts:
  - name: acme
    username: acme
    api_key: acme-key
    endpoint: {sim_url}
prefetch:
  windows: [15m, 1h, 24h]
  poll_interval: 30s
  lookback: 24h
  page_size: 500
  rate_limit: {{requests: 5, per: 1s}}
  request_timeout: 5s
purge:
  enabled: false
fmgr:
  enabled: true
  endpoint: {sim_url}
  windows: [1h, 24h]
  poll_interval: 30s
  rate_limit: {{requests: 20, per: 1s}}
  request_timeout: 5s
  notify:
    url: {NOTIFY_URL}
    keys:
      - access_key: {ACCESS_KEY}
        secret_key: {SECRET_KEY}
""")


class Senders:
    """SENDERS threads sending distinct signed notifications at ``rate`` per second in all, on a schedule."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.rate = port, rate
        self.stop = threading.Event()
        self.sent = [0] * SENDERS
        self.accepted = [0] * SENDERS
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(SENDERS)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        interval = SENDERS / self.rate
        started = time.monotonic()
        n = 0
        while not self.stop.is_set():
            due = started + n * interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body, auth = notification(n * SENDERS + i)
            n += 1
            self.sent[i] += 1
            try:
                conn.request("POST", NOTIFY_PATH, body=body,
                             headers={"Authorization": auth, "Content-Type": "text/plain; charset=UTF-8"})
                response = conn.getresponse()
                answer = response.read()
                if response.status == 200 and json.loads(answer).get("result") == "accepted":
                    self.accepted[i] += 1
                else:
                    with self.lock:
                        self.failures.append(f"HTTP {response.status}: {answer[:100]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.close()


def scrape_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--rate", type=float, default=200.0, help="notifications per second (default 200)")
    args = parser.parse_args()
    goals = Goals("soak")
    seconds = args.minutes * 60
    first_minute = min(60.0, seconds / 2)

    sim = Simulator(seed=11, rate_limits={"prefetch": (5, 1.0), "fmgr": (20, 1.0)})
    sim.add_account("acme", "acme-key")
    sim.add_cdn_stream("acme", "prefetch", per_hour=3000, failure_ratio=0.05, start_ts=time.time() - 86400)
    sim.add_fmgr_stream(per_minute=30, start_ts=time.time() - 600)
    sim.start()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    config = tmp / "config.yml"
    write_config(config, sim.url)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "exporter.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDNETWORKS_EXPORTER_")}
    proc = subprocess.Popen([sys.executable, "-m", "exporter.cli", "--config.file", str(config),
                             "--web.listen-address", f"127.0.0.1:{port}", "--storage.path", str(tmp / "soak.db")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    senders = Senders(port, args.rate)
    scrapes: list[float] = []
    scrape_failures: list[str] = []
    rss: list[tuple[float, int]] = []
    parts: list[tuple[float, dict[str, int]]] = []
    backfill_done: float | None = None  # when the CDN poller had read its whole lookback
    try:
        wait_ready(url, proc, tmp / "exporter.log")
        print(f"exporter pid {proc.pid} at {url}; simulator at {sim.url}; {args.minutes:g} min at "
              f"{args.rate:g} notifications/s, a scrape every second, polling prefetch and Fmgr")
        senders.start()
        started = time.monotonic()
        next_rss = started
        with requests.Session() as session:
            session.trust_env = False
            while (now := time.monotonic()) < started + seconds:
                if now >= next_rss:
                    mem = memory_kb(proc.pid)
                    rss.append((now - started, mem["VmRSS"]))
                    parts.append((now - started, mem))
                    next_rss += 5.0
                    if len(rss) % 12 == 1:
                        sent = sum(senders.sent)
                        print(f"  t={now - started:6.0f}s  RSS {rss[-1][1] / 1024:6.1f} MB  notifications sent "
                              f"{sent:,}  scrapes {len(scrapes)}", flush=True)
                t0 = time.monotonic()
                try:
                    r = session.get(url + "/metrics", timeout=5)
                    if r.status_code != 200:
                        scrape_failures.append(f"HTTP {r.status_code}")
                    elif backfill_done is None:
                        remaining = [v for (name, _), v in scrape_values(r.text).items()
                                     if name == "cdnetworks_poll_backfill_remaining_seconds"]
                        if remaining and not any(remaining):
                            backfill_done = time.monotonic() - started
                except requests.RequestException as exc:
                    scrape_failures.append(str(exc))
                scrapes.append(time.monotonic() - t0)
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        elapsed = time.monotonic() - started
        senders.join()
        rss.append((time.monotonic() - started, rss_kb(proc.pid)))
        time.sleep(1.0)
        values = scrape_values(requests.get(url + "/metrics", timeout=10).text)
    finally:
        senders.stop.set()
        stop_process(proc)
        log.close()
        sim.stop()

    sent, accepted = sum(senders.sent), sum(senders.accepted)
    counted = values.get(("cdnetworks_fmgr_notifications_total", (("result", "accepted"),)), -1.0)
    polls = sum(v for (name, _), v in values.items() if name == "cdnetworks_api_requests_total")
    after_first = next(kb for t, kb in rss if t >= first_minute)
    end_kb = rss[-1][1]
    peak_kb = max(kb for _, kb in rss)
    ordered = sorted(scrapes)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    growth = (end_kb - after_first) / after_first
    print()
    print(f"ran {elapsed:.0f}s: {sent:,} notifications sent ({sent / elapsed:.0f}/s), {accepted:,} accepted, "
          f"counter {counted:,.0f}; {len(scrapes)} scrapes, p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
          f"{polls:,.0f} vendor requests by the pollers; rate-limit violations at the vendor: "
          f"{sim.rate_limit_violations}")
    print(f"RSS: start {rss[0][1] / 1024:.1f} MB, after {first_minute:.0f}s {after_first / 1024:.1f} MB, "
          f"peak {peak_kb / 1024:.1f} MB, end {end_kb / 1024:.1f} MB ({growth:+.1%} over the first-minute figure)")
    log_text = (tmp / "exporter.log").read_text(errors="replace")
    goals.check(not senders.failures, f"every notification answered 200 accepted ({len(senders.failures)} not; "
                f"first: {senders.failures[:2]})")
    goals.check(accepted == sent == counted, f"accepted counter {counted:,.0f} = accepted {accepted:,} = sent {sent:,}")
    goals.check(not scrape_failures, f"every scrape 200 ({len(scrape_failures)} not: {scrape_failures[:2]})")
    goals.check(sim.rate_limit_violations == 0, f"vendor rate-limit violations {sim.rate_limit_violations}")
    goals.check("Traceback" not in log_text, "no traceback in the exporter's log")
    goals.check(abs(growth) <= 0.10, f"RSS at the end {end_kb / 1024:.1f} MB within 10% of RSS after the first "
                f"minute {after_first / 1024:.1f} MB ({growth:+.1%}); peak {peak_kb / 1024:.1f} MB")
    warm = max(first_minute, backfill_done if backfill_done is not None else seconds) + 60.0
    warm_kb = next((kb for t, kb in rss if t >= warm), end_kb)
    warm_growth = (end_kb - warm_kb) / warm_kb
    backfill_text = f"{backfill_done:.0f} s" if backfill_done is not None else "never"
    goals.check(backfill_done is not None and warm < seconds and abs(warm_growth) <= 0.10,
                f"steady state: RSS at the end {end_kb / 1024:.1f} MB within 10% of RSS at the end of the warm-up "
                f"({warm:.0f} s: back-fill read after {backfill_text}, plus a minute) {warm_kb / 1024:.1f} MB "
                f"({warm_growth:+.1%})")
    half_kb = next(kb for t, kb in rss if t >= seconds / 2)
    goals.note(f"RSS over the second half: {half_kb / 1024:.1f} MB -> {end_kb / 1024:.1f} MB "
               f"({(end_kb - half_kb) / half_kb:+.1%}; {(end_kb - half_kb) / 1024 / (seconds / 2 / 60):+.2f} MB "
               f"a minute)")
    first_parts = next(m for t, m in parts if t >= first_minute)
    last_parts = parts[-1][1]
    goals.note("RSS parts after the first minute -> at the end: " + ", ".join(
        f"{key} {first_parts[key] / 1024:.1f} -> {last_parts[key] / 1024:.1f} MB"
        for key in ("RssAnon", "RssFile", "RssShmem")))
    print("RSS every minute (MB): " + ", ".join(f"{t:.0f}s {kb / 1024:.1f}" for t, kb in rss
                                                 if round(t) % 60 < 5))
    goals.note(f"/metrics p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(scrapes)} scrapes")
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
