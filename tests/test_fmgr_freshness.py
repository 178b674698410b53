"""Fmgr freshness: how long after the vendor moves a job does ``/metrics`` show it, second by second.

The real exporter (HTTP server, registration API, notify receiver, its own Fmgr poller under the default
``fmgr.rate_limit``) runs against the simulator over 127.0.0.1 under one manual clock, with a short
``fmgr.poll_interval``. Jobs arrive as streams: with a notifyURL (3 -> 4 -> 6, or 3 -> 4 -> 5 when every
delivery is lost; items 3 -> 4 -> 5/6 and 2 -> 18 -> 19/20), with duplicate and forged deliveries, some jobs
registered by their runner and some known only from their notification; and without a notifyURL (they stay
at 3). Every second, after the vendor's deliveries and the exporter's polls:

* ``cdnetworks_fmgr_tasks`` and ``cdnetworks_fmgr_items`` (by code and state) are compared with the vendor's
  real state at that instant (``Simulator.fmgr_status(id, at=now)``), not with what the exporter was served:
  only jobs the vendor moved within the last two poll intervals (plus a second of stepping) may differ, and
  each of those only by showing a code the vendor had within that time;
* every change of a job at the vendor (``Simulator.fmgr_changes``) is timed until the exporter shows it (or
  a later code of the same job): its staleness. A change before the exporter could know of the job (a job
  known only from its notification) counts from the moment it could.

The simulator's own rate limit for the Fmgr API is the exporter's budget: it must never be exceeded.
"""

from __future__ import annotations

import sqlite3
import statistics
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
from exporter.simulator.draws import hash_uniform

POLL = 5.0  # fmgr.poll_interval
# What may differ at a scrape: changes of the last two poll intervals, plus one step of this test's clock.
ALLOWED = 2 * POLL + 1.0
RATE = (10, 1.0)  # fmgr.rate_limit's default, and the simulator's limit for the Fmgr API
RUN = 20 * 60  # seconds of fake time
State = tuple[int | None, tuple[int | None, ...]]  # task code, item codes by index


@pytest.fixture
def exporters(clock: Clock, tmp_path) -> Iterator[Exporters]:
    rig = Exporters(clock, str(tmp_path / "exporter.db"))
    yield rig
    rig.stop_all()


@dataclass
class Watch:
    """One job the exporter can know of: the vendor's changes since then, and when each was first shown."""

    known: float
    changes: list[tuple[float, State]] = field(default_factory=list)  # (when it can be seen, state)
    shown: list[float | None] = field(default_factory=list)  # when the exporter first showed it (or later)
    settled: bool = False  # the vendor will not move it again: its changes need no more refreshing


@dataclass
class Run:
    sim: Simulator
    exporter: Exporter
    clock: Clock
    db: sqlite3.Connection
    register_at: dict[float, list[str]] = field(default_factory=dict)
    registered: set[str] = field(default_factory=set)
    watches: dict[str, Watch] = field(default_factory=dict)
    notify_seen: int = 0  # notify log entries already read
    scrapes: int = 0
    worst_diff: int = 0  # most series units /metrics differed from the vendor by, at one scrape
    late: list[str] = field(default_factory=list)  # what was shown later than ALLOWED, or not at all


def vendor_state(status: dict[str, Any]) -> State:
    return int(status["code"]), tuple(int(i["code"]) for i in status["items"])


def start(sim_factory: Any, exporters: Exporters) -> Run:
    sim = sim_factory(rate_limits={"fmgr": RATE})
    sim.configure_notifier(duplicate_ratio=0.2, forged_ratio=0.05, max_attempts=4)
    # Everything else (notify_grace, confirm_delay) at its default: they are what is under test.
    exporter = exporters.start(sim, windows=["1h"], poll_interval=f"{POLL:g}s",
                               rate_limit={"requests": RATE[0], "per": f"{RATE[1]:g}s"})
    # One job every 8 s with a notifyURL (a quarter of them cannot be notified), one a minute without.
    sim.add_fmgr_stream(per_minute=7.5, start_ts=T0 + 3, failure_ratio=0.2, notify_url=notify_url(exporter),
                        notify_key=(AK, SK), id_prefix="hook", notify_failure_ratio=0.25)
    sim.add_fmgr_stream(per_minute=1, start_ts=T0 + 11, failure_ratio=0.2, id_prefix="plain")
    path = exporter.config.storage.path
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    run = Run(sim, exporter, exporters.clock, db)
    for pid in sim.fmgr_ids(T0 + RUN):
        draw = hash_uniform("freshness", pid)
        if pid.startswith("hook") and draw < 0.3:
            continue  # known only from its notification
        created = sim.fmgr_changes(pid, T0 + RUN)[0][0]
        run.register_at.setdefault(created + 1 + int(draw * 5), []).append(pid)
    return run


