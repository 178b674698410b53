"""The collector against a fixed store: values, known label values at 0, and a golden exposition file.

The golden file is ``tests/fixtures/expected.prom``. After an intended change of metric names, HELP text
or the fixed inputs below, regenerate it and review the diff line by line before committing:

    UPDATE_GOLDEN=1 python -m pytest -q tests/test_collector.py -k golden

The inputs are fixed (clock, tasks, Fmgr statuses, request observations), so the file is exact. These
numbers in it were checked by hand against the inputs (the same arithmetic is spelled out in the
assertions of the tests above the golden test):

* prefetch tasks of acme per window and status (15m: 2 success, 1 failure, 1 run, 1 unknown;
  1h adds 1 wait; 24h adds 1 success), every status of every account/window present (globex all 0);
* prefetch success ratios 2/3, 2/3, 3/4 and rate ratios 0.8, 0.8, 0.825, none for globex;
* oldest unfinished age 930 s (the wait task a5 was created at T0 - 900 s; "now" is T0 + 30 s);
* finished totals 4 success / 1 failure (a task seen three times counted once), the duration histogram
  (10, 60, 120, 3000 and 20000 s: cumulative 0,1,1,2,3,3,3,3,4,4,5,5,5, sum 23190);
* purge kept apart from prefetch (1 success in 1h, 20 s in the le=30 bucket);
* Fmgr tasks per window and code (none, other, 0..6), items per op and code, success ratios 2/3 and 3/5,
  3 pending with the oldest first seen 1230 s ago, processed bytes copy 200 / fetch 1500, notifications
  1 accepted / 1 duplicate / 1 bad_signature;
* request counters (prefetch 2 ok, 1 rate_limited, 1 unknown; fmgr 1 timeout), latency buckets (prefetch
  0.05 / 0.2 / 0.7 / 1.0 s: cumulative 1,1,2,2,4..., sum 1.95), up (only acme/prefetch is 1), last
  successful poll T0 - 10 s, lag 42 s.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Clock, require_tool
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric

from exporter.app import Exporter
from exporter.config import Config, parse_config
from exporter.fmgr.wire import FmgrItem, FmgrStatus
from exporter.http.server import RejectCounter
from exporter.http.web import App, Server, WebCollector
from exporter.http.webconfig import AuthFailures
from exporter.kinds import KINDS
from exporter.metrics import catalogue as metrics
from exporter.metrics.collector import ExporterCollector
from exporter.metrics.health import ApiHealth
from exporter.polling import quota as quota_polling
from exporter.storage.store import CdnTask, Store

GOLDEN = Path(__file__).parent / "fixtures" / "expected.prom"
METRICS_DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"

T0 = 1795334400.0  # 2026-11-22 08:00:00 UTC, on a minute boundary
NOW = T0 + 30.0  # half-way through the current minute: windows count whole minutes including this one
STATUSES = ("success", "failure", "wait", "run", "unknown")


CONFIG = {
    "accounts": [
        {"name": "acme", "username": "acme", "api_key": "acme-key", "endpoint": "http://127.0.0.1:9"},
        {"name": "globex", "auth": "aksk", "access_key": "globex-ak", "secret_key": "globex-sk",
         "endpoint": "http://127.0.0.1:9"},
    ],
    "prefetch": {"windows": ["15m", "1h", "24h"]},
    "purge": {"enabled": True, "windows": ["1h"]},
    "fmgr": {"enabled": True, "endpoint": "http://127.0.0.1:9", "windows": ["1h", "24h"]},
    "quota": {"enabled": True, "accounts": ["acme"]},
}


def task(url: str, created: float, status: str, *, took: float | None = None, rate: float | None = None) -> CdnTask:
    """A task created ``created`` seconds relative to T0 that finished ``took`` seconds later."""
    final = status in ("success", "failure")
    return CdnTask(url=url, create_ts=T0 + created, status=status,
                   begin_ts=T0 + created + 1 if final else None,
                   finish_ts=T0 + created + took if final and took is not None else None, rate=rate)


def fill(store: Store, clock: Clock) -> None:
    """The fixed inputs, written through the store's public methods as the pollers and receivers do."""
    clock.t = T0 - 3600
    # acme prefetch. a1 is seen running, then finished, then the same again: its finish counts once.
    store.upsert_cdn_tasks("acme", "prefetch", [task("https://x/a1", -60, "run")])
    store.upsert_cdn_tasks("acme", "prefetch", [
        task("https://x/a1", -60, "success", took=10, rate=100),
        task("https://x/a2", -300, "failure", took=60, rate=40),
        task("https://x/a3", -600, "success", took=120, rate=100),
        task("https://x/a4", -840, "wait"),  # the first minute of the 15m window
        task("https://x/a5", -900, "wait"),  # the minute just before it: 1h and 24h only
        task("https://x/a8", -700, "unknown"),
        task("https://x/a6", -7200, "success", took=3000, rate=90),  # 24h only
        task("https://x/a7", -30 * 3600, "success", took=20000, rate=100),  # older than every window
    ])
    store.upsert_cdn_tasks("acme", "prefetch", [
        task("https://x/a1", -60, "success", took=10, rate=100),
        task("https://x/a4", -840, "run"),
    ])
    # acme purge: its own family, not mixed with prefetch.
    store.upsert_cdn_tasks("acme", "purge", [task("https://x/p1", -120, "success", took=20, rate=100)])

    # Fmgr. first_seen is the store clock at the first write about an id.
    clock.t = T0 - 7200
    store.apply_fmgr_status(FmgrStatus("job-4", 6, 0, (
        FmgrItem("delete", 20, None, "source file not found"),
        FmgrItem("fetch", 6, 500, None),
    )), source="poll", polled=True)
    clock.t = T0 - 3000
    # The vendor could not deliver this job's notification: task 5, items 5 and 19, counted once each.
    for code, items in ((4, (4, 18)), (5, (5, 19)), (5, (5, 19))):
        store.apply_fmgr_status(FmgrStatus("job-6", code, 0, (FmgrItem("move", items[0], 300, None),
                                                              FmgrItem("copy", items[1], None, "x"))),
                                source="poll", polled=True)
    clock.t = T0 - 1200
    store.register_fmgr_ids(["job-2"], "api")
    store.apply_fmgr_status(FmgrStatus("job-2", 1, 0, (FmgrItem("fetch", 1, None, None),)),
                            source="poll", polled=True)
    clock.t = T0 - 600
    store.register_fmgr_ids(["job-1", "job-2"], "config")  # job-2 is known: left as it is
    clock.t = T0 - 300
    store.apply_fmgr_status(FmgrStatus("job-3", 1, 0, (FmgrItem("fetch", 1, None, None),
                                                        FmgrItem("copy", 1, None, None))),
                            source="poll", polled=True)
    clock.t = T0 - 240
    store.apply_fmgr_status(FmgrStatus("job-3", 3, 0, (FmgrItem("fetch", 3, 1000, None),
                                                        FmgrItem("copy", 2, None, "source timeout"))),
                            source="poll", polled=True)
    clock.t = T0 - 120
    # In a notification the top-level code is the notification status; the items make the task completed.
    note = FmgrStatus("notify-1", 3, 0, (FmgrItem("copy", 4, 200, None),))
    assert store.record_notification(note, "dedup-1", clock.t) is True
    assert store.record_notification(note, "dedup-1", clock.t) is False
    store.count_notification("bad_signature")
    clock.t = T0 - 60
    # A task code and an item code outside the vendor tables, and an op we do not know.
    store.apply_fmgr_status(FmgrStatus("job-5", 9, 0, (FmgrItem("other", 7, None, None),)),
                            source="poll", polled=True)
    # Quotas: acme's prefetch quota read today (T0 is 16:00 in UTC+8), its purge quota last read yesterday (20 hours
    # ago, before the vendor's day began at midnight UTC+8).
    store.set_state(quota_polling.state_key("acme", "prefetch"), quota_polling.answer_state(
        T0 - 120, {"urls": (20000, 12500), "bytes": (200 * 10**9, 150 * 10**9)}))
    store.set_state(quota_polling.state_key("acme", "purge"), quota_polling.answer_state(
        T0 - 20 * 3600, {"urls": (5000, 0), "directories": (500, 10), "regexes": (500, 500), "tags": (0, 0)}))
    clock.t = NOW


