"""The Fmgr poller over real HTTP against the simulator, stepped with a fake clock shared by both.

No threads: each test calls ``step()`` whenever ``next_run()`` allows, moving the clock there first,
so the schedule (and so every request the vendor sees) is exact. Metrics are read through a real
``ExporterCollector`` on a private registry, as a scrape would.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import T0, Clock, make_config
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.fmgr.poller import FmgrPoller
from exporter.fmgr.wire import FmgrClient
from exporter.metrics.collector import ExporterCollector
from exporter.metrics.health import ApiHealth
from exporter.polling.budget import BASE_BACKOFF, MAX_BACKOFF
from exporter.simulator import Simulator
from exporter.storage.store import Store

POLL_INTERVAL = 30.0
HOUR = 3600.0


@dataclass
class Rig:
    """One simulator, one store and the poller between them, plus the metrics a scrape would show."""

    sim: Simulator
    clock: Clock
    config: Config
    store: Store
    poller: FmgrPoller
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def up(self) -> float | None:
        return self.metric("cdnetworks_up", account="", api="fmgr")

    def requests(self, result: str) -> float | None:
        return self.metric("cdnetworks_api_requests_total", api="fmgr", result=result)

    def fmgr_requests(self) -> int:
        return self.sim.requests[("fmgr", None)]

    def polls(self, persistent_id: str | None = None) -> list[float]:
        """Arrival times (fake clock) of status queries the vendor saw, for one id or all of them."""
        return [
            r["ts"] for r in self.sim.request_log
            if r["api"] == "fmgr" and persistent_id in (None, r["body"].get("persistentId"))
        ]

    def state(self, persistent_id: str) -> str:
        task = self.store.fmgr_task(persistent_id)
        assert task is not None, f"{persistent_id} is not tracked"
        return task["state"]

    def run_until(self, until: float, max_steps: int = 5000) -> int:
        """Step whenever the poller asks to, moving the clock to that moment; stop at ``until``.

        ``max_steps`` turns a poller that keeps asking to run right now (a hot loop) into a failure.
        """
        steps = 0
        while (due := self.poller.next_run()) <= until:
            self.clock.t = max(self.clock.t, due)
            self.poller.step()
            steps += 1
            assert steps < max_steps, "the poller keeps asking to run: hot loop"
        self.clock.t = max(self.clock.t, until)
        return steps


@pytest.fixture
def rig_factory(sim_factory, clock: Clock, tmp_path) -> Iterator:
    made: list[tuple[Store, FmgrClient]] = []

    def make(*, sim: Simulator | None = None, sim_kwargs: dict | None = None, **fmgr: object) -> Rig:
        """A fresh poller and store on this test's database; ``sim`` reuses a running simulator."""
        sim = sim or sim_factory(**(sim_kwargs or {}))
        fmgr_section = {
            "enabled": True, "endpoint": sim.url, "poll_interval": f"{POLL_INTERVAL:g}s", "request_timeout": "2s",
            "rate_limit": {"requests": 100, "per": "1s"}, **fmgr,
        }
        config = make_config(sim.url, str(tmp_path / "db.sqlite"), prefetch={"enabled": False}, fmgr=fmgr_section)
        store = Store(config.storage.path, clock=clock)
        health = ApiHealth()
        client = FmgrClient(sim.url, timeout=config.fmgr.request_timeout)
        poller = FmgrPoller(config.fmgr, store, client, health, clock=clock, rng=random.Random(11))
        registry = CollectorRegistry()
        registry.register(ExporterCollector(config, store, health, clock=clock))
        made.append((store, client))
        return Rig(sim, clock, config, store, poller, registry)

    yield make
    for store, client in made:
        client.close()
        store.close()


GRACE = 300.0


