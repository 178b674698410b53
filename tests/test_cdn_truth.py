"""CDN truth: the exporter's CDN numbers against the simulated vendor's ground truth, at the published budget.

The real exporter (its HTTP server and its own CDN poller, default configuration) polls the simulator over
127.0.0.1 under one manual clock for hours of fake time, at the vendor's published budget (1 request per
5 minutes, enforced by the simulator too), from a first start at 100k tasks a day. The account holds what the
field holds: tasks that finish in minutes, 0.5% that run for hours or days, 1% that become visible up to
10 minutes late, and a task stuck for 30 hours. (Re-checks of unfinished tasks get little of this budget
at this volume; ``test_poller`` shows a stuck task seen finishing where the budget allows.) Rows come in either
createTime order.

After every request, ``GET /metrics`` must show, for every window at that exact second (never on a minute
boundary), exactly what the vendor served: each task by its status when it was last served
(``Simulator.cdn_known_truth``), success ratio included. On top of that, freshness against the vendor's full
truth: the 15m window holds every task the vendor serves for it within two poll intervals of the first start,
the lag stays within 10 minutes once the start is behind, every task served on time is known, and the probes
find tasks served late.
"""

from __future__ import annotations

import socket

import pytest
import requests
from conftest import T0, Clock
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config import parse_config
from exporter.simulator import Simulator

HOUR = 3600.0
USER = "acme"
WINDOWS = {"15m": 900, "1h": 3600, "24h": 86400}
START = T0 + 37  # off the minute: a minute-resolution window would show here
RUN_HOURS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(exporter: Exporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{exporter.server.port}/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def window_counts(metrics: dict, window: str) -> dict[str, int]:
    out = {}
    for (name, labels), value in metrics.items():
        lab = dict(labels)
        if name == "cdnetworks_prefetch_tasks" and lab.get("window") == window and lab.get("account") == USER:
            out[lab["status"]] = int(value)
    return out


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_cdn_numbers_equal_the_vendor_truth_at_the_published_budget(tmp_path, order):
    clock = Clock(START)
    sim = Simulator(clock=clock, order=order, rate_limits={"prefetch": (1, 300.0)})
    sim.add_account(USER, "acme-key")
    sim.add_cdn_stream(USER, "prefetch", per_hour=100_000 / 24, failure_ratio=0.05, start_ts=START - 26 * HOUR,
                       slow_ratio=0.005, late_ratio=0.01, late_max=600)
    sim.add_cdn_task(USER, "prefetch", "https://stuck.example/forever", START - 20 * HOUR, wait=30 * HOUR, run=60)
    sim.start()
    config = parse_config({
        "accounts": [{"name": USER, "username": USER, "api_key": "acme-key", "endpoint": sim.url}],
        "storage": {"path": str(tmp_path / "exporter.db")},
        "fmgr": {"enabled": False},
    })
    exporter = Exporter(config, listen_address=f"127.0.0.1:{free_port()}", clock=clock)
    exporter.server.start()
    try:
        poller = exporter.pollers.cdn[0]
        complete_at: float | None = None
        lags: list[tuple[float, float]] = []
        checks = 0
        while clock() < START + RUN_HOURS * HOUR:
            clock.t = max(clock(), poller.next_run())
            before = poller.requests_sent
            poller.step()
            if poller.requests_sent == before:
                continue
            now = clock()
            metrics = scrape(exporter)
            for label, seconds in WINDOWS.items():
                known = sim.cdn_known_truth(USER, "prefetch", now - seconds + 1, now)
                shown = {s: window_counts(metrics, label).get(s, 0) for s in ("wait", "run", "success", "failure")}
                # Failures are only ever read; successes may also be learnt from a sweep by state (a task in no
                # unfinished or failed state), never more of them than really succeeded since last served.
                inferred = shown["success"] - known["success"]
                assert shown["failure"] == known["failure"], (label, now - START, shown, known)
                assert 0 <= inferred <= known["succeeded_since"], (label, now - START, shown, known)
                assert shown["wait"] + shown["run"] == known["wait"] + known["run"] - inferred, (label, shown, known)
                finished = shown["success"] + shown["failure"]
                ratio_key = ("cdnetworks_prefetch_success_ratio", (("account", USER), ("window", label)))
                if finished:
                    assert metrics[ratio_key] == pytest.approx(shown["success"] / finished), label
            checks += 1
            # Every task the vendor serves for the 15m window, except those it served only after their range
            # was read (visible late: the probes find them later; nobody can know them sooner).
            full = sim.cdn_truth(USER, "prefetch", now - 899, now)["total"]
            late = sim.cdn_late_count(USER, "prefetch", now - 899, now)
            if complete_at is None and sum(window_counts(metrics, "15m").values()) >= full - late:
                complete_at = now - START
            lag = metrics[("cdnetworks_poll_lag_seconds", (("account", USER), ("api", "prefetch")))]
            lags.append((now - START, lag))
        assert sim.rate_limit_violations == 0
        assert checks >= RUN_HOURS * 12 - 2
        assert complete_at is not None and complete_at <= 600, complete_at
        assert max(lag for t, lag in lags if t >= HOUR) <= 600, lags
        # Every task served on time since the start is known, and the probes found tasks served late (at the
        # published budget they get a few requests an hour: a late task is found within hours, not minutes).
        end = clock() - HOUR
        known = sim.cdn_known_truth(USER, "prefetch", START, end)["total"]
        everything = sim.cdn_truth(USER, "prefetch", START, end)["total"]
        late = sim.cdn_late_count(USER, "prefetch", START, end)
        assert late > 20
        assert everything - late < known < everything + 1, (known, everything, late)
    finally:
        exporter.stop()
        sim.stop()