def observe(health: ApiHealth) -> None:
    for account in ("acme", "globex"):
        for api in ("prefetch", "purge"):
            health.declare(account, api)
    health.declare("", "fmgr")
    health.observe_request("prefetch", "ok", 0.2)
    health.observe_request("prefetch", "ok", 0.7)
    health.observe_request("prefetch", "rate_limited", 0.05)
    health.observe_request("prefetch", "no-such-result", 1.0)  # counted as "unknown"
    health.observe_request("fmgr", "timeout", 12.0)
    health.poll_result("acme", "prefetch", True, T0 - 10)
    health.poll_result("globex", "prefetch", False, T0 - 5)
    health.set_lag("acme", "prefetch", 42.0)


@pytest.fixture
def config() -> Config:
    return parse_config(CONFIG, environ={})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    clock = Clock(T0)
    s = Store(tmp_path / "store.db", clock=clock)
    fill(s, clock)
    yield s
    s.close()


@pytest.fixture
def registry(config: Config, store: Store) -> CollectorRegistry:
    health = ApiHealth()
    observe(health)
    reg = CollectorRegistry(auto_describe=True)
    reg.register(ExporterCollector(config, store, health, clock=lambda: NOW))
    # The HTTP layer's own counters are part of every exporter's exposition.
    auth_failures, rejects = AuthFailures(), RejectCounter()
    for reason in ("missing", "wrong", "wrong", "throttled"):
        auth_failures.inc(reason)
    rejects.inc("timeout")
    reg.register(WebCollector(auth_failures, rejects))
    return reg


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


