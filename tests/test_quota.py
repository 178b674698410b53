"""The daily quotas end to end: the answer's reading (a pure function), then the real exporter polling the simulator
over HTTP under one manual clock: its gauges against the vendor's truth as tasks are submitted and past midnight
UTC+8, every kind of failed answer classified and counted without touching what is served, and two replicas on
one PostgreSQL store (one polls, both serve the same values)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import T0, Clock, require_tool
from prometheus_client.parser import text_string_to_metric_families

from exporter import quotas
from exporter.app import Exporter
from exporter.config import parse_config
from exporter.polling import quota as quota_polling
from exporter.polling.quota import QuotaPoller
from exporter.simulator import Simulator
from exporter.storage.repository import open_repository
from exporter.storage.store import Store
from exporter.vendor.http import VendorError
from exporter.vendor.quota import parse_quota

PREFETCH, PURGE = quotas.BY_NAME["prefetch"], quotas.BY_NAME["purge"]
GB = 10**9
DAY = 86400.0
DAY_START = T0 - 16 * 3600  # T0 is 16:00 in UTC+8: the vendor's day began 16 hours earlier
ACCOUNTS = [{"name": "acme", "username": "acme", "api_key": "acme-key"},
            {"name": "globex", "auth": "aksk", "access_key": "globex-ak", "secret_key": "globex-sk"}]

# ------------------------------------------------------------------------------------------ the answer

GOOD = {"code": 0, "message": "success", "prefetchQuota": 20000, "remainingPrefetchQuota": 1234,
        "prefetchVolumeQuota": 200, "remainingPrefetchVolumeQuota": 180}


def test_a_success_is_code_zero_with_every_figure():
    reading = parse_quota(GOOD, PREFETCH, GB)
    assert (reading.kind, dict(reading.units)) == ("prefetch", {"urls": (20000, 1234), "bytes": (200 * GB, 180 * GB)})
    # Numbers as strings, the code as a string or under the status query's spelling, another volume unit.
    as_strings = {**{k: str(v) for k, v in GOOD.items()}, "code": "0"}
    assert parse_quota(as_strings, PREFETCH, 2**30).units["bytes"] == (200 * 2**30, 180 * 2**30)
    assert parse_quota({**{k: v for k, v in GOOD.items() if k != "code"}, "Code": 0}, PREFETCH, GB) == reading
    purge = {"code": 0, "urlQuota": 5000, "remainingUrlQuota": 4000, "dirQuota": 500, "remainingDirQuota": 0,
             "regexQuota": 500, "remainingRegexQuota": 499, "tagQuota": 0, "remainingTagQuota": 0}
    assert dict(parse_quota(purge, PURGE, GB).units) == {"urls": (5000, 4000), "directories": (500, 0),
                                                         "regexes": (500, 499), "tags": (0, 0)}


@pytest.mark.parametrize(("data", "kind", "message"), [
    # The vendor refusing, at HTTP 200: any code but 0, classified by its message.
    ({"code": 1, "message": "failure"}, "unknown", "failure"),
    ({"code": 1, "message": "account not allowed to query quota"}, "unknown", "not allowed"),
    ({"code": "401", "message": "Unauthorized"}, "auth", "Unauthorized"),
    ({"code": 1, "message": "signature does not match"}, "auth", "signature"),
    ({"code": 1, "message": "rate limit exceeded"}, "rate_limited", "rate limit"),
    ({"Code": 1, "Message": "success"}, "unknown", "success"),  # the status query's success is a failure here
    ({"code": 1}, "unknown", "code 1"),
    # Not an answer of the documented shape.
    ([], "malformed", "not an object"),
    ({"message": "success", "prefetchQuota": 1}, "malformed", "no code"),
    ({"code": "zero"}, "malformed", "code is not a number"),
    ({**GOOD, "remainingPrefetchVolumeQuota": None}, "malformed", "remainingPrefetchVolumeQuota is not a count"),
    ({k: v for k, v in GOOD.items() if k != "prefetchVolumeQuota"}, "malformed", "no prefetchVolumeQuota"),
    ({**GOOD, "remainingPrefetchQuota": -1}, "malformed", "not a count: -1"),
    ({**GOOD, "remainingPrefetchQuota": 1.5}, "malformed", "not a count: 1.5"),
    ({**GOOD, "prefetchQuota": [20000]}, "malformed", "not a count"),
    ({**GOOD, "prefetchQuota": True}, "malformed", "not a count"),
    ({"code": 0, "message": "success"}, "malformed", "no prefetchQuota"),
])
def test_anything_else_is_a_classified_error(data, kind, message):
    with pytest.raises(VendorError) as info:
        parse_quota(data, PREFETCH, GB)
    assert info.value.kind == kind
    assert message in info.value.message


# ------------------------------------------------------------------------------------------ end to end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(exporter: Exporter) -> tuple[Metrics, str]:
    text = requests.get(f"http://127.0.0.1:{exporter.server.port}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}, text


def quota_values(metrics: Metrics, account: str, kind: str) -> dict[str, tuple[float, float]]:
    """unit -> (limit, remaining) the exporter serves for one quota."""
    out: dict[str, list[float]] = {}
    for (name, labels), value in metrics.items():
        lab = dict(labels)
        if name in ("cdnetworks_quota_limit", "cdnetworks_quota_remaining") and (lab["account"], lab["kind"]) == (
                account, kind):
            out.setdefault(lab["unit"], [0.0, 0.0])[name.endswith("remaining")] = value
    return {unit: (pair[0], pair[1]) for unit, pair in out.items()}


def vendor_says(sim: Simulator, account: str, kind: str) -> dict[str, tuple[float, float]]:
    """What the vendor's answer says now, in the exporter's units (its volume is in whole GB)."""
    answer = sim.quota_answer(account, kind)
    out = {}
    for unit in quotas.BY_NAME[kind].units:
        scale = GB if unit.volume else 1
        out[unit.unit] = (answer[unit.limit_field] * scale, answer[unit.remaining_field] * scale)
    return out


def metric(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def running(tmp_path) -> Iterator[Any]:
    """make(sim, clock, quota=..., storage=...) -> an exporter serving HTTP (its pollers stepped by the test)."""
    made: list[Exporter] = []

    def make(sim: Simulator, clock: Clock, quota: dict[str, Any], storage: dict[str, Any] | None = None) -> Exporter:
        accounts = [{**a, "endpoint": sim.url} for a in ACCOUNTS]
        config = parse_config({"accounts": accounts, "prefetch": {"enabled": False}, "quota": quota,
                               "storage": storage or {"path": str(tmp_path / "exporter.db")}})
        exporter = Exporter(config, listen_address=f"127.0.0.1:{free_port()}", clock=clock)
        exporter.server.start()
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.stop()


def step_next(pollers: list[QuotaPoller], clock: Clock) -> QuotaPoller:
    """Move the clock to the poller due first and let it send its request."""
    poller = min(pollers, key=lambda p: p.next_run())
    clock.t = max(clock(), poller.next_run())
    poller.step()
    return poller


def test_the_gauges_follow_the_vendors_quota_through_the_day_and_past_midnight(tmp_path, running):
    # 23:30 in UTC+8, half an hour before the vendor's day ends, at the published budget of each quota query.
    start = DAY_START + DAY - 1800 + 7
    clock = Clock(start)
    sim = Simulator(clock=clock, rate_limits={"prefetch_quota": (2, 300.0), "purge_quota": (2, 300.0)})
    sim.add_account("acme", "acme-key")
    sim.add_account("globex", access_key="globex-ak", secret_key="globex-sk")
    sim.add_cdn_stream("acme", "prefetch", per_hour=800, start_ts=start - 2 * DAY)
    sim.add_cdn_stream("acme", "purge", per_hour=150, start_ts=start - 2 * DAY)
    sim.add_cdn_stream("globex", "prefetch", per_hour=300, start_ts=start - 2 * DAY)
    sim.start()
    try:
        exporter = running(sim, clock, {"enabled": True})
        pollers = exporter.pollers.quota
        assert [(p.account.name, p.kind.name) for p in pollers] == [
            ("acme", "prefetch"), ("acme", "purge"), ("globex", "prefetch"), ("globex", "purge")]
        before, _ = scrape(exporter)
        assert quota_values(before, "acme", "prefetch") == {}  # nothing read yet: absent, not 0
        midnight = DAY_START + DAY
        checked = {"before": 0, "stale": 0, "after": 0}
        released = False
        while clock() < start + 3600:
            if not released and clock() >= start + 600:
                # A release submits 3,000 prefetches of 50 MB at once.
                for n in range(3000):
                    sim.add_cdn_task("acme", "prefetch", f"https://rel.example/{n}", clock() - 1, size=50 * 10**6)
                released = True
            poller = step_next(pollers, clock)
            account, kind = poller.account.name, poller.kind.name
            metrics, _ = scrape(exporter)
            # After every read, the quota it read is what the vendor says now, to the unit.
            assert quota_values(metrics, account, kind) == vendor_says(sim, account, kind), (clock() - start, kind)
            assert metric(metrics, "cdnetworks_quota_last_read_timestamp_seconds", account=account,
                          kind=kind) == clock()
            checked["before" if clock() < midnight else "after"] += 1
            # A quota read before midnight is not served after it: the vendor started it over since.
            for other in pollers:
                read = metric(metrics, "cdnetworks_quota_last_read_timestamp_seconds", account=other.account.name,
                              kind=other.kind.name)
                values = quota_values(metrics, other.account.name, other.kind.name)
                if read is None:  # not read yet (the first round)
                    assert values == {}
                elif read < midnight <= clock():
                    assert values == {}
                    checked["stale"] += 1
                else:
                    assert set(values) == {u.unit for u in other.kind.units}
        assert released and checked["before"] >= 20 and checked["after"] >= 20 and checked["stale"] >= 1, checked
        # After midnight the quota is almost whole again: only the half hour since counts.
        metrics, text = scrape(exporter)
        urls_limit, urls_left = quota_values(metrics, "acme", "prefetch")["urls"]
        assert urls_limit - urls_left == sim.quota_truth("acme", "prefetch")["urls"][0] - \
            sim.quota_truth("acme", "prefetch")["urls"][1] < 800
        assert sim.rate_limit_violations == 0
        # Every 5 minutes, as budgeted: 12 reads an hour of each quota.
        assert 12 <= sim.requests[("prefetch_quota", "acme")] <= 13
        assert metric(metrics, "cdnetworks_api_requests_total", api="purge_quota", result="ok") == 2 * \
            sim.requests[("purge_quota", "acme")]
        assert metric(metrics, "cdnetworks_up", account="globex", api="purge_quota") == 1
        result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text, capture_output=True,
                                text=True, timeout=60, check=False)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    finally:
        sim.stop()


# fault -> the result it is counted under
FAULTS = {
    "code0:account not allowed to query quota": "unknown",  # a refusal at HTTP 200 (code 1)
    "failure:401@200": "auth",
    "failure:429@200": "rate_limited",
    "http500": "server_error",
    "http503": "server_error",
    "http404": "bad_request",
    "malformed": "malformed",
    "wrong_types": "malformed",
    "empty_page": "malformed",
    "huge": "too_large",
    "timeout": "timeout",
}


def test_failed_answers_are_classified_counted_and_change_nothing_served(tmp_path, running):
    clock = Clock(T0 + 13)
    sim = Simulator(clock=clock)
    sim.add_account("acme", "acme-key")
    sim.add_account("globex", access_key="globex-ak", secret_key="globex-sk")
    sim.timeout_fault_seconds = 1.5
    sim.huge_fault_bytes = 256 * 1024
    sim.start()
    try:
        exporter = running(sim, clock, {"enabled": True, "accounts": ["acme"], "kinds": ["prefetch"],
                                        "poll_interval": "1m", "request_timeout": "1s",
                                        "rate_limit": {"requests": 20, "per": "1m"}})
        (poller,) = exporter.pollers.quota
        step_next([poller], clock)
        good, _ = scrape(exporter)
        shown = quota_values(good, "acme", "prefetch")
        assert shown == vendor_says(sim, "acme", "prefetch") and shown["urls"] == (20000, 20000)
        read_at = metric(good, "cdnetworks_quota_last_read_timestamp_seconds", account="acme", kind="prefetch")
        counted = dict.fromkeys(FAULTS.values(), 0.0)
        for n, (fault, result) in enumerate(FAULTS.items()):
            # The vendor's quota moves meanwhile: an answer the exporter could not verify must not show it.
            sim.add_cdn_task("acme", "prefetch", f"https://f.example/{n}", clock() - 1, size=10**9)
            sim.inject("prefetch_quota", fault)
            step_next([poller], clock)
            metrics, _ = scrape(exporter)
            counted[result] += 1
            assert metric(metrics, "cdnetworks_api_requests_total", api="prefetch_quota", result=result) == \
                counted[result], fault
            assert metric(metrics, "cdnetworks_up", account="acme", api="prefetch_quota") == 0, fault
            assert quota_values(metrics, "acme", "prefetch") == shown, fault
            assert metric(metrics, "cdnetworks_quota_last_read_timestamp_seconds", account="acme",
                          kind="prefetch") == read_at, fault
            assert vendor_says(sim, "acme", "prefetch") != shown
        assert metric(metrics, "cdnetworks_api_requests_total", api="prefetch_quota", result="ok") == 1
        # Every fault reached the vendor once (the timed-out request is logged when its late answer is written).
        deadline = time.monotonic() + 5
        while len(sim.request_log) < 1 + len(FAULTS) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e["fault"] for e in sim.request_log] == [None, *FAULTS]
        # The next good answer shows the vendor's quota again, the 11 tasks submitted meanwhile taken off.
        step_next([poller], clock)
        metrics, _ = scrape(exporter)
        assert quota_values(metrics, "acme", "prefetch") == vendor_says(sim, "acme", "prefetch")
        assert quota_values(metrics, "acme", "prefetch")["urls"] == (20000, 20000 - len(FAULTS))
        assert metric(metrics, "cdnetworks_up", account="acme", api="prefetch_quota") == 1
    finally:
        sim.stop()


def test_a_refused_key_and_a_rate_limit_hold_the_poller_back(tmp_path, running):
    clock = Clock(T0 + 13)
    sim = Simulator(clock=clock)
    sim.add_account("acme", "acme-key")
    sim.add_account("globex", access_key="globex-ak", secret_key="globex-sk")
    sim.start()
    try:
        exporter = running(sim, clock, {"enabled": True, "accounts": ["acme"], "kinds": ["purge"],
                                        "poll_interval": "1m", "rate_limit": {"requests": 20, "per": "1m"}})
        (poller,) = exporter.pollers.quota
        sim.inject("purge_quota", "failure:403@200")
        step_next([poller], clock)
        assert poller.next_run() - clock() >= 600  # a key that may not ask will not be allowed a minute later
        sim.inject("purge_quota", "http429")  # Retry-After: 1
        clock.advance(600)
        step_next([poller], clock)
        sent = clock()
        step_next([poller], clock)
        assert clock() - sent >= 1.0
        metrics, _ = scrape(exporter)
        assert quota_values(metrics, "acme", "purge")["directories"] == (500, 500)
        assert [metric(metrics, "cdnetworks_api_requests_total", api="purge_quota", result=r)
                for r in ("auth", "rate_limited", "ok")] == [1, 1, 1]
    finally:
        sim.stop()


# ------------------------------------------------------------------------------------------ the store


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_stored_answers_are_read_at_once_by_their_exact_prefix(backend, tmp_path, request):
    target = str(tmp_path / "s.db") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    store = Store(target, repository=open_repository(target))
    try:
        answer = quota_polling.answer_state(T0, {"urls": (20000, 5)})
        store.set_state(quota_polling.state_key("a_b", "prefetch"), answer)
        store.set_state("QUOTA:a_b:purge", 1)  # not the prefix: case counts
        store.set_state("quotaXa_b", 2)
        store.set_state("cdn:a_b:prefetch_quota:budget", {"sent": []})
        assert store.get_states(quota_polling.STATE_PREFIX) == {"quota:a_b:prefetch": answer}
        assert store.get_states("quota:a_") == {"quota:a_b:prefetch": answer}
        assert store.get_states("quota:a%") == store.get_states("quota:ab") == {}  # no wildcard
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ replicas


@pytest.mark.postgres
def test_one_replica_polls_a_quota_and_every_replica_serves_it(postgres_url, running):
    clock = Clock(T0 + 13)
    sim = Simulator(clock=clock, rate_limits={"prefetch_quota": (2, 300.0)})
    sim.add_account("acme", "acme-key")
    sim.add_account("globex", access_key="globex-ak", secret_key="globex-sk")
    sim.add_cdn_stream("acme", "prefetch", per_hour=600, start_ts=T0 - DAY)
    sim.start()
    try:
        quota = {"enabled": True, "accounts": ["acme"], "kinds": ["prefetch"]}
        a = running(sim, clock, quota, {"url": postgres_url})
        b = running(sim, clock, quota, {"url": postgres_url})
        assert a.pollers.leases is not None and b.pollers.leases is not None
        a.pollers.leases.refresh()
        b.pollers.leases.refresh()  # a holds every lease: b runs nothing
        pa, pb = a.pollers.quota[0], b.pollers.quota[0]
        for _ in range(3):
            step_next([pa, pb], clock)
            clock.advance(1)
        assert sim.requests[("prefetch_quota", "acme")] == 1  # b never asked; a is not due again yet
        ma, mb = scrape(a)[0], scrape(b)[0]
        served = quota_values(ma, "acme", "prefetch")
        assert served == quota_values(mb, "acme", "prefetch") == vendor_says(sim, "acme", "prefetch")
        assert served["urls"][1] < 20000
        lease = (("account", "acme"), ("api", "prefetch_quota"))
        assert (ma[("cdnetworks_replica_leases", lease)], mb[("cdnetworks_replica_leases", lease)]) == (1, 0)
        # a stops (a clean stop hands its leases over); b takes the quota over where a left it: not at once,
        # at the poll interval after a's read, within the one budget.
        a.pollers.leases.stop(release=True)
        b.pollers.leases.refresh()
        clock.advance(60)
        step_next([pb], clock)
        assert sim.requests[("prefetch_quota", "acme")] == 1 and pb.next_run() >= pa.due
        step_next([pb], clock)
        assert sim.requests[("prefetch_quota", "acme")] == 2 and sim.rate_limit_violations == 0
        ma, mb = scrape(a)[0], scrape(b)[0]
        assert quota_values(ma, "acme", "prefetch") == quota_values(mb, "acme", "prefetch") == \
            vendor_says(sim, "acme", "prefetch") != served
        assert metric(mb, "cdnetworks_replica_leases", account="acme", api="prefetch_quota") == 1
    finally:
        sim.stop()
