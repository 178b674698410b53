"""Failure events as logs (``--log.task-failures``, exporter/failurelog.py): one structured line per CDN task and
per Fmgr item that ends in failure, each once, never again after a restart, and once across replicas sharing a
PostgreSQL store. The expected lines come from the simulator: the tasks it says failed, and the items it says
failed with their error."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from conftest import T0, make_config

from exporter.app import Exporter
from exporter.cli import JsonFormatter, LogfmtFormatter
from exporter.config import Account
from exporter.failurelog import FailureLog
from exporter.storage.repository import open_repository
from exporter.storage.store import Store
from exporter.vendor.cdn import CdnClient

HOUR, DAY = 3600.0, 86400.0
VENDOR_TZ = timezone(timedelta(hours=8))
TOKEN = "failures-token"


def read_vendor(store: Store, account: Account, clock: Any) -> None:
    """Everything of the last day the vendor shows for (account, prefetch) now, stored by the real upsert."""
    client = CdnClient(account, clock=clock, timeout=5)
    end = math.floor(clock())
    lo = end - int(DAY) + 1
    page_no = 1
    while True:
        page = client.query("prefetch", lo, end, page_no=page_no, page_size=500)
        store.upsert_cdn_tasks(account.name, "prefetch", page.tasks)
        if page_no * 500 >= page.count:
            return
        page_no += 1


def failed_truth(sim: Any, account: str, at: float) -> set[tuple[str, str, str, str, float]]:
    """(account, url, createTime, finishTime, rate) of the tasks the vendor shows failed at ``at`` (last day)."""
    def utc(text: str) -> str:
        t = datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=VENDOR_TZ)
        return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    return {(account, t["url"], utc(t["createTime"]), utc(t["finishTime"]), float(t["rate"]))
            for t in sim.cdn_tasks_at(account, "prefetch", math.floor(at) - DAY + 1, at, at=at)
            if t["status"] == "failure"}


def logged(records: list[logging.LogRecord]) -> list[tuple[str, str, str, str, float]]:
    out = []
    for r in records:
        f = r.fields  # type: ignore[attr-defined]
        assert r.getMessage() == "CDN task failed" and f["kind"] == "prefetch"
        out.append((f["account"], f["url"], f["createTime"], f["finishTime"], f["rate"]))
    return out


class Captured:
    """The failure lines logged so far in the test."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog

    def records(self) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if r.name == "exporter.failures"]

    def clear(self) -> None:
        self.caplog.clear()


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Captured:
    caplog.set_level(logging.INFO, logger="exporter.failures")
    return Captured(caplog)


def test_each_failed_task_is_logged_once_and_not_again_after_a_restart(sim_factory, clock, tmp_path, captured):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=300, failure_ratio=0.2, start_ts=T0 - 2 * DAY)
    config = make_config(sim.url, str(tmp_path / "exporter.db"))
    acme = config.accounts[0]
    exporter = Exporter(config, listen_address="127.0.0.1:0", clock=clock, log_task_failures=True)
    assert exporter.failure_log is not None
    read_vendor(exporter.store, acme, clock)
    exporter.failure_log.drain()
    first = logged(captured.records())
    assert len(first) == len(set(first)) and set(first) == failed_truth(sim, "acme", clock())
    assert len(first) > 50
    read_vendor(exporter.store, acme, clock)  # the same answers again: nothing new failed
    assert exporter.failure_log.drain() == 0
    exporter.stop()

    captured.clear()
    exporter = Exporter(config, listen_address="127.0.0.1:0", clock=clock, log_task_failures=True)
    assert exporter.failure_log is not None
    read_vendor(exporter.store, acme, clock)
    assert exporter.failure_log.drain() == 0  # a restart logs nothing twice
    before = failed_truth(sim, "acme", clock())
    clock.advance(1800)
    read_vendor(exporter.store, acme, clock)
    exporter.stop()  # its last look at the store logs what the last read found
    new = logged(captured.records())
    assert sorted(new) == sorted(failed_truth(sim, "acme", clock()) - before) and new

    # The lines as the log formats write them.
    record = captured.records()[0]
    line = LogfmtFormatter().format(record)
    _account, url, created, finished, rate = new[0]
    assert (f'msg="CDN task failed" account=acme kind=prefetch url={url} createTime={created} '
            f"finishTime={finished} rate={rate!r}") in line
    doc = json.loads(JsonFormatter().format(record))
    assert (doc["logger"], doc["url"], doc["createTime"], doc["rate"]) == ("exporter.failures", url, created, rate)


