"""Window gauges against the vendor's own truth, to the second.

The simulator creates tasks at whole seconds; the exporter polls it over real HTTP under a shared fake clock,
and /metrics (the real collector) must say, for every window ``W`` at ``now``, exactly what the vendor says
about the tasks created in ``(now - W, now]``: counts per status, success ratio and mean rate. ``now`` is
chosen off the minute (08:07:30, 08:59:59, 09:00:01, ...), where a window rounded to whole minutes would
be up to 60 s short; tasks sit exactly on the edges, finish between scrapes, and the store is reopened.
"""

from __future__ import annotations

import math

import pytest
from conftest import T0, make_config
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.metrics.collector import ExporterCollector
from exporter.metrics.health import ApiHealth
from exporter.storage.store import CDN_STATUSES, Store
from exporter.vendor.cdn import CdnClient

USER = "acme"
KIND = "prefetch"
WINDOWS = {"15m": 900, "1h": 3600, "24h": 86400}
DAY = 86400.0


class Rig:
    """The parts of the exporter this test drives: one CDN poller and /metrics' collector over one store."""

    def __init__(self, cfg: Config, clock, store: Store | None = None) -> None:
        self.cfg, self.clock = cfg, clock
        self.store = store or Store(cfg.storage.path, clock=clock)
        self.health = ApiHealth()
        self.client = CdnClient(cfg.accounts[0], clock=clock, timeout=cfg.kinds["prefetch"].request_timeout,
                                health=self.health)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ExporterCollector(cfg, self.store, self.health, clock=clock))
        self.seen_at: float | None = None  # when the last poll read the vendor

    def poll(self) -> None:
        """Every page of the longest window and a minute more, read at the clock's current time with the real
        client and stored with the real upsert: each task's status is then the vendor's at this instant (the
        poller's own choice of what to re-read when is tested elsewhere; here the windows are)."""
        now = self.clock()
        end = math.floor(now)
        start = end - int(max(WINDOWS.values())) - 60
        while start <= end:
            stop = min(end, start + int(DAY) - 1)
            page_no = 1
            while True:
                page = self.client.query(KIND, start, stop, page_no=page_no, page_size=500)
                self.store.upsert_cdn_tasks(USER, KIND, page.tasks)
                if page_no * 500 >= page.count:
                    break
                page_no += 1
            start = stop + 1
        assert self.clock() == now, "the poll must not move the clock"
        self.seen_at = now

    def gauge(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(f"cdnetworks_{KIND}_{name}", {"account": USER, **labels})


def window_start(now: float, window: float) -> int:
    """First whole second of (now - window, now]: the truth's own arithmetic, not the exporter's."""
    return math.floor(now - window) + 1


def assert_gauges_equal_truth(sim, ex: Rig) -> None:
    """Every window's gauges equal what the vendor said at the last poll about (now - W, now]."""
    now, seen_at = ex.clock(), ex.seen_at
    assert seen_at is not None
    end = min(now, seen_at)
    rows = sim.cdn_tasks_at(USER, KIND, window_start(now, max(WINDOWS.values())), end, at=seen_at)
    for name, w in WINDOWS.items():
        start = window_start(now, w)
        want = sim.cdn_truth(USER, KIND, start, end, at=seen_at)
        got = {s: ex.gauge("tasks", window=name, status=s) for s in CDN_STATUSES}
        assert got == {s: want.get(s, 0) for s in CDN_STATUSES}, f"window {name} at {now - T0:+.1f}s"
        assert want["total"] > 0
        finished = want["success"] + want["failure"]
        assert ex.gauge("success_ratio", window=name) == want["success"] / finished, f"success ratio {name}"
        rates = [int(r["rate"]) for r in rows if r["create_ts"] >= start and r["status"] in ("success", "failure")]
        assert len(rates) == finished
        assert ex.gauge("rate_ratio", window=name) == pytest.approx(sum(rates) / 100 / finished, rel=1e-12)


@pytest.fixture
def world(sim_factory, clock, tmp_path):
    sim = sim_factory()
    sim.add_cdn_stream(USER, KIND, per_hour=300, failure_ratio=0.2, start_ts=T0 - 2 * DAY)
    cfg = make_config(sim.url, str(tmp_path / "db.sqlite"), prefetch={"page_size": 500})
    return sim, cfg


def at(clock, hh_mm_ss: str) -> float:
    """Set the clock to a time of day on T0's day (T0 is 08:00:00 UTC)."""
    h, m, s = (float(x) for x in hh_mm_ss.split(":"))
    clock.t = T0 + (h - 8) * 3600 + m * 60 + s
    return clock.t


def test_window_gauges_equal_the_vendor_truth_off_the_minute(world, clock):
    sim, cfg = world
    ex = Rig(cfg, clock)
    for when in ("08:07:30", "08:12:45.5", "08:59:59", "09:00:01", "09:14:59.999", "09:30:30"):
        at(clock, when)
        ex.poll()
        assert_gauges_equal_truth(sim, ex)


def test_scrapes_between_polls_slide_across_the_minute(world, clock):
    """No poll between scrapes: the windows move with the clock, second by second, across a minute boundary
    and an hour boundary, and still match what the vendor said at the last poll."""
    sim, cfg = world
    ex = Rig(cfg, clock)
    at(clock, "08:59:29")
    ex.poll()
    for when in ("08:59:29", "08:59:30", "08:59:59", "09:00:00", "09:00:01", "09:00:31", "09:01:17.25"):
        at(clock, when)
        assert_gauges_equal_truth(sim, ex)


def test_tasks_exactly_on_the_edges(world, clock):
    sim, cfg = world
    now = at(clock, "08:07:30")
    # Failures (none of the stream's tasks are this slow or this quick) on each edge of every window.
    for name, w in WINDOWS.items():
        sim.add_cdn_task(USER, KIND, f"https://edge.example/{name}/out", now - w, wait=0, run=0, final="failure")
        sim.add_cdn_task(USER, KIND, f"https://edge.example/{name}/in", now - w + 1, wait=0, run=0,
                         final="failure", rate=7)
    sim.add_cdn_task(USER, KIND, "https://edge.example/now", now, wait=0, run=0, final="failure", rate=3)
    ex = Rig(cfg, clock)
    ex.poll()
    assert_gauges_equal_truth(sim, ex)
    # And what that means, spelled out for the 15m window: now - 15m is out, now - 15m + 1 s and now are in.
    edge = {r["url"] for r in sim.cdn_tasks_at(USER, KIND, window_start(now, 900), now, at=now)}
    assert "https://edge.example/15m/out" not in edge
    assert {"https://edge.example/15m/in", "https://edge.example/now"} <= edge


def test_status_changes_after_being_counted(world, clock):
    """A task counted while waiting or running moves to its final status; none is counted twice or lost, and
    the ratios follow. One of them sits on the 15m window's edge when it finishes."""
    sim, cfg = world
    now = at(clock, "08:07:30")
    sim.add_cdn_task(USER, KIND, "https://slow.example/a", now - 20, wait=10, run=200, final="success")
    sim.add_cdn_task(USER, KIND, "https://slow.example/b", now - 5, wait=100, run=100, final="failure", rate=40)
    sim.add_cdn_task(USER, KIND, "https://slow.example/edge", now + 300 - 899, wait=0, run=650, final="failure")
    ex = Rig(cfg, clock)
    ex.poll()
    assert_gauges_equal_truth(sim, ex)
    statuses = {r["url"]: r["status"] for r in sim.cdn_tasks_at(USER, KIND, now - 600, now, at=now)}
    assert [statuses[f"https://slow.example/{u}"] for u in ("a", "b", "edge")] == ["run", "wait", "run"]
    at(clock, "08:12:30")
    ex.poll()
    assert_gauges_equal_truth(sim, ex)
    statuses = {r["url"]: r["status"] for r in sim.cdn_tasks_at(USER, KIND, now - 600, now, at=clock())}
    assert [statuses[f"https://slow.example/{u}"] for u in ("a", "b", "edge")] == ["success", "failure", "failure"]


def test_a_reopened_store_serves_the_same_exact_windows(world, clock):
    sim, cfg = world
    ex = Rig(cfg, clock)
    at(clock, "08:59:59")
    ex.poll()
    before = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for m in ex.registry.collect() if "_tasks" in m.name or "_ratio" in m.name for s in m.samples}
    ex.store.close()
    again = Rig(cfg, clock)  # rebuilds its minute buckets from the rows
    again.seen_at = ex.seen_at
    after = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for m in again.registry.collect() if "_tasks" in m.name or "_ratio" in m.name for s in m.samples}
    assert after == before
    for when in ("08:59:59", "09:00:01", "09:07:30.5"):
        at(clock, when)
        assert_gauges_equal_truth(sim, again)
    again.store.close()
