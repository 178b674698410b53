"""Verified Fmgr notifications accepted per second over local HTTP, and /metrics with 100k Fmgr tasks.

Part A: a real exporter (``exporter.app.Exporter``, config from ``parse_config``, one notify key, a store
in a temp dir, its HTTP server ``exporter.httpd`` on 127.0.0.1:0) runs in a child process, so that the
senders do not share its interpreter lock. The parent pre-builds distinct signed notification bodies
(urlsafe base64 of a status JSON shaped like seed 001's) and sends them with 8 and with 16 threads, one
keep-alive connection each: first with a ``requests.Session`` per thread, then with a stdlib
``http.client`` connection per thread (the sender the goal is judged with: it costs the sending side far
less CPU, and the senders share the two cores with the exporter). The baseline is the
same server answering ``/healthz`` to the same senders: rounds of notifications and rounds of
``/healthz`` alternate, and rates are medians over the rounds. CPU used per request is read for both
processes, so a run says whether the server or the sender set the pace. Every answer must be 200
"accepted", and the exporter's accepted counter must equal the number sent.

Part B: ``/metrics`` of an exporter tracking 100k Fmgr ids (registered over 25 fake hours, 60% of them
with a status of varied ops and codes), against ``generate_latest`` of a static registry holding the
same series; warm, and cold after one status change or a minute boundary.

Part C (no goal): where one notification's server time goes, in one thread without HTTP.

Goals: >= 2,000 notifications/s with ``http.client`` senders at 8 and 16 threads; /metrics with 100k Fmgr
tasks < 50 ms (warm and cold). /metrics while notifications arrive: ``bench_scrape_load.py``.

    python benchmarks/bench_notify.py
"""

from __future__ import annotations

import http.client
import io
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from benchlib import (
    T0,
    Clock,
    Goals,
    median_ms,
    p90_ms,
    print_table,
    samples_of,
    signed_notification,
    static_registry,
    time_interleaved,
)
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config import parse_config
from exporter.fmgr import wire as fmgrwire
from exporter.fmgr.wire import FmgrItem, FmgrStatus

NOTIFY_URL = "https://exporter.example.com/notify/fmgr"  # what the vendor was given, hence what it signs
NOTIFY_PATH = "/notify/fmgr"
ACCESS_KEY, SECRET_KEY = "bench-access-key", "bench-secret-key"
THREAD_COUNTS = (8, 16)
ROUNDS = 5
PER_ROUND = 500  # notifications (and /healthz requests) per round
GOAL_RATE = 2000.0
# Judged with the stdlib sender: a requests sender caps below 1,000/s on its own (see README).
GOAL_TRANSPORT = "http.client"

FMGR_TASKS = 100_000
STATUS_SHARE = 0.6
RENDERS = 60
GOAL_MS = 50.0

OPS = ("fetch", "copy", "move", "delete", "deletePrefix", "compress", "resource", "transcode")
SEED_CMD = "resource/dHJhbnNjb2RlMTA1OnRlc3Rfc3JjX2ZpbGUubXA0/bucket/YnVja2V0/key/dGVzdC5tcDQ="


def config_data(storage: str) -> dict[str, Any]:
    return {
        "prefetch": {"enabled": False},
        "fmgr": {"enabled": True, "windows": ["1h", "24h"],
                 "notify": {"url": NOTIFY_URL, "keys": [{"access_key": ACCESS_KEY, "secret_key": SECRET_KEY}]}},
        "storage": {"path": storage},
    }


# ----------------------------------------------------------------------------------------- part A


def serve_exporter(data: dict[str, Any], pipe: Connection) -> None:
    """Child process: run the exporter until the parent says stop."""
    exporter = Exporter(parse_config(data), listen_address="127.0.0.1:0")
    exporter.start()
    pipe.send(exporter.server.url)
    pipe.recv()
    exporter.stop()
    pipe.send("stopped")


def notification(n: int) -> tuple[bytes, str]:
    return signed_notification(n, prefix="bench", ops=OPS, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                               notify_url=NOTIFY_URL, cmds={"resource": SEED_CMD})


class RequestsTransport:
    """The client the goal is judged with: one ``requests.Session`` (keep-alive) per thread."""

    name = "requests"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def connect(self) -> requests.Session:
        return requests.Session()

    def notify(self, conn: requests.Session, body: bytes, auth: str) -> tuple[int, bytes]:
        r = conn.post(self.base_url + NOTIFY_PATH, data=body, timeout=10, headers={
            "Authorization": auth, "Content-Type": "text/plain; charset=UTF-8"})
        return r.status_code, r.content

    def healthz(self, conn: requests.Session) -> tuple[int, bytes]:
        r = conn.get(self.base_url + "/healthz", timeout=10)
        return r.status_code, r.content

    def close(self, conn: requests.Session) -> None:
        conn.close()