# ---------------------------------------------------------------------------------------------- CDN


@pytest.mark.parametrize(("window", "expected"), [
    ("15m", {"success": 2, "failure": 1, "wait": 0, "run": 1, "unknown": 1}),
    ("1h", {"success": 2, "failure": 1, "wait": 1, "run": 1, "unknown": 1}),
    ("24h", {"success": 3, "failure": 1, "wait": 1, "run": 1, "unknown": 1}),
])
def test_prefetch_tasks_by_window_and_status(registry, window, expected) -> None:
    got = {s: value(registry, "cdnetworks_prefetch_tasks", account="acme", window=window, status=s)
           for s in STATUSES}
    assert got == expected


def test_known_label_values_start_at_zero(registry) -> None:
    # globex has no task at all, yet every status of every window is there, at 0.
    for window in ("15m", "1h", "24h"):
        for status in STATUSES:
            assert value(registry, "cdnetworks_prefetch_tasks", account="globex", window=window, status=status) == 0
    for status in STATUSES:
        assert value(registry, "cdnetworks_purge_tasks", account="globex", window="1h", status=status) == 0
    for status in ("success", "failure"):
        assert value(registry, "cdnetworks_prefetch_tasks_finished_total", account="globex", status=status) == 0
    assert value(registry, "cdnetworks_prefetch_oldest_unfinished_age_seconds", account="globex") == 0
    assert value(registry, "cdnetworks_prefetch_duration_seconds_count", account="globex") == 0
    assert value(registry, "cdnetworks_prefetch_duration_seconds_bucket", account="globex", le="+Inf") == 0
    for result in ("accepted", "duplicate", "bad_signature", "unknown_key", "malformed", "too_large"):
        assert value(registry, "cdnetworks_fmgr_notifications_total", result=result) is not None
    assert value(registry, "cdnetworks_fmgr_notifications_total", result="too_large") == 0
    # Every API that was declared has every request result, at 0 until it happens.
    assert value(registry, "cdnetworks_api_requests_total", api="purge", result="ok") == 0
    assert value(registry, "cdnetworks_api_requests_total", api="fmgr", result="auth") == 0
    assert value(registry, "cdnetworks_up", account="globex", api="purge") == 0


def test_success_ratio_absent_until_something_finished(registry) -> None:
    assert value(registry, "cdnetworks_prefetch_success_ratio", account="acme", window="15m") == pytest.approx(2 / 3)
    assert value(registry, "cdnetworks_prefetch_success_ratio", account="acme", window="1h") == pytest.approx(2 / 3)
    assert value(registry, "cdnetworks_prefetch_success_ratio", account="acme", window="24h") == pytest.approx(3 / 4)
    for window in ("15m", "1h", "24h"):
        assert value(registry, "cdnetworks_prefetch_success_ratio", account="globex", window=window) is None
        assert value(registry, "cdnetworks_prefetch_rate_ratio", account="globex", window=window) is None
    assert value(registry, "cdnetworks_purge_success_ratio", account="acme", window="1h") == 1.0
    assert value(registry, "cdnetworks_purge_success_ratio", account="globex", window="1h") is None