def test_off_by_default_nothing_is_kept_for_logging(sim_factory, clock, tmp_path, captured):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=300, failure_ratio=0.2, start_ts=T0 - DAY)
    config = make_config(sim.url, str(tmp_path / "exporter.db"))
    exporter = Exporter(config, listen_address="127.0.0.1:0", clock=clock)
    assert exporter.failure_log is None
    read_vendor(exporter.store, config.accounts[0], clock)
    assert exporter.store.take_failures(1000) == []
    exporter.stop()
    assert not captured.records()


def test_each_failed_fmgr_item_is_logged_once_with_its_error(sim_factory, clock, tmp_path, captured):
    sim = sim_factory()
    config = make_config(sim.url, str(tmp_path / "exporter.db"), prefetch={"enabled": False}, fmgr={
        "enabled": True, "endpoint": sim.url, "poll_interval": "30s", "register_token": TOKEN,
        "rate_limit": {"requests": 100, "per": "1s"}, "request_timeout": "2s"})
    ids = [f"job-{i}" for i in range(8)]
    for i, pid in enumerate(ids):
        sim.add_fmgr_task(pid, ["fetch", "copy", "delete"], created_ts=clock(), fail_items=[j for j in range(3)
                                                                                            if (i + j) % 4 == 0])
    exporter = Exporter(config, listen_address="127.0.0.1:0", clock=clock, log_task_failures=True)
    assert exporter.failure_log is not None
    exporter.store.register_fmgr_ids(ids, "api")
    poller = exporter.pollers.fmgr
    for _ in range(2000):  # poll, as the exporter does, until every task is final
        due = poller.next_run()
        if due > T0 + 900:
            break
        clock.t = max(clock.t, due)
        poller.step()
        exporter.failure_log.drain()
    exporter.stop()
    got = Counter((r.fields["id"], r.fields["item"], r.fields["op"], r.fields["code"], r.fields["error"])  # type: ignore[attr-defined]
                  for r in captured.records())
    want: Counter[tuple[Any, ...]] = Counter()
    for pid in ids:
        status = sim.fmgr_status(pid)
        assert status is not None
        for idx, item in enumerate(status["items"]):
            if int(item["code"]) in (2, 18, 19, 20):
                want[(pid, idx, item["cmd"].split("/")[0], 2, item["error"])] += 1
    assert got == want and sum(want.values()) >= 6
    assert all(r.getMessage() == "Fmgr item failed" for r in captured.records())


def test_replicas_on_one_postgresql_store_log_each_failure_once(sim_factory, clock, postgres_url, captured):
    """Two replicas' stores on one database, each with its FailureLog running: the one that polls writes the
    failures, both take them concurrently, and every failure is logged by exactly one of them."""
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=600, failure_ratio=0.3, start_ts=T0 - DAY)
    config = make_config(sim.url, "unused.db")
    stores = [Store("", clock=clock, repository=open_repository(postgres_url)) for _ in range(2)]
    logs = [FailureLog(lambda s=s: s, interval=0.01) for s in stores]  # type: ignore[misc]
    try:
        for store in stores:
            store.log_failures = True
        for log in logs:
            log.start()
        writer = threading.Thread(target=read_vendor, args=(stores[0], config.accounts[0], clock))
        writer.start()
        writer.join(60)
        first = failed_truth(sim, "acme", clock())
        clock.advance(600)
        read_vendor(stores[1], config.accounts[0], clock)  # the other replica polls now
    finally:
        for log in logs:
            log.stop()
        for store in stores:
            store.close()
    lines = [(r.fields["url"], r.fields["createTime"]) for r in captured.records()]  # type: ignore[attr-defined]
    want = {(url, created) for _, url, created, _, _ in first | failed_truth(sim, "acme", clock())}
    assert len(lines) == len(set(lines)) and set(lines) == want and len(want) > 50
    assert sum(log.logged for log in logs) == len(want)
