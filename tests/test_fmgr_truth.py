"""Fmgr truth: the exporter's Fmgr numbers against the simulated vendor's own ground truth.

The real exporter (HTTP server, registration API, notify receiver, its own Fmgr poller) runs against the
simulator over 127.0.0.1 under one manual clock, second by second, through hours of fake time. Jobs come in
every kind the vendor's documents allow: without a notifyURL (they stay at 3), with one that is delivered
(3 -> 4 -> 6), and with one that cannot be reached (3 -> 4 -> 5, items 5 and 19); registered by a job runner,
or known only from their notification; with the vendor's duplicate and forged deliveries. At checkpoints where
every job has settled, every ``cdnetworks_fmgr_*`` series of ``GET /metrics`` must equal what the vendor says
about the jobs the exporter could know of, exactly: tasks and items by code in every window, the success
ratio, processed bytes, notification failures and notification outcomes.

A second run adds verified notifications that no store can hold (sizes and codes beyond 2**53, ids outside
the registration rules): each must be answered 400 and counted as malformed, and change nothing else.
"""

from __future__ import annotations

import base64
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from conftest import T0, Clock
from prometheus_client.parser import text_string_to_metric_families
from test_fmgr_e2e import AK, SK, TIMEOUT, TOKEN, Exporters, notify_url, run_poller

from exporter.app import Exporter
from exporter.fmgr import wire as fmgrwire
from exporter.simulator import Simulator
from exporter.vendor import signing

HOUR = 3600
WINDOWS = {"15m": 900, "1h": 3600, "24h": 86400}
OPS = ("fetch", "copy", "move", "delete", "compress", "deletePrefix")
JOBS_PER_HOUR = 45  # one every 20 s during the first quarter of each hour
# Seconds into each hour; every job has settled by then (see settle_by). First-seen times are whole seconds,
# so at hh:mm:59 a window is the same at second and at minute resolution: this test is about codes, not edges.
CHECK_AT = (25 * 60 + 59, 50 * 60 + 59)


@pytest.fixture
def exporters(clock: Clock, tmp_path) -> Iterator[Exporters]:
    rig = Exporters(clock, str(tmp_path / "exporter.db"))
    yield rig
    rig.stop_all()


@dataclass
class Job:
    pid: str
    created: float
    register_at: float | None  # None: known only from its notification
    notify: bool
    notify_fails: bool


@dataclass
class Scenario:
    sim: Simulator
    exporter: Exporter
    clock: Clock
    jobs: list[Job]
    registered: dict[str, float] = field(default_factory=dict)  # pid -> when the job runner registered it
    hostile: list[tuple[str, bytes]] = field(default_factory=list)  # (why, body) posted signed


def plan_jobs(hours: int, seed: int) -> list[Job]:
    rng = random.Random(seed)
    jobs = []
    for hour in range(hours):
        for k in range(JOBS_PER_HOUR):
            # Off the minute (+7 s): a registration never lands exactly on a window edge.
            created = T0 + hour * HOUR + 20 * k + 7
            kind = rng.choice(("plain", "hook", "hook", "notify-only"))
            register_at = None if kind == "notify-only" else created + rng.randint(1, 5)
            notify = kind != "plain"
            jobs.append(Job(f"h{hour}-job-{k:03d}", created, register_at, notify,
                            notify and rng.random() < 0.3))
    return jobs


def add_jobs(sim: Simulator, exporter: Exporter, jobs: list[Job], seed: int) -> None:
    rng = random.Random(seed + 1)
    for job in jobs:
        ops = [rng.choice(OPS) for _ in range(rng.randint(1, 3))]
        sim.add_fmgr_task(
            job.pid, ops, created_ts=job.created, pending=rng.randint(1, 10), processing=rng.randint(5, 120),
            fail_items=[i for i in range(len(ops)) if rng.random() < 0.2], fsize=rng.randint(1, 10**9),
            notify_url=notify_url(exporter) if job.notify else None, notify_key=(AK, SK) if job.notify else None,
            notify_delay=rng.randint(1, 8), notify_fails=job.notify_fails,
        )


def start(sim_factory: Any, clock: Clock, exporters: Exporters, hours: int, seed: int) -> Scenario:
    sim = sim_factory()
    sim.configure_notifier(duplicate_ratio=0.1, forged_ratio=0.05, max_attempts=4)
    # Only keys the exporter has always had: the defaults of the lifecycle settings are under test too.
    exporter = exporters.start(sim, windows=list(WINDOWS), poll_interval="30s", max_body=1048576)
    jobs = plan_jobs(hours, seed)
    add_jobs(sim, exporter, jobs, seed)
    return Scenario(sim, exporter, clock, jobs)