def test_rate_ratio_is_the_mean_vendor_rate_of_finished_tasks(registry) -> None:
    # 15m and 1h: a1 100, a2 40, a3 100 -> 80%; 24h adds a6 at 90 -> 330/4 = 82.5%. Unfinished tasks do not count.
    assert value(registry, "cdnetworks_prefetch_rate_ratio", account="acme", window="15m") == pytest.approx(0.8)
    assert value(registry, "cdnetworks_prefetch_rate_ratio", account="acme", window="1h") == pytest.approx(0.8)
    assert value(registry, "cdnetworks_prefetch_rate_ratio", account="acme", window="24h") == pytest.approx(0.825)


def test_oldest_unfinished_age(registry) -> None:
    # a5 (wait) was created at T0-900; now is T0+30.
    assert value(registry, "cdnetworks_prefetch_oldest_unfinished_age_seconds", account="acme") == 930
    assert value(registry, "cdnetworks_purge_oldest_unfinished_age_seconds", account="acme") == 0


def test_finished_total_counts_each_task_once(registry) -> None:
    # a1 was written three times (run, success, success again): one finish. a7 is older than every window
    # but still finished while we watched. a4 moved wait -> run: not finished.
    assert value(registry, "cdnetworks_prefetch_tasks_finished_total", account="acme", status="success") == 4
    assert value(registry, "cdnetworks_prefetch_tasks_finished_total", account="acme", status="failure") == 1
    # Only success and failure are final: an unknown status never finishes, so it has no series.
    assert value(registry, "cdnetworks_prefetch_tasks_finished_total", account="acme", status="unknown") is None
    assert value(registry, "cdnetworks_purge_tasks_finished_total", account="acme", status="success") == 1


def test_duration_histogram_is_cumulative(registry) -> None:
    # Durations 10, 60, 120, 3000, 20000 s.
    expected = {"5.0": 0, "15.0": 1, "30.0": 1, "60.0": 2, "120.0": 3, "300.0": 3, "600.0": 3, "1800.0": 3,
                "3600.0": 4, "7200.0": 4, "21600.0": 5, "86400.0": 5, "+Inf": 5}
    got = {le: value(registry, "cdnetworks_prefetch_duration_seconds_bucket", account="acme", le=le)
           for le in expected}
    assert got == expected
    counts = list(got.values())
    assert counts == sorted(counts)
    assert value(registry, "cdnetworks_prefetch_duration_seconds_count", account="acme") == 5
    assert value(registry, "cdnetworks_prefetch_duration_seconds_sum", account="acme") == 23190
    assert value(registry, "cdnetworks_purge_duration_seconds_bucket", account="acme", le="15.0") == 0
    assert value(registry, "cdnetworks_purge_duration_seconds_bucket", account="acme", le="30.0") == 1


# --------------------------------------------------------------------------------------------- Fmgr


@pytest.mark.parametrize(("window", "expected"), [
    ("1h", {("none", "unknown"): 1, ("other", "other"): 1, ("0", "pending"): 0, ("1", "processing"): 1,
            ("3", "completed"): 2, ("4", "notifying"): 0, ("5", "notify_failed"): 1, ("6", "notified"): 0}),
    ("24h", {("none", "unknown"): 1, ("other", "other"): 1, ("0", "pending"): 0, ("1", "processing"): 1,
             ("3", "completed"): 2, ("4", "notifying"): 0, ("5", "notify_failed"): 1, ("6", "notified"): 1}),
])
def test_fmgr_tasks(registry, window, expected) -> None:
    got = {(c, s): value(registry, "cdnetworks_fmgr_tasks", window=window, code=c, state=s) for c, s in expected}
    assert got == expected


