"""The custom Collector: turns store aggregates and API health into metric families.

It never calls a vendor API and never scans tasks: exact window sums come from the store's in-memory
minute buckets plus an index range read of each window's partial edge minutes, the oldest-unfinished ages
from index seeks, counters from memory.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import cast

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import Config, TaskKindConfig
from exporter.fmgr import wire as fmgrwire
from exporter.metrics import catalogue as m
from exporter.metrics.health import ApiHealth
from exporter.polling import quota as quota_polling
from exporter.storage.store import CDN_STATUSES, Snapshot, Store

log = logging.getLogger(__name__)

NOTIFY_RESULTS = ("accepted", "duplicate", "bad_signature", "unknown_key", "malformed", "too_large")
NOTIFY_FAILURE_SCOPES = ("task", "item")
ITEM_OUTCOMES = ("succeeded", "failed")


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
                 clock: Callable[[], float] = time.time,
                 leases: Callable[[], Collection[tuple[str, str]]] | None = None) -> None:
        self.config = config
        self.store = store
        self.health = health
        self.clock = clock
        # (account, api) of the pollers this replica runs; without replicas to share with, all of them.
        self.leases = leases
        self._failing: set[str] = set()  # sections whose last scrape failed (logged once per outage)

    @staticmethod
    def families(config: Config) -> list[m.Family]:
        """The catalogue entries ``collect()`` yields for ``config``, in its order."""
        out: list[m.Family] = []
        for kind, _ in config.task_kinds():
            out.extend(m.CDN[kind])
        if config.fmgr.enabled:
            out.extend(m.FMGR)
        if config.quota.pollers(config.accounts):
            out.extend(m.QUOTA)
        out.extend(m.HEALTH)
        out.extend((m.SCRAPE_COLLECTOR_SUCCESS, m.BUILD_INFO))
        return out

    def describe(self) -> Iterator[Metric]:
        # From the configuration alone: registration must not touch the store. The registry keeps these names
        # for the life of this collector, which is the life of its configuration: a reload builds a new
        # collector in a new registry (exporter/app.py).
        return (f.new() for f in self.families(self.config))

    def sections(self, config: Config) -> list[str]:
        """The parts of a scrape that succeed or fail on their own (``cdnetworks_scrape_collector_success``)."""
        return [kind for kind, _ in config.task_kinds()] + (["fmgr"] if config.fmgr.enabled else []) + \
            (["quota"] if config.quota.pollers(config.accounts) else []) + ["health", "leases"]

    def collect(self) -> Iterator[Metric]:
        # One configuration per scrape: every part below sees the same one, even if it is replaced meanwhile.
        config = self.config
        now = self.clock()
        # Each section is built whole before any of it is served, and a section that fails (a store that cannot
        # be read) is left out and says so in its own success gauge while the rest is still served: a store
        # blip must not take ``cdnetworks_up`` and the request counters with it (node_exporter's model).
        success = m.SCRAPE_COLLECTOR_SUCCESS.new()
        snap: Snapshot | None = None
        snap_error: Exception | None = None
        try:
            # One snapshot of the counters and histograms: each committed write is in it whole or not at all.
            snap = self.store.snapshot()
        except Exception as exc:
            snap_error = exc

        def build(section: str) -> list[Metric]:
            if section == "health":
                return list(self._health(now))
            if section == "leases":
                return [self._leases(config)]
            if section == "quota":
                return list(self._quota(config, now))
            if snap is None:
                assert snap_error is not None
                raise snap_error
            if section == "fmgr":
                return list(self._fmgr(config, snap, now))
            return list(self._cdn(config, snap, section, config.kinds[section], now))

        for section in self.sections(config):
            try:
                families = build(section)
            except Exception as exc:
                self._failed(section, exc)
                families, ok = [], 0
            else:
                self._recovered(section)
                ok = 1
            success.add_metric([section], ok)
            yield from families
        yield success
        info = m.BUILD_INFO.new()
        info.add_metric([__version__, platform.python_version()], 1)
        yield info

    def _failed(self, section: str, exc: Exception) -> None:
        # Once per outage with its traceback, then one line per scrape at debug: a scrape every 15 s must not
        # fill the log while the store is down.
        if section not in self._failing:
            self._failing.add(section)
            log.error("scrape: the %s section failed and is left out until the store answers (%s: %s)",
                      section, type(exc).__name__, exc, exc_info=exc)
        else:
            log.debug("scrape: the %s section failed again (%s: %s)", section, type(exc).__name__, exc)

    def _recovered(self, section: str) -> None:
        if section in self._failing:
            self._failing.discard(section)
            log.warning("scrape: the %s section is served again", section)

    # ------------------------------------------------------------------ CDN
    def _cdn(self, config: Config, snap: Snapshot, kind: str, kcfg: TaskKindConfig, now: float) -> Iterator[Metric]:
        spec = m.CDN[kind]
        tasks, ratio, rate = spec.tasks.new(), spec.success_ratio.new(), spec.rate_ratio.new()
        oldest, finished, duration = (spec.oldest_unfinished_age.new(), spec.tasks_finished.new(),
                                      spec.duration.new())
        window_secs = [w.seconds for w in kcfg.windows]
        finished_counts = {
            (lab.get("account"), lab.get("status")): v
            for lab, v in snap.counters(spec.tasks_finished.store_key)
        }
        for account in config.accounts:
            name = account.name
            sums = self.store.cdn_window_counts(name, kind, now, window_secs, catch_up=False)
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
            h = snap.histogram(spec.duration.store_key, {"account": name}, spec.duration.buckets)
            duration.add_metric([name], [(_fmt_bound(b), c) for b, c in h.buckets], h.total)
        yield from (tasks, ratio, rate, oldest, finished, duration)

    # ------------------------------------------------------------------ Fmgr
    def _fmgr(self, config: Config, snap: Snapshot, now: float) -> Iterator[Metric]:
        fcfg = config.fmgr
        tasks, items, ratio = m.FMGR_TASKS.new(), m.FMGR_ITEMS.new(), m.FMGR_SUCCESS_RATIO.new()
        windows = [w.seconds for w in fcfg.windows]
        groups = self.store.fmgr_window_counts(now, windows, catch_up=False)
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
        pending = m.FMGR_PENDING_TASKS.new()
        pending.add_metric([], pending_n)
        age = m.FMGR_OLDEST_PENDING_AGE.new()
        age.add_metric([], max(0.0, now - oldest) if oldest is not None else 0.0)
        unknown = m.FMGR_UNKNOWN_IDS.new()
        unknown.add_metric([], self.store.fmgr_unknown())
        processed = m.FMGR_PROCESSED_BYTES.new()
        for lab, v in sorted(snap.counters(m.FMGR_PROCESSED_BYTES.store_key), key=lambda x: x[0]["op"]):
            processed.add_metric([lab["op"]], v)
        finished = m.FMGR_ITEMS_FINISHED.new()
        items_done = {(lab["op"], lab["outcome"]): v for lab, v in snap.counters(m.FMGR_ITEMS_FINISHED.store_key)}
        # Both outcomes of every op seen finishing, so that a failure ratio has its zero.
        for op in sorted({op for op, _ in items_done}):
            for outcome in ITEM_OUTCOMES:
                finished.add_metric([op, outcome], items_done.get((op, outcome), 0.0))
        notes = m.FMGR_NOTIFICATIONS.new()
        got = {lab["result"]: v for lab, v in snap.counters(m.FMGR_NOTIFICATIONS.store_key)}
        for result in NOTIFY_RESULTS:
            notes.add_metric([result], got.get(result, 0.0))
        failures = m.FMGR_NOTIFY_FAILURES.new()
        failed = {lab["scope"]: v for lab, v in snap.counters(m.FMGR_NOTIFY_FAILURES.store_key)}
        for scope in NOTIFY_FAILURE_SCOPES:
            failures.add_metric([scope], failed.get(scope, 0.0))
        yield from (tasks, items, ratio, pending, age, unknown, processed, finished, notes, failures)

    # ------------------------------------------------------------------ quotas
    def _quota(self, config: Config, now: float) -> Iterator[Metric]:
        """The last verified answer of each quota, from the store (the same on every replica; see
        exporter/polling/quota.py), its figures only while the vendor's day it was read in lasts."""
        limit, remaining, read = m.QUOTA_LIMIT.new(), m.QUOTA_REMAINING.new(), m.QUOTA_READ.new()
        stored = self.store.get_states(quota_polling.STATE_PREFIX)  # one read, however many quotas
        for account, kind in config.quota.pollers(config.accounts):
            answer = quota_polling.current(stored.get(quota_polling.state_key(account, kind)), now)
            if answer is None:
                continue
            ts, units = answer
            read.add_metric([account, kind], ts)
            for unit, (day_limit, left) in units.items():
                limit.add_metric([account, kind, unit], day_limit)
                remaining.add_metric([account, kind, unit], left)
        yield from (limit, remaining, read)

    # ------------------------------------------------------------------ exporter health
    def _leases(self, config: Config) -> Metric:
        pollers = quota_polling.pollers(config)
        held = set(pollers) if self.leases is None else set(self.leases())
        leases = m.REPLICA_LEASES.new()
        for account, api in sorted(pollers):
            leases.add_metric([account, api], 1 if (account, api) in held else 0)
        return leases

    def _health(self, now: float) -> Iterator[Metric]:
        up = m.UP.new()
        for (account, api), is_up in sorted(self.health.up().items()):
            up.add_metric([account, api], is_up)
        reqs = m.API_REQUESTS.new()
        for (api, result), n in sorted(self.health.requests().items()):
            reqs.add_metric([api, result], n)
        dur = m.API_REQUEST_DURATION.new()
        for api, (buckets, total, _n) in sorted(self.health.durations().items()):
            dur.add_metric([api], [(_fmt_bound(b), c) for b, c in buckets], total)
        last = m.LAST_SUCCESSFUL_POLL.new()
        for (account, api), ts in sorted(self.health.last_ok().items()):
            last.add_metric([account, api], ts)
        lag = m.POLL_LAG.new()
        for (account, api), v in sorted(self.health.lag().items()):
            lag.add_metric([account, api], v)
        backfill = m.POLL_BACKFILL_REMAINING.new()
        for (account, api), v in sorted(self.health.backfill().items()):
            backfill.add_metric([account, api], v)
        staleness = m.POLL_STALENESS.new()
        for (account, api), v in sorted(self.health.staleness(now).items()):
            staleness.add_metric([account, api], v)
        yield from (up, reqs, dur, last, lag, backfill, staleness)


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
        return (f.new() for f in m.RELOAD)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            ok, ts = self._ok, self._success_ts
        successful = m.CONFIG_LAST_RELOAD_SUCCESSFUL.new()
        successful.add_metric([], 1 if ok else 0)
        yield successful
        timestamp = m.CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP.new()
        timestamp.add_metric([], ts)
        yield timestamp