def register(s: Scenario, pids: list[str]) -> None:
    response = requests.post(f"{s.exporter.server.url}/api/v1/fmgr/tasks", json={"persistentIds": pids},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    for pid in pids:
        s.registered.setdefault(pid, s.clock())


def post_hostile(s: Scenario) -> None:
    """Signed, verified bodies the vendor could send by mistake; none may be stored or answered 5xx."""
    victim = next(j.pid for j in s.jobs if j.pid in s.registered)  # an id the exporter tracks
    item = {"cmd": "fetch/aHR0cDovL2V4YW1wbGUuY29tL2EubXA0", "code": 3, "fsize": 1000}
    bodies = {
        "fsize 2**63 for a tracked id": {"id": victim, "code": 3, "items": [{**item, "fsize": 2**63}]},
        "fsize 2**64": {"id": "hostile-1", "code": 3, "items": [{**item, "fsize": 2**64}]},
        "item code 2**64": {"id": "hostile-2", "code": 3, "items": [{**item, "code": 2**64}]},
        "fsize 2**53 + 1 as a string": {"id": victim, "code": 3, "items": [{**item, "fsize": str(2**53 + 1)}]},
        "id with NUL": {"id": "hostile\u00003", "code": 3, "items": [item]},
        "id with a newline": {"id": "hostile-4\nx", "code": 3, "items": [item]},
        "id of 200,000 characters": {"id": "h" * 200_000, "code": 3, "items": [item]},
    }
    for why, payload in bodies.items():
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())
        signed_url = s.exporter.config.fmgr.notify.url
        assert signed_url is not None
        auth = signing.fmgr_notify_authorization(AK, SK, signed_url, body)
        response = requests.post(notify_url(s.exporter), data=body, headers={"Authorization": auth},
                                 timeout=TIMEOUT)
        assert (response.status_code, response.json().get("result")) == (400, "malformed"), why
        s.hostile.append((why, body))


# --------------------------------------------------------------------------------------------------
# Ground truth


def first_seen(s: Scenario) -> dict[str, float]:
    """When the exporter could first know of each job: registered, or its first genuine delivery accepted."""
    seen = dict(s.registered)
    for entry in s.sim.notify_log:
        if entry["status_code"] == 200 and not entry["forged"]:
            seen[entry["id"]] = min(seen.get(entry["id"], entry["ts"]), entry["ts"])
    return seen


def truth(s: Scenario, now: float) -> dict[str, Any]:
    seen = first_seen(s)
    out: dict[str, Any] = {"windows": {}, "bytes": Counter(), "failures": Counter()}
    statuses = {pid: s.sim.fmgr_status(pid, at=now) for pid in seen}
    for pid, status in statuses.items():
        assert status is not None, pid
        if status["code"] == 5:
            out["failures"]["task"] += 1
        for item in status["items"]:
            op, code = fmgrwire.op_of(item["cmd"]), int(item["code"])
            out["failures"]["item"] += code in (5, 19)
            if fmgrwire.item_outcome(code) == "succeeded" and item["fsize"] not in ("", None):
                out["bytes"][op] += int(item["fsize"])
    for name, width in WINDOWS.items():
        tasks: Counter[tuple[str, str]] = Counter()
        items: Counter[tuple[str, str, str]] = Counter()
        for pid, status in statuses.items():
            if not now - width < seen[pid] <= now:
                continue
            tasks[(str(status["code"]), fmgrwire.task_state(status["code"]))] += 1
            for item in status["items"]:
                code = int(item["code"])
                items[(fmgrwire.op_of(item["cmd"]), str(code), fmgrwire.item_state(code))] += 1
        out["windows"][name] = {"tasks": tasks, "items": items}
    log = s.sim.notify_log
    out["notifications"] = Counter({
        "accepted": sum(1 for e in log if e["status_code"] == 200 and not e["duplicate"]),
        "duplicate": sum(1 for e in log if e["status_code"] == 200 and e["duplicate"]),
        "bad_signature": sum(1 for e in log if e["forged"]),
        "malformed": len(s.hostile),
    })
    return out