def test_fmgr_items_ratio_pending_bytes_notifications(registry) -> None:
    items_1h = {
        ("copy", "2", "failed"): 1, ("copy", "4", "succeeded_notifying"): 1, ("delete", "20", "failed_notified"): 0,
        ("fetch", "1", "processing"): 1, ("fetch", "3", "succeeded"): 1, ("fetch", "6", "succeeded_notified"): 0,
        ("other", "other", "other"): 1, ("move", "5", "succeeded_notify_failed"): 1,
        ("copy", "19", "failed_notify_failed"): 1,
    }
    got = {k: value(registry, "cdnetworks_fmgr_items", window="1h", op=k[0], code=k[1], state=k[2]) for k in items_1h}
    assert got == items_1h
    assert value(registry, "cdnetworks_fmgr_items", window="24h", op="delete", code="20", state="failed_notified") == 1
    # Final items: 1h has copy 4, fetch 3 and move 5 succeeded, copy 2 and copy 19 failed; 24h adds fetch 6
    # and delete 20.
    assert value(registry, "cdnetworks_fmgr_success_ratio", window="1h") == pytest.approx(3 / 5)
    assert value(registry, "cdnetworks_fmgr_success_ratio", window="24h") == pytest.approx(4 / 7)
    # job-1 (not seen yet), job-2 (processing), job-5 (unknown code 9); the oldest is job-2 from T0-1200.
    assert value(registry, "cdnetworks_fmgr_pending_tasks") == 3
    assert value(registry, "cdnetworks_fmgr_oldest_pending_age_seconds") == 1230
    assert value(registry, "cdnetworks_fmgr_processed_bytes_total", op="fetch") == 1500
    assert value(registry, "cdnetworks_fmgr_processed_bytes_total", op="copy") == 200
    assert value(registry, "cdnetworks_fmgr_processed_bytes_total", op="delete") is None
    # Every final item once, whatever window it is in, by op and outcome; both outcomes of an op that has one.
    finished = {(op, outcome): value(registry, "cdnetworks_fmgr_items_finished_total", op=op, outcome=outcome)
                for op in ("copy", "fetch", "move", "delete", "other") for outcome in ("succeeded", "failed")}
    assert finished == {("copy", "succeeded"): 1, ("copy", "failed"): 2, ("fetch", "succeeded"): 2,
                        ("fetch", "failed"): 0, ("move", "succeeded"): 1, ("move", "failed"): 0,
                        ("delete", "succeeded"): 0, ("delete", "failed"): 1, ("other", "succeeded"): None,
                        ("other", "failed"): None}
    assert value(registry, "cdnetworks_fmgr_notifications_total", result="accepted") == 1
    assert value(registry, "cdnetworks_fmgr_notifications_total", result="duplicate") == 1
    assert value(registry, "cdnetworks_fmgr_notifications_total", result="bad_signature") == 1
    assert value(registry, "cdnetworks_fmgr_notifications_total", result="unknown_key") == 0
    # job-6 went 4 -> 5 and was polled at 5 again: counted once, its two items once each.
    assert value(registry, "cdnetworks_fmgr_notify_failures_total", scope="task") == 1
    assert value(registry, "cdnetworks_fmgr_notify_failures_total", scope="item") == 2


# --------------------------------------------------------------------------------------------- quotas


def test_quotas_are_served_from_the_stored_answers_of_the_current_day(registry) -> None:
    assert {(u, value(registry, "cdnetworks_quota_limit", account="acme", kind="prefetch", unit=u),
             value(registry, "cdnetworks_quota_remaining", account="acme", kind="prefetch", unit=u))
            for u in ("urls", "bytes")} == {("urls", 20000, 12500), ("bytes", 200e9, 150e9)}
    assert value(registry, "cdnetworks_quota_last_read_timestamp_seconds", account="acme", kind="prefetch") == T0 - 120
    # Yesterday's answer: the vendor has started the quota over since; only when it was read is served.
    assert value(registry, "cdnetworks_quota_remaining", account="acme", kind="purge", unit="urls") is None
    assert value(registry, "cdnetworks_quota_limit", account="acme", kind="purge", unit="tags") is None
    assert value(registry, "cdnetworks_quota_last_read_timestamp_seconds", account="acme", kind="purge") == \
        T0 - 20 * 3600
    # globex's quotas are not polled (quota.accounts); the quota section says it was served.
    assert value(registry, "cdnetworks_quota_last_read_timestamp_seconds", account="globex", kind="prefetch") is None
    assert value(registry, "cdnetworks_scrape_collector_success", collector="quota") == 1
    assert value(registry, "cdnetworks_replica_leases", account="acme", api="purge_quota") == 1
    assert value(registry, "cdnetworks_replica_leases", account="globex", api="purge_quota") is None


# ------------------------------------------------------------------------------------ exporter health