class HttpClientTransport:
    """One stdlib keep-alive connection per thread: a sender that costs the machine far less CPU than
    ``requests``, so that on two shared cores the server, not the sender, sets the pace."""

    name = "http.client"

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def _call(self, conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
              headers: dict[str, str]) -> tuple[int, bytes]:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()

    def notify(self, conn: http.client.HTTPConnection, body: bytes, auth: str) -> tuple[int, bytes]:
        return self._call(conn, "POST", NOTIFY_PATH, body,
                          {"Authorization": auth, "Content-Type": "text/plain; charset=UTF-8"})

    def healthz(self, conn: http.client.HTTPConnection) -> tuple[int, bytes]:
        return self._call(conn, "GET", "/healthz", None, {})

    def close(self, conn: http.client.HTTPConnection) -> None:
        conn.close()


Transport = RequestsTransport | HttpClientTransport


def accepted(status: int, body: bytes) -> bool:
    return status == 200 and json.loads(body).get("result") == "accepted"


def healthy(status: int, body: bytes) -> bool:
    return status == 200


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Clients:
    """THREADS threads, each with its own keep-alive connection, sending one batch at a time."""

    def __init__(self, transport: Transport, threads: int) -> None:
        self.transport = transport
        self.conns = [transport.connect() for _ in range(threads)]
        self.failures: list[str] = []

    def run(self, send: Callable[[Any, Any], tuple[int, bytes]], work: list[Any],
            ok: Callable[[int, bytes], bool]) -> tuple[float, list[float]]:
        """Send every item of ``work``; (wall seconds for the whole batch, per-request latencies)."""
        latencies: list[float] = []
        lock = threading.Lock()

        def worker(conn: Any, part: list[Any]) -> None:
            mine = []
            for item in part:
                started = time.perf_counter()
                try:
                    status, body = send(conn, item)
                except Exception as exc:  # any transport error fails the run; it is recorded, not hidden
                    with lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                mine.append(time.perf_counter() - started)
                if not ok(status, body):
                    with lock:
                        self.failures.append(f"HTTP {status}: {body[:120]!r}")
            with lock:
                latencies.extend(mine)

        n = len(self.conns)
        threads = [threading.Thread(target=worker, args=(c, work[i::n])) for i, c in enumerate(self.conns)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started, latencies

    def close(self) -> None:
        for conn in self.conns:
            self.transport.close(conn)


def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(base_url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def measure(transport: Transport, threads: int, bodies: list[tuple[bytes, str]], server_pid: int,
            goals: Goals) -> list[object]:
    """ROUNDS rounds of PER_ROUND notifications and as many /healthz requests, interleaved; one table row."""
    clients = Clients(transport, threads)
    clients.run(lambda c, _: transport.healthz(c), [None] * 200, healthy)  # open and warm the connections
    rates: dict[str, list[float]] = {"notify": [], "healthz": []}
    lat: dict[str, list[float]] = {"notify": [], "healthz": []}
    cpu: dict[str, float] = {"notify": 0.0, "healthz": 0.0}
    client_cpu: dict[str, float] = {"notify": 0.0, "healthz": 0.0}
    for r in range(ROUNDS):
        batch = bodies[r * PER_ROUND:(r + 1) * PER_ROUND]
        sides: list[tuple[str, Callable[[], tuple[float, list[float]]]]] = [
            ("notify", lambda b=batch: clients.run(lambda c, item: transport.notify(c, *item), b, accepted)),
            ("healthz", lambda: clients.run(lambda c, _: transport.healthz(c), [None] * PER_ROUND, healthy)),
        ]
        for name, side in sides if r % 2 == 0 else reversed(sides):
            before, client_before = cpu_seconds(server_pid), time.process_time()
            seconds, latencies = side()
            after = cpu_seconds(server_pid)
            client_cpu[name] += time.process_time() - client_before
            rates[name].append(PER_ROUND / seconds)
            lat[name].extend(latencies)
            if before is not None and after is not None:
                cpu[name] += after - before
    clients.close()
    label = f"{transport.name}, {threads} threads"
    goals.check(not clients.failures, f"{label}: every request answered 200 (notifications: accepted)"
                + (f"; {len(clients.failures)} failed, first: {clients.failures[0]}" if clients.failures else ""))
    notify_rate, health_rate = statistics.median(rates["notify"]), statistics.median(rates["healthz"])
    cpu_notify = cpu["notify"] / (ROUNDS * PER_ROUND) * 1000
    cpu_health = cpu["healthz"] / (ROUNDS * PER_ROUND) * 1000
    client_notify = client_cpu["notify"] / (ROUNDS * PER_ROUND) * 1000
    text = (f"{label}: {notify_rate:,.0f} notifications/s accepted (median of {ROUNDS} rounds of {PER_ROUND}; "
            f"/healthz {health_rate:,.0f}/s = {health_rate / notify_rate:.2f}x; CPU per notification: server "
            f"{cpu_notify:.2f} ms, sender {client_notify:.2f} ms; server per /healthz {cpu_health:.2f} ms)")
    if transport.name == GOAL_TRANSPORT:
        goals.check(notify_rate >= GOAL_RATE, text + f" (goal >= {GOAL_RATE:,.0f}/s)")
    else:
        goals.note(text)
    return [transport.name, threads, f"{notify_rate:,.0f}", f"{health_rate:,.0f}",
            f"{health_rate / notify_rate:.2f}", f"{median_ms(lat['notify']):.1f}", f"{p90_ms(lat['notify']):.1f}",
            f"{median_ms(lat['healthz']):.1f}", f"{cpu_notify:.2f}", f"{cpu_health:.2f}", f"{client_notify:.2f}"]


def part_a(goals: Goals, tmp: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_exporter, args=(config_data(str(tmp / "notify.db")), child), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not parent.poll(0.2):
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the exporter did not start (child exit code {proc.exitcode})")
        url = parent.recv()
        assert proc.pid is not None
        runs = [(t, n) for t in (RequestsTransport(url), HttpClientTransport(url)) for n in THREAD_COUNTS]
        total = len(runs) * ROUNDS * PER_ROUND
        started = time.perf_counter()
        bodies = [notification(n) for n in range(total)]
        print(f"Part A: exporter at {url} (child process); {total:,} distinct signed notifications built in "
              f"{time.perf_counter() - started:.1f}s ({statistics.mean(len(b) for b, _ in bodies):.0f} bytes avg)")
        rows = []
        per_run = ROUNDS * PER_ROUND
        for i, (transport, threads) in enumerate(runs):
            rows.append(measure(transport, threads, bodies[i * per_run:(i + 1) * per_run], proc.pid, goals))
        print()
        print("requests/s: median over rounds, notify and /healthz rounds interleaved; latency, and CPU used by the "
              "server process and by the sending process, in ms per request")
        print_table(["client", "threads", "notify/s", "healthz/s", "healthz/notify", "notify p50", "notify p90",
                     "healthz p50", "srv CPU notify", "srv CPU healthz", "sender CPU notify"], rows)
        samples = scrape(url)
        got = samples.get(("cdnetworks_fmgr_notifications_total", (("result", "accepted"),)), -1)
        tracked = sum(v for (name, labels), v in samples.items()
                      if name == "cdnetworks_fmgr_tasks" and ("window", "24h") in labels)
        goals.check(got == total == tracked,
                    f"accepted counter {got:.0f} = notifications sent {total} = tasks in the 24h window {tracked:.0f}")
    finally:
        if proc.is_alive():
            parent.send("stop")
            if parent.poll(30):
                parent.recv()
        proc.join(10)
        if proc.is_alive():
            print("the exporter child did not stop within 40s; killing it", file=sys.stderr)
            proc.kill()
            proc.join(5)


# ----------------------------------------------------------------------------------------- part B


def varied_status(task_id: str, rng: random.Random) -> FmgrStatus:
    """A polled status with any task code (and an undocumented one), items of every op and item code."""
    codes = [*fmgrwire.TASK_STATES, 7]
    item_codes = [*fmgrwire.ITEM_STATES, 9]
    items = tuple(
        FmgrItem(op=rng.choice([*OPS, "other"]), code=rng.choice(item_codes),
                 fsize=rng.randrange(1 << 30), error=None)
        for _ in range(rng.randint(1, 3))
    )
    return FmgrStatus(id=task_id, code=rng.choice(codes), separate=0, items=items)


def part_b(goals: Goals, tmp: Path) -> None:
    clock = Clock(T0)
    exporter = Exporter(parse_config(config_data(str(tmp / "fmgr.db"))), listen_address="127.0.0.1:0",
                        clock=clock)
    store = exporter.store
    rng = random.Random(5)
    try:
        started = time.perf_counter()
        ids = [f"z{n:07d}" for n in range(FMGR_TASKS)]
        batches = 100
        step = FMGR_TASKS // batches
        for b in range(batches):  # first seen over 25 fake hours: every window has some
            store.register_fmgr_ids(ids[b * step:(b + 1) * step], "api")
            clock.advance(900)
        registered = time.perf_counter() - started
        started = time.perf_counter()
        for task_id in rng.sample(ids, int(FMGR_TASKS * STATUS_SHARE)):
            store.apply_fmgr_status(varied_status(task_id, rng), source="poll", polled=True)
        applied = time.perf_counter() - started
        print()
        print(f"Part B: {FMGR_TASKS:,} Fmgr ids registered in {registered:.1f}s, statuses applied to "
              f"{STATUS_SHARE:.0%} in {applied:.1f}s")

        def render() -> bytes:
            return generate_latest(exporter.registry)

        text = render().decode()
        static = static_registry(text)

        def render_static() -> bytes:
            return generate_latest(static)

        n_samples = len(samples_of(text))
        goals.check(samples_of(text) == samples_of(render_static().decode()),
                    f"static registry serves the same {n_samples} samples")
        counter = iter(rng.sample(ids, RENDERS))

        def change_one() -> None:
            store.apply_fmgr_status(varied_status(next(counter), rng), source="poll", polled=True)

        sides = {"exporter": render, "static": render_static}
        runs = {
            "warm": time_interleaved(sides, RENDERS),
            "cold (status)": time_interleaved(sides, RENDERS, {"exporter": change_one}),
            "cold (minute)": time_interleaved(sides, RENDERS, {"exporter": lambda: clock.advance(60)}),
        }
    finally:
        store.close()
    rows = []
    for name, s in runs.items():
        ex, st = median_ms(s["exporter"]), median_ms(s["static"])
        rows.append([name, ex, p90_ms(s["exporter"]), st, ex / st])
        goals.check(ex < GOAL_MS, f"/metrics with {FMGR_TASKS:,} Fmgr tasks, {name}: {ex:.2f} ms "
                    f"(static {st:.2f} ms, {ex / st:.1f}x; goal < {GOAL_MS:.0f} ms)")
    print(f"/metrics render, ms ({n_samples} samples; median of {RENDERS} interleaved renders per side)")
    print_table(["scrape", "exporter", "exporter p90", "static", "ratio"], rows)


# ----------------------------------------------------------------------------------------- part C


def part_c(tmp: Path) -> None:
    """Where a notification's server time goes, measured in one thread without HTTP or contention."""
    exporter = Exporter(parse_config(config_data(str(tmp / "inproc.db"))), listen_address="127.0.0.1:0")
    keys = {ACCESS_KEY: SECRET_KEY}
    n = 2000
    sets = [[notification(1_000_000 + k * n + i) for i in range(n)] for k in range(2)]
    statuses = [fmgrwire.parse_status(fmgrwire.decode_notification_body(b)) for b, _ in sets[1]]
    answers: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answers.append(status)

    def wsgi() -> None:
        for body, auth in sets[0]:
            b"".join(exporter.app({"REQUEST_METHOD": "POST", "PATH_INFO": NOTIFY_PATH, "QUERY_STRING": "",
                                   "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
                                   "HTTP_AUTHORIZATION": auth}, start_response))

    def verify_parse() -> None:
        for body, auth in sets[0]:
            fmgrwire.verify_notification(auth, body, NOTIFY_URL, keys)
            fmgrwire.parse_status(fmgrwire.decode_notification_body(body))

    def store_only() -> None:
        for (body, _), status in zip(sets[1], statuses, strict=True):
            exporter.store.record_notification(status, fmgrwire.notification_dedup_key(body), time.time())

    rows = []
    try:
        for name, fn in (("WSGI app, no HTTP (verify, parse, store, answer)", wsgi),
                         ("  verify signature + decode + parse", verify_parse),
                         ("  store.record_notification (one transaction)", store_only)):
            started = time.perf_counter()
            fn()
            rows.append([name, f"{(time.perf_counter() - started) / n * 1e6:.0f}"])
    finally:
        exporter.store.close()
    if set(answers) != {"200 OK"}:
        raise RuntimeError(f"in-process notifications were not all accepted: {sorted(set(answers))}")
    print()
    print(f"Part C: one notification's server work in one thread, no HTTP ({n:,} each, microseconds per call)")
    print_table(["step", "us/notification"], rows)


def main() -> int:
    goals = Goals("bench_notify")
    with tempfile.TemporaryDirectory(prefix="bench-notify-") as tmp:
        part_a(goals, Path(tmp))
        part_b(goals, Path(tmp))
        part_c(Path(tmp))
    return goals.exit_code()


if __name__ == "__main__":
    sys.exit(main())