def test_tracked_ids_are_polled_until_final_then_never_again(rig_factory):
    rig = rig_factory(notify_grace=f"{GRACE:g}s")
    # (pending, processing): done after 25 s, 60 s (exactly on a poll), 120 s and 60 s. No notifyURL.
    timings = {"job-a": (5, 20), "job-b": (10, 50), "job-c": (5, 115), "job-d": (30, 30)}
    for pid, (pending, processing) in timings.items():
        rig.sim.add_fmgr_task(pid, ["fetch", "copy"], pending=pending, processing=processing)
    rig.store.register_fmgr_ids(list(timings), "api")
    assert rig.metric("cdnetworks_fmgr_pending_tasks") == 4

    rig.run_until(T0 + HOUR)

    for pid, (pending, processing) in timings.items():
        done = T0 + pending + processing
        polls = rig.polls(pid)
        # One poll per interval from registration until the first to see 3 (completed) ...
        first_3 = math.ceil((pending + processing) / POLL_INTERVAL)
        assert [t >= done for t in polls[:first_3 + 1]] == [False] * first_3 + [True], pid
        # ... then through the grace period, in which a notification phase (4) would have shown, the last
        # poll exactly at its end: still 3, so the job has no notifyURL and 3 is final.
        assert polls[first_3 + 1:] == [polls[first_3] + POLL_INTERVAL * (n + 1)
                                       for n in range(int(GRACE / POLL_INTERVAL))], pid
        task = rig.store.fmgr_task(pid)
        assert task is not None
        assert (task["state"], task["confirmed"]) == ("completed", True)
    assert rig.fmgr_requests() == len(rig.polls()) == sum(len(rig.polls(pid)) for pid in timings)
    assert rig.metric("cdnetworks_fmgr_pending_tasks") == 0
    assert rig.metric("cdnetworks_fmgr_tasks", window="24h", code="3", state="completed") == 4

    before = rig.fmgr_requests()
    rig.run_until(T0 + 2 * 86400)
    assert rig.fmgr_requests() == before  # final ids are never asked about again


def test_an_unknown_id_is_not_an_outage_and_is_retried_later(rig_factory):
    rig = rig_factory(notify_grace="0s")  # a job without notifyURL, final at its first 3
    rig.store.register_fmgr_ids(["late-1"], "api")
    rig.poller.step()

    assert rig.requests("not_found") == 1
    assert rig.up() == 1  # the vendor answered; it just does not know the id (yet)
    task = rig.store.fmgr_task("late-1")
    assert task is not None and task["lastError"].startswith("not_found")
    assert rig.state("late-1") == "unknown"
    retry_at = rig.poller.next_run()
    assert retry_at >= T0 + POLL_INTERVAL  # later, not in a loop

    rig.run_until(retry_at - 10)
    assert rig.fmgr_requests() == 1
    # The vendor learns about the id between two tries (and finishes it); the next try picks it up.
    rig.sim.add_fmgr_task("late-1", ["copy"], pending=1, processing=5)
    rig.run_until(T0 + HOUR)

    polls = rig.polls("late-1")
    assert len(polls) == 2 and polls[1] == retry_at
    assert rig.state("late-1") == "completed"
    assert rig.requests("not_found") == 1 and rig.requests("ok") == 1
    assert rig.up() == 1
    task = rig.store.fmgr_task("late-1")
    assert task is not None and task["lastError"] is None


def test_a_thousand_unknown_ids_never_take_fmgr_down_and_are_counted(rig_factory, caplog):
    """Issue 23, item 8: a register-token holder registers 1,000 ids the vendor does not know, next to 20 real
    jobs being polled. The vendor's "not found" is an answer about each id: up stays 1 in every sample, nothing
    is logged about the endpoint, and cdnetworks_fmgr_unknown_ids counts them."""
    import logging

    rig = rig_factory()
    known = [f"real-{i}" for i in range(20)]
    for pid in known:
        rig.sim.add_fmgr_task(pid, ["fetch"], pending=5, processing=HOUR)
    rig.store.register_fmgr_ids(known, "api")
    rig.run_until(T0 + 1)
    assert rig.up() == 1
    rig.store.register_fmgr_ids([f"bogus-{i:04d}" for i in range(1000)], "api")
    samples = []
    with caplog.at_level(logging.INFO, logger="exporter.fmgr.poller"):
        for i in range(30):  # a sample every 2 s for a minute, as Prometheus would
            rig.run_until(T0 + 3 + 2 * i)
            samples.append(rig.up())
    print(f"\nup samples with 1,000 unknown ids: {samples.count(0)} of {len(samples)} at 0; "
          f"{len(caplog.records)} lines logged")
    assert samples == [1] * 30
    assert rig.requests("not_found") == 1000
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert rig.metric("cdnetworks_fmgr_unknown_ids") == 1000
    assert all(rig.state(pid) == "processing" for pid in known)