def test_health_metrics(registry) -> None:
    assert value(registry, "cdnetworks_api_requests_total", api="prefetch", result="ok") == 2
    assert value(registry, "cdnetworks_api_requests_total", api="prefetch", result="rate_limited") == 1
    assert value(registry, "cdnetworks_api_requests_total", api="prefetch", result="unknown") == 1
    assert value(registry, "cdnetworks_api_requests_total", api="prefetch", result="no-such-result") is None
    assert value(registry, "cdnetworks_api_requests_total", api="fmgr", result="timeout") == 1
    assert value(registry, "cdnetworks_api_request_duration_seconds_bucket", api="prefetch", le="0.05") == 1
    assert value(registry, "cdnetworks_api_request_duration_seconds_bucket", api="prefetch", le="0.25") == 2
    assert value(registry, "cdnetworks_api_request_duration_seconds_bucket", api="prefetch", le="1.0") == 4
    assert value(registry, "cdnetworks_api_request_duration_seconds_bucket", api="fmgr", le="10.0") == 0
    assert value(registry, "cdnetworks_api_request_duration_seconds_bucket", api="fmgr", le="+Inf") == 1
    assert value(registry, "cdnetworks_api_request_duration_seconds_sum", api="fmgr") == 12.0
    assert value(registry, "cdnetworks_up", account="acme", api="prefetch") == 1
    assert value(registry, "cdnetworks_up", account="globex", api="prefetch") == 0
    last = "cdnetworks_last_successful_poll_timestamp_seconds"
    assert value(registry, last, account="acme", api="prefetch") == T0 - 10
    # Never succeeded: no timestamp rather than a misleading 0 (1970).
    assert value(registry, last, account="globex", api="prefetch") is None
    assert value(registry, "cdnetworks_poll_lag_seconds", account="acme", api="prefetch") == 42
    assert value(registry, "cdnetworks_exporter_build_info", version="0.1.0",
                 python=platform.python_version()) == 1


def test_describe_does_not_touch_the_store(tmp_path: Path, config: Config) -> None:
    store = Store(tmp_path / "closed.db")
    store.close()
    reg = CollectorRegistry(auto_describe=True)
    reg.register(ExporterCollector(config, store, ApiHealth()))  # would raise if it queried the closed database
    described = list(ExporterCollector(config, store, ApiHealth()).describe())
    assert [f.name for f in described] == [f.family_name for f in ExporterCollector.families(config)]
    assert all(not f.samples for f in described)


def signature(families: Iterable[Metric]) -> list[tuple[str, str, str]]:
    return [(f.name, f.type, f.documentation) for f in families]


@pytest.mark.parametrize("overrides", [
    {},
    {"purge": {"enabled": False}, "fmgr": {"enabled": False}},
    {"prefetch": {"enabled": False}, "purge": {"enabled": True, "windows": ["1h"]}},
], ids=["everything", "prefetch-only", "purge-only"])
def test_describe_is_what_collect_yields(store: Store, overrides: dict[str, Any]) -> None:
    """describe() announces exactly the families of a scrape, in its order; every sample carries the catalogue's
    label names (plus ``le`` on histogram buckets)."""
    config = parse_config({**CONFIG, **overrides}, environ={})
    health = ApiHealth()
    observe(health)
    collector = ExporterCollector(config, store, health, clock=lambda: NOW)
    collected = list(collector.collect())
    assert signature(collected) == signature(collector.describe())
    for family, spec in zip(collected, ExporterCollector.families(config), strict=True):
        assert family.name == spec.family_name
        for sample in family.samples:
            assert sample.name in spec.sample_names, sample
            extra = ("le",) if sample.name.endswith("_bucket") else ()
            assert tuple(sample.labels) == (*spec.labels, *extra), sample


def test_the_catalogue_is_everything_the_exporter_serves(tmp_path: Path) -> None:
    """With every kind and Fmgr enabled, an exporter serves each catalogue family once, in catalogue order,
    and nothing else; each of its collectors describes what it collects."""
    assert {kind.name for kind in KINDS} <= set(CONFIG)  # every kind enabled below
    storage = {"path": str(tmp_path / "s.db")}
    exporter = Exporter(parse_config({**CONFIG, "storage": storage}, environ={}), listen_address="127.0.0.1:0")
    try:
        assert signature(exporter.registry.collect()) == [
            (f.family_name, f.type, f.help) for f in metrics.ALL]
        for collector in (exporter.collector, exporter.reload_status, exporter.web_collector):
            assert signature(collector.describe()) == signature(collector.collect())
    finally:
        exporter.stop()