def scrape(s: Scenario) -> dict[str, list[tuple[dict[str, str], float]]]:
    response = requests.get(s.exporter.server.url + "/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def check(s: Scenario, now: float) -> None:
    want = truth(s, now)
    got = scrape(s)
    for name in WINDOWS:
        tasks = Counter({(lab["code"], lab["state"]): int(v) for lab, v in got["cdnetworks_fmgr_tasks"]
                         if lab["window"] == name and v})
        assert tasks == want["windows"][name]["tasks"], f"tasks by code, window {name}, at T0+{now - T0:g}s"
        items = Counter({(lab["op"], lab["code"], lab["state"]): int(v) for lab, v in got["cdnetworks_fmgr_items"]
                         if lab["window"] == name and v})
        assert items == want["windows"][name]["items"], f"items by code, window {name}, at T0+{now - T0:g}s"
        outcomes = Counter(fmgrwire.item_outcome(int(code)) for (_, code, _), n in items.items() for _ in range(n))
        ratio = [v for lab, v in got.get("cdnetworks_fmgr_success_ratio", []) if lab["window"] == name]
        final = outcomes["succeeded"] + outcomes["failed"]
        assert ratio == ([outcomes["succeeded"] / final] if final else []), f"success ratio, window {name}"
    assert [v for _, v in got["cdnetworks_fmgr_pending_tasks"]] == [0.0], "every job has settled"
    processed = {lab["op"]: v for lab, v in got.get("cdnetworks_fmgr_processed_bytes_total", []) if v}
    assert processed == {op: float(n) for op, n in want["bytes"].items() if n}, "processed bytes"
    notes = {lab["result"]: v for lab, v in got["cdnetworks_fmgr_notifications_total"] if v}
    assert notes == {r: float(n) for r, n in want["notifications"].items() if n}, "notification outcomes"
    failures = {lab["scope"]: v for lab, v in got.get("cdnetworks_fmgr_notify_failures_total", [])}
    assert failures == {"task": want["failures"]["task"], "item": want["failures"]["item"]}, "notify failures"


def run(s: Scenario, hours: int, *, hostile_at: float | None = None) -> int:
    """Second by second: the job runner registers, the vendor delivers, the exporter polls; checks at
    CHECK_AT of each hour. Returns the number of checkpoints passed."""
    due: dict[float, list[str]] = {}
    for job in s.jobs:
        if job.register_at is not None:
            due.setdefault(job.register_at, []).append(job.pid)
    checkpoints = {T0 + h * HOUR + c for h in range(hours) for c in CHECK_AT}
    passed = 0
    end = T0 + hours * HOUR
    while s.clock.t <= end:
        now = s.clock.t
        if now in due:
            register(s, due.pop(now))
        if hostile_at is not None and now == hostile_at:
            post_hostile(s)
        s.sim.deliver_due_notifications()
        run_poller(s.exporter, s.clock, now)
        if now in checkpoints:
            check(s, now)
            passed += 1
        s.clock.t = now + 1
    return passed


def settle_by(jobs: list[Job]) -> float:
    """Latest moment (seconds into its hour) at which a job can still change: created + 10 s pending +
    120 s processing + 8 s at 3, then either 5 min of grace at 3 or the notification (4 attempts, 2 s to
    record) and a confirming poll; plus a poll interval. CHECK_AT must come after it."""
    last = max(j.created - T0 for j in jobs) % HOUR
    return last + 10 + 120 + 8 + 300 + 30 + 30


def test_fmgr_codes_match_the_vendor_truth_through_the_whole_lifecycle(sim_factory, clock, exporters):
    hours = 3
    s = start(sim_factory, clock, exporters, hours, seed=7)
    assert settle_by(s.jobs) < min(CHECK_AT)
    # The scenario covers what it claims: every kind of job, and polls that land while a job is at 3.
    assert {(j.register_at is not None, j.notify, j.notify_fails) for j in s.jobs} == {
        (True, False, False), (True, True, False), (True, True, True), (False, True, False), (False, True, True)}

    assert run(s, hours) == hours * len(CHECK_AT)

    final = truth(s, clock())
    assert final["windows"]["24h"]["tasks"].keys() >= {("3", "completed"), ("5", "notify_failed"),
                                                       ("6", "notified")}
    assert final["failures"]["task"] > 5
    polled_at_3 = [
        r["body"]["persistentId"] for r in s.sim.request_log
        if r["api"] == "fmgr" and s.sim.fmgr_status(r["body"]["persistentId"], at=r["ts"])["code"] == 3
        and next(j for j in s.jobs if j.pid == r["body"]["persistentId"]).notify
    ]
    assert len(set(polled_at_3)) >= 5, "some jobs with a notifyURL must be polled in their seconds at 3"


def test_verified_notifications_no_store_can_hold_change_nothing(sim_factory, clock, exporters):
    hours = 1
    s = start(sim_factory, clock, exporters, hours, seed=11)
    # Mid-run, with tracked and untracked ids, between registrations, polls and deliveries.
    assert run(s, hours, hostile_at=T0 + 10 * 60) == hours * len(CHECK_AT)
    assert len(s.hostile) == 7
    assert {t["persistentId"] for t in s.exporter.store.list_fmgr_tasks(None, 1000)} == set(first_seen(s))
