"""Several exporter processes sharing one PostgreSQL store: one poller per lease, one budget, nothing lost.

Real processes (``python -m exporter.cli``), a real PostgreSQL (the throwaway cluster of conftest.py) and the
vendor simulator, which enforces the published-style budget and logs every request it receives. The clock is
real, so the budget, the poll interval and the lease are seconds long:

* two and three replicas: the holder of the poller is killed with SIGKILL; another takes over within one lease
  period (plus its next attempt), the simulator never saw more requests than the budget allows, polling never
  paused longer than a lease period plus one interval, and what the store holds is what the vendor served;
* every replica's /metrics shows the same task metrics (read from the shared store), each its own leases;
* a burst of signed notifications spread over two replicas while one is killed: every 200 counted once;
* a vendor that trickles its answers while the holder hands its poller over (a reload): no two requests of the
  poller are ever open at the vendor at once (each ends at its deadline, so the lease outlasts it).
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import test_cli
import yaml
from conftest import assert_counts_match_what_was_served
from prometheus_client.parser import text_string_to_metric_families
from test_cli import free_port, wait_for

from exporter.simulator import Simulator
from exporter.storage.repository import open_repository
from exporter.storage.store import Store
from exporter.vendor import signing

start_exporter = test_cli.start_exporter  # the fixture, shared with the CLI tests

pytestmark = pytest.mark.postgres

USER, KEY = "acme", "acme-key"
BUDGET = (1, 2.0)  # one request per two seconds: the vendor's published budget, scaled down
POLL = 2.0
LEASE_TTL = 5.0  # a request timeout of 1s fits: 0.75 * 5 - 1 > 1 + 1
NOTIFY_URL = "https://exporter.example.com/notify/fmgr"
AK, SK = "AK-HA", "SK-HA"


@pytest.fixture
def ha_sim():
    """The vendor, enforcing the budget, with a prefetch stream of one task a second from two minutes ago."""
    sim = Simulator(seed=11, rate_limits={"prefetch": BUDGET})
    sim.add_account(USER, KEY)
    sim.add_cdn_stream(USER, "prefetch", per_hour=3600, failure_ratio=0.1, start_ts=time.time() - 120)
    sim.start()
    yield sim
    sim.stop()


def config(sim_url: str, db_url: str) -> dict[str, Any]:
    return {
        "accounts": [{"name": USER, "username": USER, "api_key": KEY, "endpoint": sim_url}],
        "prefetch": {"poll_interval": f"{POLL:g}s", "rate_limit": {"requests": BUDGET[0], "per": f"{BUDGET[1]:g}s"},
                     "request_timeout": "1s", "windows": ["1m", "1h"], "lookback": "5m", "overlap": "0s"},
        "fmgr": {"enabled": True, "request_timeout": "1s",
                 "notify": {"url": NOTIFY_URL, "keys": [{"access_key": AK, "secret_key": SK}]}},
        "storage": {"url": db_url, "lease_ttl": f"{LEASE_TTL:g}s"},
    }


class Replicas:
    def __init__(self, start: Any, tmp_path: Path, cfg: dict[str, Any]) -> None:
        self.path = tmp_path / "config.yml"
        self.path.write_text(yaml.safe_dump(cfg))
        self.start_exporter = start
        self.procs: dict[int, tuple[Any, Path]] = {}

    def start(self) -> int:
        port = free_port()
        self.procs[port] = self.start_exporter("--config.file", str(self.path),
                                               "--web.listen-address", f"127.0.0.1:{port}")
        proc, log = self.procs[port]
        wait_for("/metrics", lambda: requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).ok, 30, log, proc)
        return port

    def alive(self) -> list[int]:
        return [p for p, (proc, _) in self.procs.items() if proc.poll() is None]

    def kill(self, port: int) -> None:
        proc, _ = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def holders(ports: list[int], api: str) -> list[int]:
    out = []
    for port in ports:
        try:
            if scrape(port).get(("cdnetworks_replica_leases", (("account", USER if api != "fmgr" else ""),
                                                                 ("api", api)))) == 1.0:
                out.append(port)
        except requests.RequestException:
            continue
    return out


def wait_holder(ports: list[int], api: str, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        held = holders(ports, api)
        if len(held) == 1:
            return held[0], time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"no single replica took the {api} poller within {timeout:g}s")


def assert_within_budget(sim: Simulator) -> list[float]:
    """The request times of the prefetch API; never more than the budget in any window of its length."""
    times = sorted(r["ts"] for r in sim.request_log if r["api"] == "prefetch")
    n, per = BUDGET
    for i in range(len(times) - n):
        assert times[i + n] - times[i] >= per - 0.05, ("over budget", times[i:i + n + 1])
    assert sim.rate_limit_violations == 0
    return times


@pytest.mark.parametrize("replicas", [2, 3])
def test_the_holder_dies_and_another_replica_polls_on_within_budget(replicas, ha_sim, postgres_url,
                                                                      start_exporter, tmp_path):
    sim = ha_sim
    began = time.time()
    group = Replicas(start_exporter, tmp_path, config(sim.url, postgres_url))
    ports = [group.start() for _ in range(replicas)]
    holder, _ = wait_holder(ports, "prefetch", LEASE_TTL * 2)
    time.sleep(4 * POLL)
    kills: list[tuple[float, float]] = []  # (kill time, first request after it)
    for _ in range(replicas - 1):  # kill the holder until one replica is left
        killed_at = time.time()
        group.kill(holder)
        holder, _ = wait_holder(group.alive(), "prefetch", LEASE_TTL * 2.5)
        time.sleep(3 * POLL)
        after = [t for t in assert_within_budget(sim) if t > killed_at]
        assert after, "nobody polled after the kill"
        kills.append((killed_at, after[0]))
    times = assert_within_budget(sim)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # The longest pause: a lease period plus the next attempt (a quarter period), plus one budget slot.
    assert max(gaps) <= LEASE_TTL * 1.25 + BUDGET[1] + 1.0, (max(gaps), kills)
    for killed_at, first in kills:
        assert first - killed_at <= LEASE_TTL * 1.25 + BUDGET[1] + 1.0, (first - killed_at)

    # Every live replica shows the same tasks (the shared store) and only the holder runs the poller.
    alive = group.alive()
    for _ in range(20):
        views = [{k: v for k, v in scrape(p).items() if k[0] == "cdnetworks_prefetch_tasks"
                  and ("window", "1h") in k[1]} for p in alive]
        if all(v == views[0] for v in views):
            break
        time.sleep(0.1)
    assert all(v == views[0] for v in views), views
    assert sum(v for v in views[0].values()) > 0
    assert holders(alive, "prefetch") == [holder]

    # What the store holds is what the vendor served (each task by its status when last served), over the
    # tasks created since the start up to the last kill: read by the first holder, or by a successor that
    # went on from the plan its predecessor stored.
    for port in alive:
        test_cli.stop(*group.procs[port])
    store = Store("", repository=open_repository(postgres_url))
    try:
        start, end = began, kills[-1][0] - POLL
        shown = store.cdn_counts_by_status(USER, "prefetch", start, end)
        assert sum(shown.values()) > 0
        assert_counts_match_what_was_served(sim, shown, USER, "prefetch", start, end, "replicas")
    finally:
        store.close()


def assert_no_overlap(sim: Simulator, api: str) -> list[dict[str, Any]]:
    """No two requests to ``api`` were open at the vendor at once: each arrived after the one before had ended
    (an answer still being written has not). The entries, in arrival order."""
    entries = sorted((r for r in sim.request_log if r["api"] == api), key=lambda r: r["ts"])
    for before, after in itertools.pairwise(entries):
        assert "ended" in before and after["ts"] >= before["ended"], ("overlap at the vendor", before, after)
    return entries


def test_a_trickling_vendor_never_sees_two_requests_of_one_poller_at_once(ha_sim, postgres_url,
                                                                          start_exporter, tmp_path):
    """The vendor answers a byte every 0.2 s (faster than the socket's read timeout, 1 s, so only the request's
    deadline ends it) while the holder is reloaded, which hands the poller over (the leases are released and
    taken again, by either replica): the old poller's request ends within request_timeout, before the stop
    that waits for it gives up, so the next holder's requests never overlap it at the vendor; the budget holds
    and polling goes on once the vendor answers normally."""
    fault = "trickle"
    sim = ha_sim
    sim.pace_fault_interval = 0.2
    group = Replicas(start_exporter, tmp_path, config(sim.url, postgres_url))
    ports = [group.start(), group.start()]
    holder, _ = wait_holder(ports, "prefetch", LEASE_TTL * 2)
    time.sleep(2 * POLL)
    sim.inject("prefetch", fault, 2)
    deadline = time.monotonic() + 20
    while sim.open_answers == 0:  # the holder's request is being trickled to now
        assert time.monotonic() < deadline, "the trickle was never served"
        time.sleep(0.02)
    reloaded_at = time.time()
    proc, log = group.procs[holder]
    proc.send_signal(signal.SIGHUP)
    wait_for("the reload", lambda: "configuration reloaded" in log.read_text(), 30, log, proc)
    faulted_at: list[float] = []

    def recovered() -> bool:
        faulted = [r for r in sim.request_log if r["fault"] == fault]
        faulted_at[:] = [r["ts"] for r in faulted]
        return len(faulted) == 2 and any(r["ts"] > max(faulted_at) and r["fault"] is None and r["result"] == "ok"
                                         for r in sim.request_log if r["api"] == "prefetch")

    wait_for("polling to resume after the trickles", recovered, 60, log, proc)
    entries = assert_no_overlap(sim, "prefetch")
    for r in entries:
        if r["fault"] == fault:  # each ended at its deadline (the vendor sees the client hang up)
            assert r["ended"] - r["ts"] <= 1.0 + 0.5, r
    assert min(faulted_at) < reloaded_at < max(r["ended"] for r in entries if r["fault"] == fault)
    assert_within_budget(sim)
    assert sim.wait_answers_closed(2.0)
    for port in group.alive():
        results = {labels: v for (name, labels), v in scrape(port).items()
                   if name == "cdnetworks_api_requests_total" and ("api", "prefetch") in labels}
        assert results[(("api", "prefetch"), ("result", "too_large"))] == 0


def notification(n: int) -> tuple[bytes, str]:
    status = {"id": f"ha-{n:06d}", "code": 3, "desc": "fileOperateSucceed", "separate": 0, "items": [
        {"cmd": "fetch/aHR0cDovL28uZXhhbXBsZS5jb20veA==/bucket/Yg==", "code": 3, "desc": "fileOperateSucceed",
         "error": None, "fsize": 1000 + n, "key": f"k/{n}", "url": f"http://o.example.com/{n}"}]}
    body = base64.urlsafe_b64encode(json.dumps(status, separators=(",", ":")).encode())
    return body, signing.fmgr_notify_authorization(AK, SK, NOTIFY_URL, body)


def send(port: int, numbers: list[int], acked: set[int], lock: threading.Lock) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for n in numbers:
            body, auth = notification(n)
            try:
                conn.request("POST", "/notify/fmgr", body=body, headers={"Authorization": auth})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                return  # the replica is gone: the vendor retries the rest later
            if response.status == 200:
                with lock:
                    acked.add(n)
    finally:
        conn.close()


def test_notifications_spread_over_replicas_are_counted_once_when_one_dies(ha_sim, postgres_url,
                                                                           start_exporter, tmp_path):
    sim = ha_sim
    group = Replicas(start_exporter, tmp_path, config(sim.url, postgres_url))
    a, b = group.start(), group.start()
    total = 3000
    acked: set[int] = set()
    lock = threading.Lock()
    numbers = list(range(total))
    threads = [threading.Thread(target=send, args=(port, numbers[i::4], acked, lock), daemon=True)
               for i, port in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < total // 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    group.kill(a)
    for t in threads:
        t.join(60)
    got_before_kill = set(acked)
    assert 0 < len(got_before_kill) < total, "the kill did not land during the burst"
    # The vendor retries what was not acknowledged, and some deliveries twice, at the survivor.
    retry = [n for n in numbers if n not in got_before_kill] + sorted(got_before_kill)[:200]
    send(b, retry, acked, lock)
    assert acked == set(numbers)
    accepted = scrape(b)[("cdnetworks_fmgr_notifications_total", (("result", "accepted"),))]
    duplicates = scrape(b)[("cdnetworks_fmgr_notifications_total", (("result", "duplicate"),))]
    assert accepted == total, (accepted, len(got_before_kill))
    assert duplicates >= 200
    # A replica started afterwards reads the same counts from the shared store.
    c = group.start()
    assert scrape(c)[("cdnetworks_fmgr_notifications_total", (("result", "accepted"),))] == total