def test_disabled_parts_are_not_exported(tmp_path: Path) -> None:
    data = {**CONFIG, "purge": {"enabled": False}, "fmgr": {"enabled": False}, "quota": {"enabled": False}}
    store = Store(tmp_path / "s.db", clock=Clock(T0))
    try:
        reg = CollectorRegistry(auto_describe=True)
        reg.register(ExporterCollector(parse_config(data, environ={}), store, ApiHealth(), clock=lambda: NOW))
        names = {m.name for m in reg.collect()}
        assert "cdnetworks_prefetch_tasks" in names
        assert not {n for n in names if n.startswith(("cdnetworks_purge_", "cdnetworks_fmgr_", "cdnetworks_quota_"))}
    finally:
        store.close()


# ------------------------------------------------------------------------------------------- golden


def normalise(text: str) -> str:
    """build_info carries the Python version of the machine that renders it."""
    return re.sub(r'python="[^"]*"', 'python="X.Y.Z"', text)


def test_golden_exposition(registry) -> None:
    rendered = normalise(generate_latest(registry).decode())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "exposition changed: see the module docstring to update the golden file"


def test_promtool_accepts_the_exposition(registry) -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(registry), capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


# -------------------------------------------------------------------------------------- catalogue


@pytest.mark.parametrize(("build", "problem"), [
    (lambda: metrics.Counter("cdnetworks_things", "Things."), "end in _total"),
    (lambda: metrics.Gauge("cdnetworks_things_total", "Things."), "end in _total"),
    (lambda: metrics.Gauge("things", "Things."), "not a cdnetworks_ metric name"),
    (lambda: metrics.Gauge("cdnetworks_things", "Things.", ("a", "a")), "bad label names"),
    (lambda: metrics.Gauge("cdnetworks_things", "Things.", ("le",)), "reserved"),
    (lambda: metrics.Gauge("cdnetworks_things", "Two\nlines."), "one non-empty line"),
    (lambda: metrics.Histogram("cdnetworks_things_seconds", "Things."), "buckets"),
    (lambda: metrics.Histogram("cdnetworks_things_seconds", "Things.", buckets=(2.0, 1.0)), "buckets"),
    (lambda: metrics.Histogram("cdnetworks_things_count", "Things.", buckets=(1.0,)), "sample suffix"),
])
def test_the_catalogue_refuses_malformed_families(build, problem) -> None:
    with pytest.raises(ValueError, match=problem):
        build()


def test_the_catalogue_refuses_clashing_names() -> None:
    seconds = metrics.Histogram("cdnetworks_x_seconds", "X.", buckets=(1.0,))
    with pytest.raises(ValueError, match="cdnetworks_x_seconds_count twice"):
        metrics._check_unique((seconds, metrics.Gauge("cdnetworks_x_seconds_count", "Y.")))


def test_store_keys_stay_those_of_existing_databases() -> None:
    """The store persists counters and histograms under these keys: renaming one would restart it at 0."""
    assert [f.store_key for kind in ("prefetch", "purge") for f in (metrics.CDN[kind].tasks_finished,
                                                                     metrics.CDN[kind].duration)] == [
        "prefetch_tasks_finished_total", "prefetch_duration_seconds",
        "purge_tasks_finished_total", "purge_duration_seconds"]
    assert [f.store_key for f in (metrics.FMGR_PROCESSED_BYTES, metrics.FMGR_NOTIFICATIONS,
                                  metrics.FMGR_NOTIFY_FAILURES, metrics.FMGR_ITEMS_FINISHED)] == [
        "fmgr_processed_bytes_total", "fmgr_notifications_total", "fmgr_notify_failures_total",
        "fmgr_items_finished_total"]


