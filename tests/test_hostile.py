"""Hostile clients against a real running exporter (a child process in ``--demo`` mode on 127.0.0.1).

Each attack is bounded in connections and time and stops by itself; meanwhile Prometheus' side (a scrape of
/metrics every 250 ms) must keep getting 200 within a bound. The p50/p99 each test saw is printed (run with
``-s`` to read it); benchmarks/README.md has the figures of a full run.
"""

from __future__ import annotations

import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import bcrypt
import pytest
import requests
import test_cli
from test_cli import DEMO_WAIT, free_port, posix_signals, reload_state, run_cli, stop, tail, wait_for, write_config

from exporter.demo import DEMO_TOKEN
from exporter.http import server as httpd

start_exporter = test_cli.start_exporter  # the fixture, shared with the CLI tests

SCRAPE_EVERY = 0.25
SCRAPE_BOUND = 2.0  # seconds: far below Prometheus' default 10 s scrape timeout
USER, PASSWORD = "prometheus", "right-password"
PASSWORD_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()  # a realistic cost


class Running:
    def __init__(self, proc, log: Path, url: str) -> None:
        self.proc, self.log, self.url = proc, log, url
        self.port = int(url.rsplit(":", 1)[1])

    def rss_peak_kb(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


@pytest.fixture
def exporter(tmp_path: Path, start_exporter) -> Iterator[Callable[..., Running]]:
    def start(*, basic_auth: bool = False, verify: bool = True, port: int | None = None) -> Running:
        """``verify=False``: wait until it serves without sending the password, so that it has never verified it
        (on a new store); ``port``: the port of an exporter stopped before (a restart)."""
        port = port or free_port()
        args = ["--demo", "--web.listen-address", f"127.0.0.1:{port}", "--storage.path", str(tmp_path / "d.db")]
        if basic_auth:
            web = tmp_path / "web.yml"
            web.write_text(f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n")
            args += ["--web.config.file", str(web)]
        proc, log = start_exporter(*args)
        url = f"http://127.0.0.1:{port}"
        if basic_auth and not verify:
            wait_for("the exporter to serve", lambda: requests.get(url + "/healthz", timeout=5).status_code == 401,
                     DEMO_WAIT, log, proc)
            return Running(proc, log, url)
        auth = (USER, PASSWORD) if basic_auth else None
        wait_for("the exporter to serve", lambda: requests.get(url + "/readyz", auth=auth, timeout=2).ok,
                 DEMO_WAIT, log, proc)
        return Running(proc, log, url)

    yield start


def scrape_while(url: str, attack: Callable[[threading.Event], None], seconds: float,
                 auth: tuple[str, str] | None = None, warmup: float = 1.0) -> list[float]:
    """Run ``attack`` on threads while scraping every 250 ms for ``seconds``; the scrape latencies.

    A scrape that is not 200 within SCRAPE_BOUND fails the test.
    """
    done = threading.Event()
    attacker = threading.Thread(target=attack, args=(done,), daemon=True)
    attacker.start()
    time.sleep(warmup)  # let the attack build up
    latencies: list[float] = []
    failures: list[str] = []
    try:
        with requests.Session() as session:
            session.trust_env = False
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    r = session.get(url + "/metrics", auth=auth, timeout=SCRAPE_BOUND)
                    elapsed = time.monotonic() - t0
                    if r.status_code != 200 or b"cdnetworks_up" not in r.content:
                        failures.append(f"scrape answered {r.status_code}")
                    latencies.append(elapsed)
                except requests.RequestException as exc:
                    failures.append(f"scrape failed after {time.monotonic() - t0:.2f}s: {exc}")
                    latencies.append(time.monotonic() - t0)
                time.sleep(max(0.0, SCRAPE_EVERY - (time.monotonic() - t0)))
    finally:
        done.set()
        attacker.join(30)
    assert not failures, f"{len(failures)} of {len(latencies)} scrapes failed, e.g. {failures[:3]}"
    return latencies


def report(what: str, latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"\n{what}: {len(ordered)} scrapes, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    return p50, p99


# ------------------------------------------------------------------------------------------ slow clients


def slowloris(port: int, connections: int, done: threading.Event) -> None:
    """``connections`` clients that each send one more header byte every 0.5 s, reconnecting when closed."""
    request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10_000
    socks: dict[socket.socket, int] = {}

    def connect() -> None:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
            s.setblocking(False)
            socks[s] = 0
        except OSError:
            pass

    for _ in range(connections):
        connect()
    while not done.wait(0.5):
        for s in list(socks):
            try:
                s.send(request[socks[s]:socks[s] + 1])
                socks[s] += 1
            except OSError:  # closed by the server: come back, as an attacker would
                s.close()
                del socks[s]
                connect()
    for s in socks:
        s.close()


def test_200_slow_clients_do_not_stop_scrapes(exporter) -> None:
    running = exporter()
    latencies = scrape_while(running.url, lambda done: slowloris(running.port, 200, done), 8.0)
    _, p99 = report("/metrics under 200 slow clients", latencies)
    assert p99 < SCRAPE_BOUND


# -------------------------------------------------------------------------------------- password flood


def wrong_password_flood(url: str, clients: int, seconds: float) -> int:
    """``clients`` keep-alive clients sending wrong passwords for ``seconds``; how many requests they sent.

    Run in a child process (see flood_in_child): 200 client threads in the scraping process would make its
    own scrapes wait for the GIL and measure the test rather than the exporter.
    """
    end = time.monotonic() + seconds
    sent = [0] * clients

    def client(i: int) -> None:
        with requests.Session() as s:
            s.trust_env = False
            while time.monotonic() < end:
                try:
                    s.get(url + "/metrics", auth=(USER, f"wrong-{i}-{sent[i]}"), timeout=10)
                    sent[i] += 1
                except requests.RequestException:
                    time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 15)
    return sum(sent)


def flood_in_child(url: str, clients: int, seconds: float) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_hostile; "
            f"print(test_hostile.wrong_password_flood({url!r}, {clients}, {seconds}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_200_wrong_password_clients_do_not_starve_the_right_one(exporter) -> None:
    running = exporter(basic_auth=True)
    flood = flood_in_child(running.url, 200, 11.0)
    try:
        latencies = scrape_while(running.url, lambda done: done.wait(), 8.0, auth=(USER, PASSWORD), warmup=2.0)
    finally:
        out, _ = flood.communicate(timeout=60)
    sent = int(out.strip().splitlines()[-1])
    _, p99 = report(f"/metrics with the right password under 200 wrong-password clients ({sent} sent)", latencies)
    assert sent > 200
    assert p99 < SCRAPE_BOUND
    text = requests.get(running.url + "/metrics", auth=(USER, PASSWORD), timeout=5).text
    failures = sum(float(v) for v in re.findall(r'cdnetworks_web_auth_failures_total\{reason="\w+"\} (\S+)', text))
    assert failures >= sent  # every wrong password was counted
    assert PASSWORD not in running.log.read_text() and PASSWORD not in text


def scrape_attempts(url: str, attempts: int, every: float) -> list[tuple[float, int | str]]:
    """Prometheus with the right password: a scrape every ``every`` seconds, each with a fresh connection and its
    default 10 s timeout; (seconds since the first, status or error) of each."""
    results: list[tuple[float, int | str]] = []
    t0 = time.monotonic()
    for i in range(attempts):
        time.sleep(max(0.0, t0 + i * every - time.monotonic()))
        try:
            r = requests.get(url + "/metrics", auth=(USER, PASSWORD), timeout=10)
            results.append((time.monotonic() - t0, r.status_code))
        except requests.RequestException as exc:
            results.append((time.monotonic() - t0, type(exc).__name__))
    return results


def test_a_password_never_verified_gets_in_under_the_flood_and_after_a_restart(exporter) -> None:
    """Issue 23, item 6: 200 wrong-password clients from the start, on a new store, so the right password was never
    verified: it is in within two scrapes (throttled at most once, then checked ahead of the flood). Then a restart
    during the attack: the password verified before is remembered in the store, so the first scrape gets in."""
    running = exporter(basic_auth=True, verify=False)
    flood = flood_in_child(running.url, 200, 40.0)
    try:
        time.sleep(3.0)  # the flood is at full strength
        cold = scrape_attempts(running.url, 8, 2.0)
        stop(running.proc, running.log)
        restarted = exporter(basic_auth=True, verify=False, port=running.port)
        after_restart = scrape_attempts(restarted.url, 8, 2.0)
        text = requests.get(restarted.url + "/metrics", auth=(USER, PASSWORD), timeout=10).text
    finally:
        out, _ = flood.communicate(timeout=90)
    sent = int(out.strip().splitlines()[-1])
    throttled = re.search(r'cdnetworks_web_auth_failures_total\{reason="throttled"\} (\S+)', text)
    print(f"\nright-password scrapes every 2 s under 200 wrong-password clients ({sent} sent); cold start: "
          f"{cold}; after a restart: {after_restart}; throttled after the restart: "
          f"{throttled.group(1) if throttled else None}")
    assert sent > 200
    assert 200 in (cold[0][1], cold[1][1]), cold  # within two scrape attempts
    first = next(i for i, (_, status) in enumerate(cold) if status == 200)
    assert all(status == 200 for _, status in cold[first:]), cold
    assert all(status == 200 for _, status in after_restart), after_restart
    assert PASSWORD not in running.log.read_text() + restarted.log.read_text()


# ------------------------------------------------------------------------------------------ connection hog


def connection_hog(port: int, connections: int, seconds: float) -> tuple[int, int]:
    """Hold ``connections`` idle connections for ``seconds``, opening a new one whenever one is closed;
    (connections opened, connections the server closed). Run in a child process (see hog_in_child)."""
    import selectors

    end = time.monotonic() + seconds
    sel = selectors.DefaultSelector()
    opened = closed = 0

    def connect() -> None:
        nonlocal opened
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            time.sleep(0.01)
            return
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        opened += 1

    while time.monotonic() < end and len(sel.get_map()) < connections:
        connect()
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(4096)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data:  # closed by the server: come back at once, as a hog would
                sel.unregister(s)
                s.close()  # type: ignore[union-attr]
                closed += 1
        while len(sel.get_map()) < connections and time.monotonic() < end:
            connect()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return opened, closed


def hog_in_child(port: int, connections: int, seconds: float) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_hostile; "
            f"print(*test_hostile.connection_hog({port}, {connections}, {seconds}))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_one_client_holding_more_connections_than_the_limit_does_not_stop_scrapes(exporter) -> None:
    """Issue 23, item 7: one local client keeps about 1,100 idle connections open (the limit is 1,000), re-opening
    each as it is closed. A new connection takes the place of the one idle longest, so the scrapes get in."""
    running = exporter()
    hog = hog_in_child(running.port, 1100, 12.0)
    try:
        latencies = scrape_while(running.url, lambda done: done.wait(), 8.0, warmup=3.0)
    finally:
        out, _ = hog.communicate(timeout=60)
    opened, closed = (int(v) for v in out.split())
    text = requests.get(running.url + "/metrics", timeout=5).text
    found = re.search(r'cdnetworks_web_rejected_requests_total\{reason="too_many_connections"\} (\S+)', text)
    refused = float(found.group(1)) if found else 0.0
    _, p99 = report(f"/metrics while one client holds 1,100 connections ({opened} opened, {closed} closed by the "
                    f"server, too_many_connections {refused:.0f})", latencies)
    assert opened >= 1100 and closed > 0 and refused > 0  # the hog did reach the limit
    assert p99 < SCRAPE_BOUND


def test_at_the_limit_the_connection_idle_longest_makes_room_never_one_with_a_request_in_progress() -> None:
    release = threading.Event()

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ["PATH_INFO"] == "/busy":
            release.wait(20)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    server = httpd.Server(app, "127.0.0.1", 0, threads=4, limits=httpd.Limits(max_connections=16))
    server.start()
    port = server.bind_addr[1]
    url = f"http://127.0.0.1:{port}"
    busy: list[int] = []
    busy_thread = threading.Thread(target=lambda: busy.append(requests.get(url + "/busy", timeout=30).status_code))
    idle: list[socket.socket] = []
    try:
        busy_thread.start()
        time.sleep(0.3)  # a request in progress, on the first connection
        for _ in range(15):  # the limit is reached with 15 idle connections
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            time.sleep(0.02)
        for i in range(5):  # each new one pushes out the oldest idle one, in order, and stays open (keep-alive)
            newcomer = socket.create_connection(("127.0.0.1", port), timeout=5)
            idle.append(newcomer)
            newcomer.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert newcomer.recv(65536).startswith(b"HTTP/1.1 200")
            idle[i].settimeout(5)
            assert idle[i].recv(1) == b"", f"idle connection {i} was not the one closed"
        assert server.connections == 16
        for s in idle[5:]:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)  # still open
        release.set()
        busy_thread.join(10)
        assert busy == [200]  # never closed for a newcomer
        assert server.rejects.snapshot()["too_many_connections"] == 5
    finally:
        release.set()
        for s in idle:
            s.close()
        server.stop()


# --------------------------------------------------------------------------------------- scrapes first


def test_a_scrape_is_served_while_every_worker_is_busy_and_holds_other_requests_only_briefly() -> None:
    """/metrics runs on workers of its own: requests that block every common worker do not delay it. While a
    scrape runs, other requests wait to start, but never longer than ``priority_hold``."""
    release = threading.Event()

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ["PATH_INFO"] == "/busy":
            release.wait(20)
        if environ["PATH_INFO"] == "/metrics" and environ["QUERY_STRING"] == "slow":
            time.sleep(2.0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n"]

    server = httpd.Server(app, "127.0.0.1", 0, threads=2, limits=httpd.Limits(priority_hold=0.5))
    server.start()
    url = f"http://127.0.0.1:{server.bind_addr[1]}"
    busy = [threading.Thread(target=requests.get, args=(url + "/busy",), kwargs={"timeout": 30}) for _ in range(2)]
    try:
        for t in busy:
            t.start()
        time.sleep(0.5)  # both common workers now wait in /busy
        t0 = time.monotonic()
        assert requests.get(url + "/metrics", timeout=10).status_code == 200
        assert time.monotonic() - t0 < 1.0, "the scrape waited for a common worker"
        release.set()
        for t in busy:
            t.join(10)
        scrape = threading.Thread(target=requests.get, args=(url + "/metrics?slow",), kwargs={"timeout": 30})
        scrape.start()
        time.sleep(0.3)  # the slow scrape runs
        t0 = time.monotonic()
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
        held = time.monotonic() - t0
        scrape.join(10)
        assert 0.35 < held < 1.5, f"held {held:.2f}s (priority_hold 0.5s, the scrape lasts 2s)"
    finally:
        release.set()
        server.stop()


# ------------------------------------------------------------------------------------ oversized requests

ROUTES = ["/", "/metrics", "/healthz", "/readyz", "/notify/fmgr", "/api/v1/fmgr/tasks", "/-/reload", "/nope"]


def exchange(port: int, head: bytes, *, body: Iterator[bytes] | None = None, limit: int = 128 * 1024 * 1024,
             timeout: float = 15.0) -> tuple[str, int]:
    """Send ``head`` (and ``body``) until the server answers or closes; (status line, bytes it took)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(head), 65536):
                yield head[i:i + 65536]
            if body is not None:
                yield from body

        try:
            for chunk in chunks():
                s.sendall(chunk)
                sent += len(chunk)
                if sent >= limit:
                    break
        except OSError:
            pass  # the server stopped reading and closed: its answer is waiting
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = s.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    return answer.split(b"\r\n", 1)[0].decode("latin-1"), sent


def test_oversized_heads_and_bodies_on_every_path(exporter) -> None:
    running = exporter()
    port = running.port
    rss_before = running.rss_peak_kb()
    for path in ROUTES:
        line = f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
        if path.startswith("/api/"):  # the token is checked before the body is looked at
            line += f"Authorization: Bearer {DEMO_TOKEN}\r\n".encode()
        # One 64 MB header line: refused after the first few KB, not read to the end.
        status, sent = exchange(port, line + b"X-Big: " + b"a" * (64 * 1024 * 1024) + b"\r\n\r\n")
        assert status.startswith("HTTP/1.1 431"), (path, status)
        assert sent < 64 * 1024 * 1024, (path, sent)
        # 200,000 headers.
        status, _ = exchange(port, line + b"".join(b"X-%d: 1\r\n" % i for i in range(200_000)) + b"\r\n")
        assert status.startswith("HTTP/1.1 431"), (path, status)
        # A request line of 100 KB.
        status, _ = exchange(port, f"GET {path}?{'a' * 100_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status.startswith(("HTTP/1.1 414", "HTTP/1.1 431")), (path, status)
        # A declared 100 MB body: refused without reading it.
        status, _ = exchange(port, line + b"Content-Length: 104857600\r\n\r\n")
        assert status.startswith("HTTP/1.1 413"), (path, status)
        # 100 MB chunked, without Content-Length: cut off at the route's limit.
        chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
        status, sent = exchange(port, line + b"Transfer-Encoding: chunked\r\n\r\n",
                                body=iter([chunk] * 1600), limit=100 * 1024 * 1024)
        assert status.startswith("HTTP/1.1 413"), (path, status)
        # A malformed chunked body and one cut off in the middle: 400, never 500.
        status, _ = exchange(port, line + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
        assert status.startswith("HTTP/1.1 400"), (path, status)
    # Eight concurrent 64 MB header lines.
    big = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 * 1024 * 1024) + b"\r\n\r\n"
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(exchange(port, big)[0])) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(a.startswith("HTTP/1.1 431") for a in answers) and len(answers) == 8, answers
    grown_mb = (running.rss_peak_kb() - rss_before) / 1024
    print(f"\npeak RSS grew by {grown_mb:.1f} MB over all oversized requests")
    assert grown_mb < 50
    assert requests.get(running.url + "/metrics", timeout=5).status_code == 200
    assert "Traceback" not in running.log.read_text()


def test_a_cut_off_chunked_body_is_400_not_500(exporter) -> None:
    running = exporter()
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as s:
        s.sendall(b"POST /notify/fmgr HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc")
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400") or answer == b""
    assert "Traceback" not in running.log.read_text()


# ------------------------------------------------------------------------------------- process faults


@posix_signals
def test_a_reload_of_a_hostile_file_fails_and_sigterm_still_stops(tmp_path: Path, start_exporter, simulator) -> None:
    config = tmp_path / "config.yml"
    write_config(config, simulator.url, ["15m"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, log = start_exporter("--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}",
                               "--storage.path", str(tmp_path / "x.db"))
    wait_for("the exporter to serve", lambda: requests.get(url + "/readyz", timeout=2).ok, DEMO_WAIT, log, proc)
    good = config.read_text()
    config.write_text("a: " + "[" * 1000 + "]" * 1000 + "\n")  # nested 1,000 deep
    proc.send_signal(signal.SIGHUP)
    wait_for("the failed reload", lambda: reload_state(url)[0] == 0, 15, log, proc)
    config.write_text(good.replace("15m", "1h"))
    proc.send_signal(signal.SIGHUP)  # later signals are still handled
    wait_for("the next reload", lambda: reload_state(url)[0] == 1, 15, log, proc)
    t0 = time.monotonic()
    assert stop(proc, log) == 0, tail(log)
    assert time.monotonic() - t0 < 10


def test_check_config_names_hostile_values(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yml"
    deep.write_text("a: " + "[" * 1000 + "]" * 1000 + "\n")
    result = run_cli("--check-config", "--config.file", str(deep))
    assert result.returncode == 2 and "nested too deeply" in result.stderr and "Traceback" not in result.stderr
    long = tmp_path / "long.yml"
    long.write_text("accounts: [{name: a, username: a, api_key: k}]\nprefetch: {request_timeout: 1000000y}\n")
    result = run_cli("--check-config", "--config.file", str(long))
    assert result.returncode == 2, result.stderr
    assert "prefetch.request_timeout" in result.stderr and "too long" in result.stderr
