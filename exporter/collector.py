"""The custom Collector: turns store aggregates and API health into metric families.

It never calls a vendor API and never scans tasks: exact window sums come from the store's in-memory
minute buckets plus an index range read of each window's partial edge minutes, the oldest-unfinished ages
from index seeks, counters from memory.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from . import fmgr as fmgrwire
from .config import Config
from .health import ApiHealth
from .store import CDN_STATUSES, DURATION_BUCKETS, Store

POLLED = "Polled in the background from the CDNetworks API; a scrape never calls the vendor."
NOTIFY_RESULTS = ("accepted", "duplicate", "bad_signature", "unknown_key", "malformed", "too_large")
NOTIFY_FAILURE_SCOPES = ("task", "item")
KIND_TEXT = {"prefetch": "prefetch", "purge": "purge"}


def _fmt_bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


def _task_code_labels(code: int | None) -> tuple[str, str]:
    if code is None:
        return "none", "unknown"  # registered, not polled or notified yet
    if code == -1:
        return "other", "other"
    return str(code), fmgrwire.task_state(code)


def _item_code_labels(code: int | None) -> tuple[str, str]:
    if code is None:
        return "none", "unknown"
    if code == -1:
        return "other", "other"
    return str(code), fmgrwire.item_state(code)


class ExporterCollector(Collector):
    def __init__(self, config: Config, store: Store, health: ApiHealth, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.health = health
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        # Registration must not touch the store; an empty list makes the registry skip collect() here.
        return iter([])

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        for kind, _ in self.config.task_kinds():
            yield from self._cdn(kind, now)
        if self.config.fmgr.enabled:
            yield from self._fmgr(now)
        yield from self._health()
        info = GaugeMetricFamily("cdnetworks_exporter_build_info",
                                 "Version of the exporter and of the Python running it; always 1.",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

    # ------------------------------------------------------------------ CDN
    def _cdn(self, kind: str, now: float) -> Iterator[Metric]:
        kcfg = getattr(self.config, kind)
        k = KIND_TEXT[kind]
        p = f"cdnetworks_{kind}"
        tasks = GaugeMetricFamily(f"{p}_tasks", f"CDN {k} tasks created within the window, by current status. "
                                  + POLLED, labels=["account", "window", "status"])
        ratio = GaugeMetricFamily(f"{p}_success_ratio", f"Share (0..1) of finished {k} tasks created within "
                                  "the window that succeeded; absent while none finished. " + POLLED,
                                  labels=["account", "window"])
        rate = GaugeMetricFamily(f"{p}_rate_ratio", f"Mean vendor-reported completion rate (0..1) of finished "
                                 f"{k} tasks created within the window. " + POLLED, labels=["account", "window"])
        oldest = GaugeMetricFamily(f"{p}_oldest_unfinished_age_seconds", f"Age of the oldest {k} task still "
                                   "waiting, running or of unknown status (0 when none). " + POLLED, labels=["account"])
        finished = CounterMetricFamily(f"{p}_tasks_finished", f"CDN {k} tasks seen reaching a final status, "
                                       "each counted once. " + POLLED, labels=["account", "status"])
        duration = HistogramMetricFamily(f"{p}_duration_seconds", f"Time from creation to finish of {k} tasks "
                                         "(finishTime - createTime). " + POLLED, labels=["account"])
        window_secs = [w.seconds for w in kcfg.windows]
        finished_counts = {
            (lab.get("account"), lab.get("status")): v
            for lab, v in self.store.counters(f"{kind}_tasks_finished_total")
        }
        for account in self.config.accounts:
            name = account.name
            sums = self.store.cdn_window_counts(name, kind, now, window_secs)
            for w, c in zip(kcfg.windows, sums, strict=True):
                for status in CDN_STATUSES:
                    tasks.add_metric([name, w.name, status], c.get(("status", status), 0))
                ok, bad = c.get(("status", "success"), 0), c.get(("status", "failure"), 0)
                if ok + bad > 0:
                    ratio.add_metric([name, w.name], ok / (ok + bad))
                if c.get(("rate_n",), 0) > 0:
                    rate.add_metric([name, w.name], c[("rate_sum",)] / c[("rate_n",)] / 100.0)
            first = self.store.cdn_oldest_unfinished(name, kind, since=now - kcfg.max_query_age)
            oldest.add_metric([name], max(0.0, now - first) if first is not None else 0.0)
            for status in ("success", "failure"):  # the only final statuses
                finished.add_metric([name, status], finished_counts.get((name, status), 0.0))
            h = self.store.histogram(f"{kind}_duration_seconds", {"account": name}, DURATION_BUCKETS)
            duration.add_metric([name], [(_fmt_bound(b), c) for b, c in h.buckets], h.total)
        yield from (tasks, ratio, rate, oldest, finished, duration)

    # ------------------------------------------------------------------ Fmgr
    def _fmgr(self, now: float) -> Iterator[Metric]:
        fcfg = self.config.fmgr
        tasks = GaugeMetricFamily("cdnetworks_fmgr_tasks", "Fmgr tasks first seen within the window, by current "
                                  "task code. From notifications, registrations and background polling.",
                                  labels=["window", "code", "state"])
        items = GaugeMetricFamily("cdnetworks_fmgr_items", "Items (operations) of Fmgr tasks first seen within "
                                  "the window, by op and current item code.", labels=["window", "op", "code", "state"])
        ratio = GaugeMetricFamily("cdnetworks_fmgr_success_ratio", "Share (0..1) of final Fmgr items within the "
                                  "window that succeeded; absent while none is final.", labels=["window"])
        windows = [w.seconds for w in fcfg.windows]
        groups = self.store.fmgr_window_counts(now, windows)
        # Every combination seen in the largest window is present in every window (0 where absent).
        widest = max(range(len(windows)), key=lambda i: windows[i])
        # The keys the store counts under (Store.fmgr_window_counts): task code (-1 other, None not polled yet),
        # (op, item code).
        task_codes = cast("set[int | None]", set(groups["tasks"][widest])) | set(fmgrwire.TASK_STATES)
        item_keys = cast("set[tuple[str, int | None]]", set(groups["items"][widest]))
        for i, w in enumerate(fcfg.windows):
            tc, ic, oc = groups["tasks"][i], groups["items"][i], groups["outcomes"][i]
            for code in sorted(task_codes, key=lambda c: -2 if c is None else c):
                tasks.add_metric([w.name, *_task_code_labels(code)], tc.get(code, 0))
            for op, code in sorted(item_keys, key=lambda k: (k[0], -2 if k[1] is None else k[1])):
                items.add_metric([w.name, op, *_item_code_labels(code)], ic.get((op, code), 0))
            ok, bad = oc.get("succeeded", 0), oc.get("failed", 0)
            if ok + bad > 0:
                ratio.add_metric([w.name], ok / (ok + bad))
        pending_n, oldest = self.store.fmgr_pending()
        pending = GaugeMetricFamily("cdnetworks_fmgr_pending_tasks", "Tracked Fmgr tasks whose processing is "
                                    "not known to be over (code 3 or later not seen yet).", value=pending_n)
        age = GaugeMetricFamily("cdnetworks_fmgr_oldest_pending_age_seconds", "Time since the oldest pending Fmgr "
                                "task was first seen (0 when none).",
                                value=max(0.0, now - oldest) if oldest is not None else 0.0)
        processed = CounterMetricFamily("cdnetworks_fmgr_processed_bytes", "Bytes (fsize) of Fmgr items seen "
                                        "succeeding, each item counted once.", labels=["op"])
        for lab, v in sorted(self.store.counters("fmgr_processed_bytes_total"), key=lambda x: x[0]["op"]):
            processed.add_metric([lab["op"]], v)
        notes = CounterMetricFamily("cdnetworks_fmgr_notifications", "Fmgr notifications received, by outcome: "
                                    "accepted, duplicate (a vendor retry, counted once), or rejected by reason.",
                                    labels=["result"])
        got = {lab["result"]: v for lab, v in self.store.counters("fmgr_notifications_total")}
        for result in NOTIFY_RESULTS:
            notes.add_metric([result], got.get(result, 0.0))
        failures = CounterMetricFamily("cdnetworks_fmgr_notify_failures", "Fmgr tasks (code 5) and items (codes 5 "
                                       "and 19) seen ending in a notification failure: the vendor could not deliver "
                                       "the job's notifyURL callback. Each counted once.", labels=["scope"])
        failed = {lab["scope"]: v for lab, v in self.store.counters("fmgr_notify_failures_total")}
        for scope in NOTIFY_FAILURE_SCOPES:
            failures.add_metric([scope], failed.get(scope, 0.0))
        yield from (tasks, items, ratio, pending, age, processed, notes, failures)

    # ------------------------------------------------------------------ exporter health
    def _health(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cdnetworks_up", "1 when the last request to this vendor API succeeded, else 0.",
                               labels=["account", "api"])
        for (account, api), is_up in sorted(self.health.up().items()):
            up.add_metric([account, api], is_up)
        reqs = CounterMetricFamily("cdnetworks_api_requests", "Requests made to the vendor APIs, by result.",
                                   labels=["api", "result"])
        for (api, result), n in sorted(self.health.requests().items()):
            reqs.add_metric([api, result], n)
        dur = HistogramMetricFamily("cdnetworks_api_request_duration_seconds", "Latency of vendor API requests.",
                                    labels=["api"])
        for api, (buckets, total, _n) in sorted(self.health.durations().items()):
            dur.add_metric([api], [(_fmt_bound(b), c) for b, c in buckets], total)
        last = GaugeMetricFamily("cdnetworks_last_successful_poll_timestamp_seconds",
                                 "Unix time of the last successful request to this vendor API.",
                                 labels=["account", "api"])
        for (account, api), ts in sorted(self.health.last_ok().items()):
            last.add_metric([account, api], ts)
        lag = GaugeMetricFamily("cdnetworks_poll_lag_seconds", "How far behind now the newest point is up to "
                                "which every task was read once; grows when the rate budget cannot keep up.",
                                labels=["account", "api"])
        for (account, api), v in sorted(self.health.lag().items()):
            lag.add_metric([account, api], v)
        backfill = GaugeMetricFamily(
            "cdnetworks_poll_backfill_remaining_seconds",
            "Seconds of older history (within the lookback) not yet read once; the back-fill after a first "
            "start or a long outage reads it newest first on a share of the budget.", labels=["account", "api"])
        for (account, api), v in sorted(self.health.backfill().items()):
            backfill.add_metric([account, api], v)
        yield from (up, reqs, dur, last, lag, backfill)


class ReloadStatus(Collector):
    """The outcome of the last configuration load, as Prometheus itself reports it: ``..._successful`` is 1
    after the start and every good reload and 0 after a failed one (the running configuration is kept), and
    the timestamp says when the running configuration was loaded."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ok = True
        self._success_ts = clock()

    def record(self, ok: bool) -> None:
        with self._lock:
            self._ok = ok
            if ok:
                self._success_ts = self._clock()

    def describe(self) -> Iterator[Metric]:
        return iter([])

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            ok, ts = self._ok, self._success_ts
        yield GaugeMetricFamily("cdnetworks_config_last_reload_successful",
                                "1 when the last configuration load (start, SIGHUP or POST /-/reload) succeeded; "
                                "0 when it failed and the previous configuration is still running.",
                                value=1 if ok else 0)
        yield GaugeMetricFamily("cdnetworks_config_last_reload_success_timestamp_seconds",
                                "Unix time when the running configuration was loaded.", value=ts)