# ------------------------------------------------------------------------------------------- docs


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """The rows of docs/metrics.md's reference table: metric name -> (type, label names)."""
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    section = METRICS_DOC.read_text(encoding="utf-8").split("## Which metrics exist when", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or not cells[0].startswith("`"):
            continue  # the header and its rule
        name = cells[0].strip("`")
        assert name not in rows, f"docs/metrics.md documents {name} twice"
        rows[name] = (cells[1].split(" ")[0], tuple(re.findall(r"`([^`]+)`", cells[2])))
    return rows


def test_the_metrics_reference_documents_the_catalogue() -> None:
    """docs/metrics.md's table has a row per catalogue family, with its type and label names, and no other.
    The first kind's families have rows of their own; every other kind has one ``cdnetworks_<kind>_*`` row
    that stands for the same families of that kind."""
    rows = documented_metrics()
    first = KINDS[0].name
    expected = {f.name: (f.type, f.labels) for f in metrics.ALL}
    for kind in KINDS[1:]:
        assert rows.pop(f"cdnetworks_{kind.name}_*", None) == ("", ()), f"no cdnetworks_{kind.name}_* row"
        for same, family in zip(metrics.CDN[first], metrics.CDN[kind.name], strict=True):
            assert expected.pop(family.name) == expected[same.name]
    assert rows == expected


def test_the_metrics_reference_names_only_served_metrics() -> None:
    """Wherever docs/metrics.md quotes a metric name, the exporter serves it (as a family or a sample)."""
    served = {name for f in metrics.ALL for name in (f.name, *f.sample_names)}
    kind_suffixes = {f.name.removeprefix(f"cdnetworks_{kind}") for kind, fs in metrics.CDN.items() for f in fs}
    wildcards = {f"cdnetworks_{kind.name}_*" for kind in KINDS}
    for quoted in re.findall(r"`([^`]*)`", METRICS_DOC.read_text(encoding="utf-8")):
        if quoted.startswith("cdnetworks_") and quoted != "cdnetworks_":
            assert quoted in served | wildcards, f"docs/metrics.md names {quoted}, which is not served"
        elif re.fullmatch(r"\*_[a-z_]+", quoted):
            assert quoted[1:] in kind_suffixes, f"docs/metrics.md names {quoted}, which no task kind serves"


def test_metrics_endpoint_filters_by_name(registry) -> None:
    server = Server(App(registry=registry, version="0.1.0", ready=lambda: (True, "ready")), "127.0.0.1:0")
    server.start()
    try:
        text = requests.get(server.url + "/metrics", params={"name[]": "cdnetworks_up"}, timeout=5).text
    finally:
        server.stop()
    assert 'cdnetworks_up{account="acme",api="prefetch"} 1.0' in text
    assert "cdnetworks_prefetch_tasks" not in text


def scrape(exporter: Exporter, query: str) -> str:
    """GET /metrics?query through the exporter's current WSGI app."""
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": query}
    return b"".join(exporter.app(environ, lambda status, headers: None)).decode()


def test_name_filter_follows_a_reload(tmp_path: Path) -> None:
    """What a reload enables or disables is what ``name[]`` finds: each configuration has its own registry."""
    storage = {"path": str(tmp_path / "s.db")}
    purge_off = {**CONFIG, "purge": {"enabled": False}, "storage": storage}
    exporter = Exporter(parse_config(purge_off, environ={}), listen_address="127.0.0.1:0")
    query = "name[]=cdnetworks_purge_tasks&name[]=cdnetworks_purge_duration_seconds"
    try:
        assert scrape(exporter, query) == ""
        exporter.reload(parse_config({**CONFIG, "storage": storage}, environ={}))
        text = scrape(exporter, query)
        assert "# TYPE cdnetworks_purge_tasks gauge" in text
        assert 'cdnetworks_purge_duration_seconds_count{account="acme"} 0.0' in text
        assert "cdnetworks_prefetch_" not in text
        exporter.reload(parse_config(purge_off, environ={}))
        assert scrape(exporter, query) == ""
    finally:
        exporter.stop()


def test_reload_drops_self_metrics_of_removed_accounts(tmp_path: Path) -> None:
    # Left in place, the frozen last-poll timestamp of a removed account would fire CDNetworksNotPolling.
    storage = {"path": str(tmp_path / "s.db")}
    exporter = Exporter(parse_config({**CONFIG, "storage": storage}, environ={}), listen_address="127.0.0.1:0")
    try:
        exporter.health.poll_result("globex", "prefetch", True, T0)
        assert exporter.registry.get_sample_value("cdnetworks_up", {"account": "globex", "api": "prefetch"}) == 1
        exporter.reload(parse_config({**CONFIG, "accounts": CONFIG["accounts"][:1], "purge": {"enabled": False},
                                      "storage": storage}, environ={}))
        reg = exporter.registry
        assert reg.get_sample_value("cdnetworks_prefetch_tasks", {"account": "globex", "window": "1h",
                                                                  "status": "run"}) is None
        assert reg.get_sample_value("cdnetworks_up", {"account": "globex", "api": "prefetch"}) is None
        assert reg.get_sample_value("cdnetworks_last_successful_poll_timestamp_seconds",
                                    {"account": "globex", "api": "prefetch"}) is None
        assert reg.get_sample_value("cdnetworks_up", {"account": "acme", "api": "purge"}) is None
    finally:
        exporter.stop()