def test_an_id_never_known_is_given_up_after_an_hour_and_leaves_the_unknown_count(rig_factory, caplog):
    import logging

    from exporter.fmgr.poller import UNKNOWN_ID_EXPIRY, UNKNOWN_RETRY

    rig = rig_factory()
    rig.store.register_fmgr_ids(["typo-1", "typo-2"], "api")
    rig.sim.add_fmgr_task("late", ["fetch"], created_ts=T0 + 2000, pending=1, processing=1)
    rig.store.register_fmgr_ids(["late"], "api")  # unknown for a while, then created
    rig.run_until(T0 + 1)
    assert rig.metric("cdnetworks_fmgr_unknown_ids") == 3 and rig.up() == 1
    rig.run_until(T0 + 2100 + UNKNOWN_RETRY * POLL_INTERVAL)
    assert rig.state("late") == "completed"
    assert rig.metric("cdnetworks_fmgr_unknown_ids") == 2
    with caplog.at_level(logging.INFO, logger="exporter.fmgr.poller"):
        rig.run_until(T0 + UNKNOWN_ID_EXPIRY + UNKNOWN_RETRY * POLL_INTERVAL + 300)
    assert rig.state("typo-1") == rig.state("typo-2") == "abandoned"
    assert rig.metric("cdnetworks_fmgr_unknown_ids") == 0
    assert rig.metric("cdnetworks_fmgr_pending_tasks") == 0
    polls = rig.polls("typo-1")
    assert polls[-1] >= T0 + UNKNOWN_ID_EXPIRY  # tried until the hour was over, not given up before
    assert len(polls) == math.ceil(UNKNOWN_ID_EXPIRY / (UNKNOWN_RETRY * POLL_INTERVAL)) + 1
    given_up = [r.getMessage() for r in caplog.records if "gave up" in r.getMessage()]
    assert given_up == ["fmgr: gave up 2 id(s) the vendor did not know 60 minutes after they were registered"]
    before = rig.fmgr_requests()
    rig.run_until(T0 + 4 * HOUR)
    assert rig.fmgr_requests() == before  # never asked about again
    assert rig.up() == 1


def test_a_bare_404_is_a_wrong_endpoint_and_takes_fmgr_down(rig_factory):
    """A 404 without the vendor's failure body is not about the id: the endpoint or path is wrong."""
    rig = rig_factory(notify_grace="0s")
    rig.sim.add_fmgr_task("job-1", ["fetch"], pending=1, processing=5)
    rig.store.register_fmgr_ids(["job-1"], "api")
    rig.sim.inject("fmgr", "http404", 3)
    rig.poller.step()
    assert rig.requests("malformed") == 1 and not rig.requests("not_found")
    assert rig.up() == 0
    assert rig.metric("cdnetworks_fmgr_unknown_ids") == 0
    rig.run_until(T0 + HOUR)
    assert rig.requests("malformed") == 3
    assert rig.up() == 1 and rig.state("job-1") == "completed"


