"""The vendor fault matrix: every fault the simulator can serve, sustained over several requests, then removed.

Two APIs: the CDN task query (prefetch) and the Fmgr status API (``GET /fmgr/status``), each in its own rig.

A real exporter (``Exporter``, its HTTP server on 127.0.0.1:0) polls prefetch tasks from the simulator over
HTTP; one fake clock drives both, and the test steps the exporter's own poller as its schedule asks (no
threads, no sleeping except the real wait of the "timeout" fault). For each fault, seen through ``/metrics``:

* while it lasts: ``cdnetworks_up`` is 0, the window gauges still show the last-good data (what the vendor
  served before the fault, each task by its status when last served), the last-success timestamp stands still;
* every faulted request is counted once under its result class in ``cdnetworks_api_requests_total``;
* the vendor's rate limit (the same as the configured budget) is never exceeded, faults or not;
* after the fault is removed: ``cdnetworks_up`` is 1 again and the windows converge to what the vendor served.

The Fmgr rig tracks ids registered through the exporter's own registration API and steps its Fmgr poller; there
the last-good data is every Fmgr gauge as scraped before the fault (tasks and items by window and code, pending
tasks), the budget is the configured Fmgr rate limit (enforced by the vendor too), and the truth after recovery
is the vendor's current status of every registered id.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import requests
from conftest import T0, Clock, assert_counts_match_what_was_served, make_config
from prometheus_client.parser import text_string_to_metric_families

from exporter import simulator as vendor
from exporter.app import Exporter
from exporter.metrics.windows import window_start
from exporter.polling.budget import BASE_BACKOFF, MAX_BACKOFF
from exporter.simulator import Simulator

WINDOWS = {"15m": 900, "1h": 3600}
BUDGET = (10, 60.0)  # requests per seconds, at the vendor and in the config alike
SUSTAIN = 4  # faulted requests in a row
# The paced faults send a byte this often (real seconds): faster than any request timeout here, so only the
# request's own deadline can end them. A step that meets any fault must end within its request timeout and
# this much more (the store's writes included).
PACE = 0.1
STEP_MARGIN = 0.5

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
    # Paced answers (headers then a byte at a time, headers then nothing, headers a byte at a time) and a
    # 400 MB answer, with its Content-Length and chunked.
    ("trickle", "timeout"),
    ("stall", "timeout"),
    ("trickle_headers", "timeout"),
    ("huge", "too_large"),
    ("huge_chunked", "too_large"),
    *[(vendor.CODE0_FAULT_PREFIX + m, kind) for m, kind in SEED_MESSAGES],
]


def failed(logged: dict) -> bool:
    """A request the vendor refused or faulted (a timed-out one is answered in full, after the client left)."""
    return logged["fault"] is not None or logged["result"] != "ok"


class _Rig:
    """What both rigs share: a simulator, an exporter serving /metrics, and what the vendor saw."""

    sim: Simulator
    exporter: Exporter

    def close(self) -> None:
        self.exporter.stop()
        self.sim.stop()

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


class Rig(_Rig):
    """The simulator (its clock may run ahead of the exporter's: Date skew) and an exporter polling it."""

    def __init__(self, clock: Clock, tmp_path) -> None:
        self.clock = clock
        self.skew = 0.0
        self.sim = Simulator(clock=lambda: clock() + self.skew, rate_limits={"prefetch": BUDGET})
        self.sim.add_account("acme", "acme-key")
        self.sim.add_cdn_stream("acme", "prefetch", per_hour=240, failure_ratio=0.1, start_ts=T0 - 3 * 3600)
        self.sim.timeout_fault_seconds = 1.0
        self.sim.pace_fault_interval = PACE
        self.sim.start()
        cfg = make_config(self.sim.url, str(tmp_path / "faults.db"), accounts=[
            {"name": "acme", "username": "acme", "api_key": "acme-key", "endpoint": self.sim.url}],
            prefetch={"windows": list(WINDOWS), "lookback": "1h", "page_size": 50, "request_timeout": "500ms",
                      "rate_limit": {"requests": BUDGET[0], "per": f"{BUDGET[1]:g}s"}})
        self.exporter = Exporter(cfg, listen_address="127.0.0.1:0", clock=clock)
        self.exporter.server.start()  # the pollers are stepped by the test, not by their threads
        self.poller = self.exporter.pollers.cdn[0]

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
        started = time.monotonic()
        rig.step()
        took = time.monotonic() - started
        assert took <= rig.poller.cfg.request_timeout + STEP_MARGIN, f"a step took {took:.2f}s"
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


# --------------------------------------------------------------------------------------------------
# The Fmgr status API

FMGR_BUDGET = (5, 10.0)  # requests per seconds, at the vendor and in the config alike
FMGR_TOKEN = "fault-matrix-token"
FMGR_WINDOWS = ("1h", "24h")
FMGR_FAULTS = [
    ("http500", "server_error"),
    ("http503", "server_error"),  # HTML-less 5xx with Retry-After: 2
    ("http429", "rate_limited"),  # the seed's failure body {"code": 429, "message": ...} with Retry-After: 1
    ("http404", "malformed"),  # a bare 404, no failure body: a wrong endpoint or path, not an unknown id
    ("timeout", "timeout"),
    ("malformed", "malformed"),  # truncated JSON
    ("wrong_types", "malformed"),  # "items" is a string
    # {"code": 0, "message": ...} at HTTP 200: not the seed's failure body (its code is an HTTP status) and not a
    # status either (no id).
    (vendor.CODE0_FAULT_PREFIX + "system busy", "malformed"),
    # Seed 000's failure body {"code": "<httpCode>", "message": ...}: at its own HTTP status, and inside an
    # HTTP 200, where the body's code is the statement that counts.
    ("failure:401", "auth"),
    ("failure:403", "auth"),
    ("failure:502", "server_error"),
    ("failure:500@200", "server_error"),
    ("trickle", "timeout"),
    ("stall", "timeout"),
    ("trickle_headers", "timeout"),
    ("huge", "too_large"),
    ("huge_chunked", "too_large"),
]
# What /metrics says about the tracked tasks: the last-good data a fault must leave alone.
FMGR_DATA = ("cdnetworks_fmgr_tasks", "cdnetworks_fmgr_items", "cdnetworks_fmgr_success_ratio",
             "cdnetworks_fmgr_pending_tasks", "cdnetworks_fmgr_processed_bytes_total")


class FmgrRig(_Rig):
    """A simulator serving a stream of Fmgr tasks (two a minute, half a minute to two minutes of work each, no
    notifyURL: they end at code 3) and an exporter polling the ids registered through its API."""

    def __init__(self, clock: Clock, tmp_path) -> None:
        self.clock = clock
        self.skew = 0.0
        self.sim = Simulator(clock=lambda: clock() + self.skew, rate_limits={"fmgr": FMGR_BUDGET})
        self.sim.add_account("acme", "acme-key")
        self.sim.add_fmgr_stream(per_minute=2.0, start_ts=T0 - 1800, failure_ratio=0.25)
        self.sim.timeout_fault_seconds = 0.6
        self.sim.pace_fault_interval = PACE
        self.sim.start()
        cfg = make_config(self.sim.url, str(tmp_path / "fmgr-faults.db"), prefetch={"enabled": False}, fmgr={
            "enabled": True, "endpoint": self.sim.url, "windows": list(FMGR_WINDOWS), "poll_interval": "30s",
            "request_timeout": "300ms", "notify_grace": "0s", "register_token": FMGR_TOKEN,
            "rate_limit": {"requests": FMGR_BUDGET[0], "per": f"{FMGR_BUDGET[1]:g}s"}})
        self.exporter = Exporter(cfg, listen_address="127.0.0.1:0", clock=clock)
        self.exporter.server.start()  # the poller is stepped by the test, not by its thread
        self.poller = self.exporter.pollers.fmgr
        self.registered: list[str] = []

    def register_new(self) -> list[str]:
        """Register every id the vendor has created since the last call, through the registration API."""
        new = [pid for pid in self.sim.fmgr_ids() if pid not in set(self.registered)]
        response = requests.post(self.exporter.server.url + "/api/v1/fmgr/tasks", json={"persistentIds": new},
                                 headers={"Authorization": f"Bearer {FMGR_TOKEN}"}, timeout=10)
        assert response.status_code == 200, response.text
        self.registered += new
        return new

    def step(self) -> None:
        self.clock.t = max(self.clock.t, self.poller.next_run())
        self.poller.step()

    def run_until(self, until: float, max_steps: int = 2000) -> None:
        for _ in range(max_steps):
            if self.poller.next_run() > until:
                self.clock.t = max(self.clock.t, until)
                return
            self.step()
        raise AssertionError("the poller keeps asking to run: hot loop")


@pytest.fixture
def fmgr_rig(clock, tmp_path) -> Iterator[FmgrRig]:
    r = FmgrRig(clock, tmp_path)
    yield r
    r.close()


def fmgr_up(m: dict) -> float:
    return value(m, "cdnetworks_up", account="", api="fmgr")


def fmgr_last_ok(m: dict) -> float:
    return value(m, "cdnetworks_last_successful_poll_timestamp_seconds", account="", api="fmgr")


def fmgr_requests_by_result(m: dict) -> dict[str, float]:
    return {dict(lab)["result"]: v for (n, lab), v in m.items()
            if n == "cdnetworks_api_requests_total" and dict(lab).get("api") == "fmgr"}


def fmgr_data(m: dict) -> dict[tuple[str, frozenset], float]:
    return {k: v for k, v in m.items() if k[0] in FMGR_DATA}


def fmgr_shown(m: dict, window: str) -> tuple[Counter, Counter]:
    """Tasks by code and items by (op, code) that /metrics shows in ``window`` (zeros left out)."""
    tasks: Counter[str] = Counter()
    items: Counter[tuple[str, str]] = Counter()
    for (name, lab), v in m.items():
        labels = dict(lab)
        if v and labels.get("window") == window:
            if name == "cdnetworks_fmgr_tasks":
                tasks[labels["code"]] += int(v)
            elif name == "cdnetworks_fmgr_items":
                items[(labels["op"], labels["code"])] += int(v)
    return tasks, items


def fmgr_truth(sim: Simulator, ids: list[str]) -> tuple[Counter, Counter]:
    """What the vendor says now about ``ids``: tasks by code, items by (op, code)."""
    tasks: Counter[str] = Counter()
    items: Counter[tuple[str, str]] = Counter()
    for pid in ids:
        status = sim.fmgr_status(pid)
        assert status is not None, pid
        tasks[str(status["code"])] += 1
        for item in status["items"]:
            items[(item["cmd"].split("/", 1)[0], str(int(item["code"])))] += 1
    return tasks, items


def assert_within_budget(log: list[dict]) -> None:
    """At most FMGR_BUDGET[0] requests arrived at the vendor in any FMGR_BUDGET[1] seconds, faulted or not."""
    times = sorted(r["ts"] for r in log if r["api"] == "fmgr")
    n, per = FMGR_BUDGET
    for i in range(n, len(times)):
        assert times[i] - times[i - n] >= per, (times[i - n:i + 1], "over the budget")


def assert_fmgr_converged(rig: FmgrRig, m: dict) -> None:
    """Every registered id is shown as the vendor states it now (in the 24h window: all of them)."""
    assert fmgr_shown(m, "24h") == fmgr_truth(rig.sim, rig.registered)
    assert value(m, "cdnetworks_fmgr_pending_tasks") == 0


def fmgr_sustain(rig: FmgrRig, start_fault: Callable[[], None], stop_fault: Callable[[], None],
                 expected: str, retry_after: float = 0.0) -> None:
    """Faults while new ids are in flight: last-good data kept, up 0, SUSTAIN failures counted as ``expected``,
    backoff (and ``retry_after``) honoured within the budget; then up 1 and the vendor's truth."""
    rig.register_new()  # the last half hour: finished at the vendor, read once each
    rig.run_until(rig.clock() + 300)
    rig.clock.advance(120)
    assert rig.register_new(), "the stream should have created tasks in the last two minutes"
    before = rig.scrape()
    assert fmgr_up(before) == 1
    assert value(before, "cdnetworks_fmgr_pending_tasks") > 0  # the new ids: registered, not polled yet
    last_ok = fmgr_last_ok(before)
    counts = fmgr_requests_by_result(before)
    rig.sim.reset_counters()
    start_fault()
    for _ in range(100):
        if rig.faulted() >= SUSTAIN:
            break
        started = time.monotonic()
        rig.step()
        took = time.monotonic() - started
        assert took <= rig.poller.cfg.request_timeout + STEP_MARGIN, f"a step took {took:.2f}s"
        rig.wait_answered()
        during = rig.scrape()
        if rig.sim.request_log:
            assert fmgr_up(during) == 0
        assert fmgr_data(during) == fmgr_data(before), "the last-good Fmgr data changed during the fault"
        assert fmgr_last_ok(during) == last_ok
        assert rig.poller.next_run() > rig.clock(), "no backoff after a failure"
    else:
        raise AssertionError("the fault was never served")
    log = list(rig.sim.request_log)
    assert len(log) == SUSTAIN and all(failed(r) for r in log), "a request went out between faults"
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(log)]
    assert all(g >= max(retry_after, BASE_BACKOFF / 2) for g in gaps), gaps
    during = rig.scrape()
    grew = {k: v - counts.get(k, 0) for k, v in fmgr_requests_by_result(during).items() if v != counts.get(k, 0)}
    assert grew == {expected: SUSTAIN}, grew
    stop_fault()
    rig.run_until(rig.clock() + MAX_BACKOFF + 600)
    after = rig.scrape()
    assert fmgr_up(after) == 1
    assert fmgr_last_ok(after) > last_ok
    assert_fmgr_converged(rig, after)
    assert_within_budget(rig.sim.request_log)
    assert rig.sim.rate_limit_violations == 0
    assert "Traceback" not in requests.get(rig.exporter.server.url + "/", timeout=5).text


