"""The vendor fault matrix: every fault the simulator can serve, sustained over several requests, then removed.

A real exporter (``Exporter``, its HTTP server on 127.0.0.1:0) polls prefetch tasks from the simulator over
HTTP; one fake clock drives both, and the test steps the exporter's own poller as its schedule asks (no
threads, no sleeping except the real wait of the "timeout" fault). For each fault, seen through ``/metrics``:

* while it lasts: ``cdnetworks_up`` is 0, the window gauges still show the last-good data (what the vendor
  served before the fault, each task by its status when last served), the last-success timestamp stands still;
* every faulted request is counted once under its result class in ``cdnetworks_api_requests_total``;
* the vendor's rate limit (the same as the configured budget) is never exceeded, faults or not;
* after the fault is removed: ``cdnetworks_up`` is 1 again and the windows converge to what the vendor served.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from conftest import T0, Clock, assert_counts_match_what_was_served, make_config
from prometheus_client.parser import text_string_to_metric_families

from exporter import simulator as vendor
from exporter.app import Exporter
from exporter.simulator import Simulator
from exporter.windows import window_start

WINDOWS = {"15m": 900, "1h": 3600}
BUDGET = (10, 60.0)  # requests per seconds, at the vendor and in the config alike
SUSTAIN = 4  # faulted requests in a row

# Seed 002's Code-0 messages (HTTP 200, "Code": 0) and the result class each must be counted as.
SEED_MESSAGES = [
    (vendor.MSG_PARSE_JSON, "bad_request"),
    (vendor.MSG_USERNAME_INVALID, "auth"),
    (vendor.MSG_TIME_EMPTY, "bad_request"),
    (vendor.MSG_TOO_OLD, "bad_request"),
    (vendor.MSG_TIME_ERROR, "bad_request"),
    (vendor.MSG_END_BEFORE_START, "bad_request"),
    (vendor.MSG_PAGE_SIZE, "bad_request"),
    (vendor.MSG_PAGE_NO, "bad_request"),
    (vendor.MSG_STATUS, "bad_request"),
]
FAULTS = [
    ("http500", "server_error"),
    ("http503", "server_error"),  # with Retry-After
    ("http429", "rate_limited"),  # with Retry-After
    ("timeout", "timeout"),
    ("malformed", "malformed"),  # truncated JSON
    ("wrong_types", "malformed"),
    ("empty_page", "malformed"),
    *[(vendor.CODE0_FAULT_PREFIX + m, kind) for m, kind in SEED_MESSAGES],
]


def failed(logged: dict) -> bool:
    """A request the vendor refused or faulted (a timed-out one is answered in full, after the client left)."""
    return logged["fault"] is not None or logged["result"] != "ok"


class Rig:
    """The simulator (its clock may run ahead of the exporter's: Date skew) and an exporter polling it."""

    def __init__(self, clock: Clock, tmp_path) -> None:
        self.clock = clock
        self.skew = 0.0
        self.sim = Simulator(clock=lambda: clock() + self.skew, rate_limits={"prefetch": BUDGET})
        self.sim.add_account("acme", "acme-key")
        self.sim.add_cdn_stream("acme", "prefetch", per_hour=240, failure_ratio=0.1, start_ts=T0 - 3 * 3600)
        self.sim.timeout_fault_seconds = 1.0
        self.sim.start()
        cfg = make_config(self.sim.url, str(tmp_path / "faults.db"), accounts=[
            {"name": "acme", "username": "acme", "api_key": "acme-key", "endpoint": self.sim.url}],
            prefetch={"windows": list(WINDOWS), "lookback": "1h", "page_size": 50, "request_timeout": "500ms",
                      "rate_limit": {"requests": BUDGET[0], "per": f"{BUDGET[1]:g}s"}})
        self.exporter = Exporter(cfg, listen_address="127.0.0.1:0", clock=clock)
        self.exporter.server.start()  # the pollers are stepped by the test, not by their threads
        self.poller = self.exporter.pollers.cdn[0]

    def close(self) -> None:
        self.exporter.stop()
        self.sim.stop()

    def step(self) -> None:
        nr = self.poller.next_run()
        if nr > self.clock():
            self.clock.t = nr
        self.poller.step()

    def catch_up(self, max_steps: int = 2000) -> None:
        for _ in range(max_steps):
            if self.poller.idle():
                return
            self.step()
        raise AssertionError("the poller never caught up")

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        text = requests.get(self.exporter.server.url + "/metrics", timeout=10).text
        return {(s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    def wait_answered(self) -> None:
        """Until the vendor has finished answering every request that arrived (a timed-out one is answered
        late)."""
        deadline = time.monotonic() + 10
        while len(self.sim.request_log) < sum(self.sim.requests.values()):
            assert time.monotonic() < deadline, "the vendor never answered"
            time.sleep(0.02)

    def faulted(self) -> int:
        """Requests the vendor did not answer with data since its counters were reset."""
        return sum(1 for r in self.sim.request_log if failed(r))


@pytest.fixture
def rig(clock, tmp_path) -> Iterator[Rig]:
    r = Rig(clock, tmp_path)
    yield r
    r.close()


def value(m: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in m.items() if n == name and want <= lab)


def up(m: dict) -> float:
    return value(m, "cdnetworks_up", account="acme", api="prefetch")


def requests_by_result(m: dict) -> dict[str, float]:
    return {dict(lab)["result"]: v for (n, lab), v in m.items()
            if n == "cdnetworks_api_requests_total" and dict(lab).get("api") == "prefetch"}


def shown(m: dict, window: str) -> dict[str, int]:
    return {s: int(value(m, "cdnetworks_prefetch_tasks", account="acme", window=window, status=s))
            for s in ("wait", "run", "success", "failure")}


def assert_last_good(sim: Simulator, served_before: dict, m: dict, now: float) -> None:
    """Every window shows exactly what the vendor served before the fault (``served_before``: a copy of
    ``sim.cdn_served`` then; a timed-out answer is served by the vendor but never read), each task by its
    status when last served (a success may also have been learnt from a sweep by state); nothing more, nothing
    wiped."""
    for window, seconds in WINDOWS.items():
        got = shown(m, window)
        served_now, sim.cdn_served = sim.cdn_served, served_before  # no request is in flight here
        try:
            known = sim.cdn_known_truth("acme", "prefetch", window_start(now, seconds), now)
        finally:
            sim.cdn_served = served_now
        assert sum(got.values()) == known["total"], (window, got, known)
        assert got["failure"] == known["failure"], (window, got, known)
        assert 0 <= got["success"] - known["success"] <= known["succeeded_since"], (window, got, known)


def assert_converged(sim: Simulator, m: dict, now: float) -> None:
    for window, seconds in WINDOWS.items():
        assert_counts_match_what_was_served(sim, shown(m, window), "acme", "prefetch", window_start(now, seconds),
                                            now, window)


def sustain(rig: Rig, start_fault, stop_fault, expected: str) -> None:
    """Poll until the vendor has answered SUSTAIN faulted requests, then remove the fault and recover."""
    rig.catch_up()
    rig.clock.advance(300)
    rig.catch_up()
    before = rig.scrape()
    assert up(before) == 1
    assert all(sum(shown(before, w).values()) > 0 for w in WINDOWS)
    last_ok = value(before, "cdnetworks_last_successful_poll_timestamp_seconds", account="acme", api="prefetch")
    counts = requests_by_result(before)
    stored = rig.exporter.store.cdn_task_count("acme", "prefetch")
    rig.clock.advance(300)
    rig.sim.reset_counters()
    served_before = dict(rig.sim.cdn_served)
    start_fault()
    for _ in range(200):
        if rig.faulted() >= SUSTAIN:
            break
        page_size = rig.poller.page_size
        rig.step()
        rig.wait_answered()
        during = rig.scrape()
        assert up(during) == (0 if rig.sim.request_log else 1)
        assert value(during, "cdnetworks_last_successful_poll_timestamp_seconds", account="acme",
                     api="prefetch") == last_ok
        assert_last_good(rig.sim, served_before, during, rig.clock())
        # Backs off (no hot loop), except to retry at once with a smaller page after "page size error".
        assert rig.poller.next_run() > rig.clock() or rig.poller.page_size < page_size
    else:
        raise AssertionError("the fault was never served")
    assert rig.faulted() == SUSTAIN and all(failed(r) for r in rig.sim.request_log), \
        "a request went out between faults"
    assert rig.exporter.store.cdn_task_count("acme", "prefetch") == stored  # nothing lost or wiped
    during = rig.scrape()
    grew = {k: v - counts.get(k, 0) for k, v in requests_by_result(during).items() if v != counts.get(k, 0)}
    assert grew == {expected: SUSTAIN}, grew
    stop_fault()
    # Converges within a few poll intervals (after "page size error" the page is small and grows back again
    # cycle by cycle, so a cycle may end behind the clock at first).
    for _ in range(12):
        rig.catch_up()
        rig.clock.advance(300)
        rig.catch_up()
        after = rig.scrape()
        try:
            assert_converged(rig.sim, after, rig.clock())
            break
        except AssertionError:
            continue
    assert up(after) == 1
    assert value(after, "cdnetworks_last_successful_poll_timestamp_seconds", account="acme",
                 api="prefetch") > last_ok
    assert_converged(rig.sim, after, rig.clock())
    assert rig.sim.rate_limit_violations == 0
    assert "Traceback" not in requests.get(rig.exporter.server.url + "/", timeout=5).text


@pytest.mark.parametrize(("fault", "expected"), FAULTS, ids=[f for f, _ in FAULTS])
def test_a_sustained_vendor_fault_keeps_last_good_data_and_recovers(rig, fault, expected):
    sustain(rig, lambda: rig.sim.inject("prefetch", fault, SUSTAIN), lambda: None, expected)


def test_a_revoked_api_key_is_an_auth_failure_until_it_is_restored(rig):
    sustain(rig, lambda: rig.sim.add_account("acme", "rotated-key"),
            lambda: rig.sim.add_account("acme", "acme-key"), "auth")


def test_a_vendor_clock_far_ahead_refuses_the_date_until_it_is_back(rig):
    def skew() -> None:
        rig.skew = rig.sim.date_skew + 60  # the Date header is now stale at the vendor

    def unskew() -> None:
        rig.skew = 0.0

    sustain(rig, skew, unskew, "auth")