@pytest.mark.parametrize(
    ("fault", "result"),
    [
        ("http500", "server_error"),
        ("http503", "server_error"),
        ("http429", "rate_limited"),
        ("timeout", "timeout"),
        ("malformed", "malformed"),
        ("wrong_types", "malformed"),
        ("code0:system busy", "malformed"),
    ],
)
def test_a_fault_is_counted_takes_up_down_backs_off_and_recovers(rig_factory, fault, result):
    rig = rig_factory(request_timeout="300ms")
    rig.sim.timeout_fault_seconds = 0.6  # longer than the client waits
    rig.sim.add_fmgr_task("job-1", ["fetch"], pending=5, processing=100)
    rig.store.register_fmgr_ids(["job-1"], "api")
    rig.poller.step()
    assert rig.up() == 1 and rig.state("job-1") == "pending"

    rig.clock.advance(POLL_INTERVAL)
    rig.sim.inject("fmgr", fault)
    rig.poller.step()

    assert rig.requests(result) == 1
    assert rig.up() == 0
    # The last good data stays in the store and on /metrics.
    assert rig.state("job-1") == "pending"
    assert rig.metric("cdnetworks_fmgr_tasks", window="1h", code="0", state="pending") == 1
    # Backoff: the next try is at least the shortest backoff away, and stepping early sends nothing.
    assert rig.poller.next_run() - rig.clock() >= BASE_BACKOFF / 2
    sent = rig.fmgr_requests()
    rig.poller.step()
    assert rig.fmgr_requests() == sent

    rig.run_until(T0 + HOUR)
    assert rig.up() == 1
    assert rig.state("job-1") == "completed"
    assert rig.requests(result) == 1