@pytest.mark.parametrize(("fault", "expected"), FMGR_FAULTS, ids=[f for f, _ in FMGR_FAULTS])
def test_a_sustained_fmgr_fault_keeps_last_good_data_and_recovers(fmgr_rig, fault, expected):
    retry_after = {"http429": 1.0, "http503": 2.0}.get(fault, 0.0)
    fmgr_sustain(fmgr_rig, lambda: fmgr_rig.sim.inject("fmgr", fault, SUSTAIN), lambda: None, expected,
                 retry_after)


def test_the_vendors_own_429_is_honoured_for_its_retry_after(fmgr_rig):
    """The vendor's limit tightens under a budget that no longer fits: its 429 failure body (seed shape) with
    Retry-After is obeyed, and once the limit is back the tasks converge."""
    rig = fmgr_rig
    tight = (1, 60.0)

    def tighten() -> None:
        rig.sim.rate_limits["fmgr"] = tight

    def restore() -> None:
        rig.sim.rate_limits["fmgr"] = FMGR_BUDGET

    rig.register_new()
    rig.run_until(rig.clock() + 300)
    rig.clock.advance(120)
    rig.register_new()
    counts = fmgr_requests_by_result(rig.scrape())
    rig.sim.reset_counters()
    tighten()
    rig.run_until(rig.clock() + 240)
    log = list(rig.sim.request_log)
    refused = [r for r in log if r["result"] == "rate_limited"]
    assert refused, "the vendor's limit was never hit"
    # A refusal's Retry-After runs to the end of the vendor's window (one request a minute): the next request
    # waits for it, so no refusal follows a refusal.
    for i, r in enumerate(log):
        if r["result"] == "rate_limited" and i + 1 < len(log):
            accepted = [x["ts"] for x in log[:i] if x["result"] != "rate_limited"]
            assert accepted, "refused before anything was accepted"
            assert log[i + 1]["ts"] >= accepted[-1] + tight[1], (r, log[i + 1])
            assert log[i + 1]["result"] != "rate_limited"
    assert rig.sim.rate_limit_violations == len(refused)
    during = rig.scrape()
    assert fmgr_requests_by_result(during)["rate_limited"] - counts.get("rate_limited", 0) == len(refused)
    restore()
    rig.run_until(rig.clock() + MAX_BACKOFF + 600)
    after = rig.scrape()
    assert fmgr_up(after) == 1
    assert_fmgr_converged(rig, after)