def register(run: Run, pids: list[str]) -> None:
    response = requests.post(f"{run.exporter.server.url}/api/v1/fmgr/tasks", json={"persistentIds": pids},
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    run.registered.update(pids)
    for pid in pids:
        run.watches.setdefault(pid, Watch(run.clock()))


def learn_notified(run: Run, now: float) -> None:
    """Jobs the exporter could first know of now: a genuine delivery it accepted."""
    log = run.sim.notify_log
    for entry in log[run.notify_seen:]:
        if entry["status_code"] == 200 and not entry["forged"]:
            run.watches.setdefault(entry["id"], Watch(now))
    run.notify_seen = len(log)


def refresh(run: Run, pid: str, watch: Watch, now: float) -> None:
    """The vendor's changes of ``pid`` up to ``now``, each dated no earlier than the job could be known."""
    if watch.settled:
        return
    changes: list[tuple[float, State]] = []
    for ts, code in run.sim.fmgr_changes(pid, now):
        status = run.sim.fmgr_status(pid, at=ts)
        assert status is not None and int(status["code"]) == code
        if ts <= watch.known and changes:
            changes.pop()  # superseded before the exporter could know of the job
        changes.append((max(ts, watch.known), vendor_state(status)))
    assert changes[: len(watch.changes)] == watch.changes, f"{pid}: the vendor's history changed"
    watch.shown.extend([None] * (len(changes) - len(watch.changes)))
    watch.changes = changes
    last = changes[-1][1][0]
    watch.settled = last in (5, 6) or (last == 3 and pid.startswith("plain"))


def exporter_view(run: Run) -> tuple[dict[str, State], dict[str, list[str]]]:
    """Each tracked job's task and item codes as the exporter's store holds them, and each job's item ops."""
    tasks = {pid: code for pid, code in run.db.execute("SELECT id, code FROM fmgr_tasks")}
    items: dict[str, list[tuple[int, str, int | None]]] = {}
    for pid, idx, op, code in run.db.execute("SELECT task_id, idx, op, code FROM fmgr_items"):
        items.setdefault(pid, []).append((idx, op, code))
    view = {pid: (code, tuple(c for _, _, c in sorted(items.get(pid, [])))) for pid, code in tasks.items()}
    ops = {pid: [op for _, op, _ in sorted(rows)] for pid, rows in items.items()}
    return view, ops


def labels(code: int | None, *, item: bool) -> tuple[str, str]:
    if code is None:
        return "none", "unknown"
    return fmgrwire.code_label(code), (fmgrwire.item_state(code) if item else fmgrwire.task_state(code))


def aggregate(jobs: dict[str, tuple[State, list[str]]]) -> tuple[Counter[Any], Counter[Any]]:
    """Series values of jobs given as (state, item ops): cdnetworks_fmgr_tasks and _items by code and state."""
    tasks: Counter[tuple[str, str]] = Counter()
    items: Counter[tuple[str, str, str]] = Counter()
    for (code, item_codes), ops in jobs.values():
        tasks[labels(code, item=False)] += 1
        for op, item_code in zip(ops, item_codes, strict=True):
            items[(op, *labels(item_code, item=True))] += 1
    return tasks, items


def scrape(run: Run) -> tuple[Counter[Any], Counter[Any]]:
    response = requests.get(run.exporter.server.url + "/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    tasks: Counter[tuple[str, str]] = Counter()
    items: Counter[tuple[str, str, str]] = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            lab, value = sample.labels, int(sample.value)
            if sample.name == "cdnetworks_fmgr_tasks" and lab["window"] == "1h" and value:
                tasks[(lab["code"], lab["state"])] += value
            elif sample.name == "cdnetworks_fmgr_items" and lab["window"] == "1h" and value:
                items[(lab["op"], lab["code"], lab["state"])] += value
    run.scrapes += 1
    return tasks, items


def observe(run: Run, now: float) -> None:
    """Compare /metrics with the vendor's real state at ``now`` and time every change until it is shown."""
    learn_notified(run, now)
    view, ops = exporter_view(run)
    assert set(view) <= set(run.watches), "the exporter tracks a job it cannot know of"
    expected: dict[str, tuple[State, list[str]]] = {}
    real: dict[str, tuple[State, list[str]]] = {}
    for pid, watch in run.watches.items():
        refresh(run, pid, watch, now)
        shown = view.get(pid)
        # The exporter shows change i once it shows that state or a later one of the same job.
        states = [state for _, state in watch.changes]
        if shown in states:
            upto = len(states) - 1 - states[::-1].index(shown)
            for i in range(upto + 1):
                if watch.shown[i] is None:
                    watch.shown[i] = now
        since = next((ts for (ts, _), seen in zip(watch.changes, watch.shown, strict=True) if seen is None), None)
        if since is not None and now - since > ALLOWED:
            run.late.append(f"{pid}: at T0+{since - T0:g}s the vendor moved it (now {states[-1]}); at "
                            f"T0+{now - T0:g}s the exporter still shows {shown}")
        real[pid] = (states[-1], real_ops(run, pid))
        # /metrics against the vendor: only a job moved within ALLOWED may differ (showing a state it had
        # within that time, checked above); every other job must count at its real code.
        recent = now - watch.changes[-1][0] <= ALLOWED
        expected[pid] = (shown, ops.get(pid, [])) if recent and shown is not None else real[pid]
    got_tasks, got_items = scrape(run)
    want_tasks, want_items = aggregate(expected)
    if (got_tasks, got_items) != (want_tasks, want_items):
        run.late.append(f"at T0+{now - T0:g}s /metrics differs from the vendor by more than its recent changes")
    real_tasks, real_items = aggregate(real)
    diff = sum(((got_tasks - real_tasks) + (real_tasks - got_tasks)).values())
    diff += sum(((got_items - real_items) + (real_items - got_items)).values())
    run.worst_diff = max(run.worst_diff, diff)


_OPS: dict[str, list[str]] = {}


def real_ops(run: Run, pid: str) -> list[str]:
    if pid not in _OPS:
        status = run.sim.fmgr_status(pid, at=T0 + RUN)
        assert status is not None
        _OPS[pid] = [fmgrwire.op_of(i["cmd"]) for i in status["items"]]
    return _OPS[pid]


def polls_per_phase(run: Run) -> dict[str, float]:
    """Status requests per job the exporter knew of, by kind of job and the vendor's code when each was
    answered: 0/1 (processing), 3, 4, and 5/6 (the end of the notification phase)."""
    def kind(pid: str) -> str:
        return pid.split("-")[0] + ("" if pid in run.registered else " notify-only")

    counts: Counter[str] = Counter()
    for r in run.sim.request_log:
        if r["api"] != "fmgr":
            continue
        pid, ts = r["body"]["persistentId"], r["ts"]
        status = run.sim.fmgr_status(pid, at=ts)
        assert status is not None
        code = int(status["code"])
        counts[f"{kind(pid)} {'0/1' if code in (0, 1) else '5/6' if code in (5, 6) else code}"] += 1
    jobs = Counter(kind(pid) for pid in run.watches)
    return {key: round(n / jobs[key.rsplit(" ", 1)[0]], 2) for key, n in sorted(counts.items())}


def staleness(run: Run, end: float) -> list[float]:
    """Seconds from each change at the vendor to the first scrape that showed it (or a later state of the
    job); a change not shown by the end counts as shown at the end."""
    return [(end if seen is None else seen) - ts for w in run.watches.values()
            for (ts, _), seen in zip(w.changes, w.shown, strict=True)]


def test_every_vendor_change_is_on_metrics_within_two_poll_intervals(sim_factory, clock, exporters):
    run = start(sim_factory, exporters)
    end = T0 + RUN
    while clock.t <= end:
        now = clock.t
        if now in run.register_at:
            register(run, run.register_at.pop(now))
        run.sim.deliver_due_notifications()
        run_poller(run.exporter, clock, now)
        observe(run, now)
        clock.t = now + 1
    run.db.close()

    lags = sorted(staleness(run, end))
    p50, p99 = statistics.median(lags), lags[int(0.99 * (len(lags) - 1))]
    print(f"\nstaleness over {len(lags)} changes: p50 {p50:g}s p99 {p99:g}s max {lags[-1]:g}s; "
          f"worst /metrics difference {run.worst_diff}; late {len(run.late)}; Fmgr requests "
          f"{run.sim.requests[('fmgr', None)]}; per job by phase: {polls_per_phase(run)}")
    assert run.sim.rate_limit_violations == 0
    assert not run.late, f"{len(run.late)} late: " + "; ".join(run.late[:5])
    assert lags[-1] <= ALLOWED
    # The run covers what it claims: every end of the notification phase, jobs known from notifications only,
    # duplicates, and jobs without notifyURL.
    finals = Counter(w.changes[-1][1][0] for w in run.watches.values())
    assert finals[6] > 50 and finals[5] > 10 and finals[3] > 10
    assert any(pid not in run.registered for pid in run.watches)
    assert any(e["duplicate"] for e in run.sim.notify_log)
    assert run.scrapes == RUN + 1