def test_a_failing_api_is_retried_with_growing_gaps_not_in_a_hot_loop(rig_factory):
    rig = rig_factory(notify_grace="0s")  # jobs without notifyURL, final at their first 3
    ids = [f"job-{i}" for i in range(5)]
    for pid in ids:
        rig.sim.add_fmgr_task(pid, ["fetch"], pending=2, processing=10)
    rig.store.register_fmgr_ids(ids, "api")
    failures = 8
    rig.sim.inject("fmgr", "http500", failures)

    rig.run_until(T0 + 2 * HOUR)

    log = [r for r in rig.sim.request_log if r["api"] == "fmgr"]
    assert [r["fault"] for r in log[:failures]] == ["http500"] * failures
    assert all(r["fault"] is None for r in log[failures:])
    times = [r["ts"] for r in log[:failures + 1]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # One request per try (not one per tracked id), each wait at least as long as the one before.
    assert all(later >= earlier for earlier, later in itertools.pairwise(gaps)), gaps
    assert gaps[0] >= BASE_BACKOFF / 2 and max(gaps) <= MAX_BACKOFF
    assert rig.requests("server_error") == failures
    # Recovered: every id polled once and final, up again.
    assert len(log) == failures + len(ids)
    assert all(rig.state(pid) == "completed" for pid in ids)
    assert rig.up() == 1


def test_max_task_age_abandons_tasks_that_never_finish(rig_factory):
    rig = rig_factory(max_task_age="1h")
    rig.sim.add_fmgr_task("slow", ["fetch"], pending=5, processing=10 * 86400)
    rig.store.register_fmgr_ids(["slow", "ghost"], "config")  # "ghost": the vendor never knows it

    rig.run_until(T0 + 2 * HOUR)

    assert {t["persistentId"]: t["state"] for t in rig.store.list_fmgr_tasks(None, 10)} == {
        "slow": "abandoned", "ghost": "abandoned",
    }
    assert rig.metric("cdnetworks_fmgr_pending_tasks") == 0
    assert rig.metric("cdnetworks_fmgr_oldest_pending_age_seconds") == 0
    # Polled right up to max_task_age (plus at most one maintenance pass), then left alone.
    maintenance = rig.poller.maintenance_every
    for pid in ("slow", "ghost"):
        polls = rig.polls(pid)
        assert T0 + HOUR - 5 * POLL_INTERVAL <= polls[-1] <= T0 + HOUR + maintenance, pid
    assert len(rig.polls("slow")) >= HOUR / POLL_INTERVAL
    before = rig.fmgr_requests()
    rig.run_until(T0 + 86400)
    assert rig.fmgr_requests() == before


def test_the_fmgr_rate_budget_is_never_exceeded(rig_factory):
    rig = rig_factory(sim_kwargs={"rate_limits": {"fmgr": (3, 10.0)}}, rate_limit={"requests": 3, "per": "10s"},
                      poll_interval="10s")
    ids = [f"job-{i:02d}" for i in range(20)]
    for i, pid in enumerate(ids):
        rig.sim.add_fmgr_task(pid, ["fetch"], pending=2, processing=10 + 3 * i)
    rig.store.register_fmgr_ids(ids, "api")

    rig.run_until(T0 + 1800)

    assert rig.sim.rate_limit_violations == 0
    assert rig.requests("rate_limited") == 0
    sent = sorted(rig.polls())
    assert len(sent) >= 2 * len(ids)
    for i in range(3, len(sent)):
        assert sent[i] - sent[i - 3] >= 10.0
    # The budget, not the number of ids, set the pace: three requests per 10 s, back to back.
    assert sent[-1] - sent[0] >= (math.ceil(len(sent) / 3) - 1) * 10.0
    assert all(rig.state(pid) == "completed" for pid in ids)


def test_a_vendor_429_is_honoured_for_its_retry_after(rig_factory):
    # The configured budget is looser than what the vendor enforces: the vendor's 429 must slow us down.
    rig = rig_factory(sim_kwargs={"rate_limits": {"fmgr": (1, 60.0)}}, notify_grace="0s")
    ids = ["job-1", "job-2"]
    for pid in ids:
        rig.sim.add_fmgr_task(pid, ["fetch"], pending=1, processing=5)
    rig.clock.advance(10)
    rig.store.register_fmgr_ids(ids, "api")

    rig.poller.step()

    assert [r["result"] for r in rig.sim.request_log] == ["ok", "rate_limited"]
    assert rig.requests("rate_limited") == 1
    assert rig.poller.next_run() >= rig.clock() + 60  # Retry-After: 60, longer than any first backoff
    rig.run_until(rig.clock() + HOUR)
    assert rig.sim.rate_limit_violations == 1
    assert all(rig.state(pid) == "completed" for pid in ids)


def test_the_fmgr_rate_budget_survives_a_restart(rig_factory):
    rig = rig_factory(sim_kwargs={"rate_limits": {"fmgr": (2, 300.0)}}, rate_limit={"requests": 2, "per": "5m"})
    ids = [f"job-{i}" for i in range(4)]
    for pid in ids:
        rig.sim.add_fmgr_task(pid, ["fetch"], pending=1, processing=5)
    rig.clock.advance(10)
    rig.store.register_fmgr_ids(ids, "api")
    rig.poller.step()  # spends the whole budget of the next five minutes
    assert len(rig.polls()) == 2
    rig.store.close()

    rig.clock.advance(10)
    restarted = rig_factory(sim=rig.sim, rate_limit={"requests": 2, "per": "5m"})  # same database
    restarted.poller.step()

    assert rig.sim.rate_limit_violations == 0
    assert len(rig.polls()) == 2


def run_with_notifier(rig: Rig, until: float, step: float = 1.0) -> None:
    """Poll and let the vendor attempt its deliveries, second by second."""
    while rig.clock.t < until:
        rig.sim.deliver_due_notifications()
        rig.run_until(rig.clock.t + step)


def test_a_poll_that_lands_at_3_keeps_polling_until_the_notification_failure_at_5(rig_factory):
    rig = rig_factory(notify_grace=f"{GRACE:g}s")
    # Completed exactly on the second poll (T0 + 30); notifying 5 s later; the notifyURL is unreachable,
    # so after its retries the vendor gives up: task 5, the succeeded item 5, the failed one 19.
    rig.sim.add_fmgr_task("hook-1", ["fetch", "copy"], pending=5, processing=25, fail_items=[1], fsize=64,
                          notify_url="http://127.0.0.1:9/unreachable", notify_key=("AK", "SK"),
                          notify_delay=5.0, notify_fails=True)
    rig.store.register_fmgr_ids(["hook-1"], "api")

    run_with_notifier(rig, T0 + 2 * POLL_INTERVAL - 1)
    assert [r["result"] for r in rig.sim.request_log] == ["ok", "ok"]
    assert rig.sim.fmgr_status("hook-1", at=T0 + 30)["code"] == 3  # the second poll saw 3 ...
    assert rig.state("hook-1") == "completed"
    assert rig.metric("cdnetworks_fmgr_pending_tasks") == 0

    run_with_notifier(rig, T0 + HOUR)

    # ... and was not the last: 4 (notifying) and 5 followed.
    assert [e["lost"] for e in rig.sim.notify_log] == [True] * 4
    task = rig.store.fmgr_task("hook-1")
    assert task is not None
    assert (task["state"], task["code"], task["confirmed"]) == ("notify_failed", 5, True)
    assert rig.metric("cdnetworks_fmgr_notify_failures_total", scope="task") == 1
    assert rig.metric("cdnetworks_fmgr_notify_failures_total", scope="item") == 2
    assert rig.metric("cdnetworks_fmgr_items", window="24h", op="fetch", code="5",
                      state="succeeded_notify_failed") == 1
    assert rig.metric("cdnetworks_fmgr_items", window="24h", op="copy", code="19", state="failed_notify_failed") == 1
    assert rig.metric("cdnetworks_fmgr_tasks", window="24h", code="3", state="completed") == 0
    polled = len(rig.polls("hook-1"))
    run_with_notifier(rig, T0 + 2 * HOUR, step=60.0)
    assert len(rig.polls("hook-1")) == polled  # 5 is final: never asked about again


# ------------------------------------------------------------------------------------------ the store fails


WORKER_LOGS = ("exporter.fmgr.poller", "exporter.polling.worker")


def test_a_store_that_cannot_be_written_is_one_line_then_its_recovery_another(rig_factory, caplog):
    """The poller's own thread while the database file is gone (writes refused, as with a read-only or full
    disk): one classified line without a traceback however many polls fail, then one saying it recovered."""
    import logging
    import threading
    import time
    from pathlib import Path

    rig = rig_factory(notify_grace="0s")
    rig.sim.add_fmgr_task("job-1", ["fetch"], pending=1, processing=HOUR)  # processing: polled every interval
    rig.store.register_fmgr_ids(["job-1"], "api")
    db = Path(rig.config.storage.path)
    away = db.with_name(db.name + ".away")
    running = threading.Event()
    running.set()

    def tick() -> None:  # the fake clock runs a second per 10 ms, and the poller is woken to look at it
        while running.is_set():
            rig.clock.t += 1.0
            rig.poller.wake()
            time.sleep(0.01)

    def wait_until(what: str, cond, seconds: float = 30.0) -> None:
        end = time.monotonic() + seconds
        while not cond():
            assert time.monotonic() < end, f"timed out waiting for {what}"
            time.sleep(0.05)

    def messages(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name in WORKER_LOGS and text in r.getMessage()]

    ticker = threading.Thread(target=tick, daemon=True)
    with caplog.at_level(logging.INFO, logger="exporter"):
        rig.poller.start()
        ticker.start()
        try:
            wait_until("the first poll", lambda: len(rig.polls("job-1")) >= 1)
            db.rename(away)
            failed_before = rig.poller.failures
            wait_until("three failed writes", lambda: rig.poller.failures >= failed_before + 3)
            db_back = away.rename(db)
            assert db_back == db
            polls = len(rig.polls("job-1"))
            wait_until("the recovery", lambda: messages("works again"))
            wait_until("a poll after it", lambda: len(rig.polls("job-1")) > polls and rig.poller.failures == 0)
        finally:
            running.clear()
            ticker.join(5)
            rig.poller.stop()
    assert not [r for r in caplog.records if r.name in WORKER_LOGS and r.exc_info], "a traceback was logged"
    assert len(messages("the store failed (")) == 1
    assert "removed or replaced" in messages("the store failed (")[0].getMessage()
    assert not messages("unexpected error")
    assert len(messages("works again")) == 1
    task = rig.store.fmgr_task("job-1")
    assert task is not None and task["state"] == "processing" and task["lastError"] is None