def test_ids_the_vendor_does_not_know_yet_are_not_an_outage(fmgr_rig):
    """The seed's failure body with code 404 ({"code": "404", ...}) for ids the vendor has not created yet: counted
    as not_found, up stays 1, polled again later (not in a hot loop), and shown as soon as they exist."""
    rig = fmgr_rig
    rig.register_new()
    rig.run_until(rig.clock() + 300)
    counts = fmgr_requests_by_result(rig.scrape())
    n = len(rig.sim.fmgr_ids())
    future = [f"sim-{i:08d}" for i in range(n + 2, n + 5)]  # created one to two and a half minutes from now
    response = requests.post(rig.exporter.server.url + "/api/v1/fmgr/tasks", json={"persistentIds": future},
                             headers={"Authorization": f"Bearer {FMGR_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    rig.registered += future
    rig.sim.reset_counters()
    rig.step()
    m = rig.scrape()
    assert fmgr_up(m) == 1
    assert fmgr_requests_by_result(m)["not_found"] - counts.get("not_found", 0) == len(future)
    assert {r["result"] for r in rig.sim.request_log} == {"not_found"}
    assert rig.poller.next_run() > rig.clock()
    rig.run_until(rig.clock() + 1200)
    after = rig.scrape()
    assert fmgr_up(after) == 1
    assert_fmgr_converged(rig, after)
    assert_within_budget(rig.sim.request_log)
    assert rig.sim.rate_limit_violations == 0


def test_every_id_unknown_is_counted_not_an_outage_until_they_exist(fmgr_rig):
    """Twelve ids, all answered with the vendor's failure body saying 404 and none found: answers about those ids,
    not an outage (a wrong endpoint answers a bare 404: the "http404" fault above). up stays 1, the ids are
    counted in cdnetworks_fmgr_unknown_ids until they exist at the vendor, then shown as it states them."""
    rig = fmgr_rig
    n = len(rig.sim.fmgr_ids())
    future = [f"sim-{i:08d}" for i in range(n + 1, n + 13)]  # created within the next six minutes
    response = requests.post(rig.exporter.server.url + "/api/v1/fmgr/tasks", json={"persistentIds": future},
                             headers={"Authorization": f"Bearer {FMGR_TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    rig.registered += future
    rig.step()
    rig.step()
    rig.step()
    m = rig.scrape()
    assert {r["result"] for r in rig.sim.request_log} == {"not_found"}
    assert len({r["body"]["persistentId"] for r in rig.sim.request_log}) >= 10
    assert fmgr_up(m) == 1
    assert value(m, "cdnetworks_fmgr_unknown_ids") == len(rig.sim.request_log)
    rig.run_until(rig.clock() + 1800)
    after = rig.scrape()
    assert fmgr_up(after) == 1
    assert value(after, "cdnetworks_fmgr_unknown_ids") == 0
    assert_fmgr_converged(rig, after)
    assert_within_budget(rig.sim.request_log)


def test_a_vendor_clock_far_ahead_is_no_fault_for_the_unsigned_fmgr_api(fmgr_rig):
    """Fmgr status queries carry no Date signature (seed 000): a vendor clock an hour ahead refuses nothing;
    the tasks are shown as the vendor states them."""
    rig = fmgr_rig
    rig.register_new()
    rig.run_until(rig.clock() + 300)
    rig.clock.advance(120)
    rig.register_new()
    rig.sim.reset_counters()
    rig.skew = 3600.0
    rig.run_until(rig.clock() + 600)
    assert rig.sim.request_log and all(r["result"] == "ok" for r in rig.sim.request_log)
    after = rig.scrape()
    assert fmgr_up(after) == 1
    assert_fmgr_converged(rig, after)
