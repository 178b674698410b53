"""The store: the single source of truth between the pollers/receivers and the collector.

It composes three parts and owns the rules of the CDN side:

* a ``repository.Repository`` that persists rows (``sqlite_repo.SqliteRepository`` by default);
* ``aggregates.Aggregates``: counters, histograms, window counts and the pending count in memory, changed
  only by committed transactions and read by scrapes without SQL;
* ``fmgr_tracking``: the Fmgr lifecycle rules, the notification group commit, the registration API's view.

Each write runs as one repository transaction plus a ``Work`` of in-memory changes applied after its commit.

A ``shared`` repository (PostgreSQL) may have other replicas writing to it: there, every transaction also
logs its in-memory changes in the database, and each replica applies the log in commit order, its own
changes included (never at commit time, so that nothing is applied twice or out of order). Reads that serve
scrapes catch up with the log first, and a background thread keeps it caught up between scrapes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.fmgr import tracking as fmgr_tracking
from exporter.fmgr import wire as fmgrwire
from exporter.metrics import catalogue as m
from exporter.metrics.windows import Counts
from exporter.polling.leases import Fence
from exporter.storage.aggregates import (
    CDN_FINAL,
    CDN_STATUSES,
    Aggregates,
    Histogram,
    Snapshot,
    Work,
    cdn_deltas,
    fmgr_item_deltas,
    fmgr_task_deltas,
    sum_deltas,
)
from exporter.storage.model import CdnTask
from exporter.storage.repository import Repository
from exporter.storage.sqlite_repo import SqliteRepository

__all__ = ["CDN_STATUSES", "DURATION_BUCKETS", "CdnTask", "Histogram", "Snapshot", "Store", "UpsertResult"]

log = logging.getLogger(__name__)

DEFAULT_LIFECYCLE = fmgr_tracking.DEFAULT_LIFECYCLE
DURATION_BUCKETS = m.TASK_DURATION_BUCKETS


@dataclass(frozen=True)
class UpsertResult:
    new: int
    changed: int
    newly_finished: int


SYNC_EVERY = 2.0  # seconds between two catch-ups with a shared store's change log, scrapes or not
CHANGES_KEPT = 3600.0  # a replica that falls further behind rebuilds from the tables


def _tuples(value: Any) -> Any:
    """JSON gives lists where the deltas had tuples (hashable keys)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class Store:
    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time,
                 repository: Repository | None = None) -> None:
        self.repo: Repository = repository if repository is not None else SqliteRepository(path)
        self.path = self.repo.path
        self.shared = self.repo.shared
        self._clock = clock
        self._origin = uuid.uuid4().hex
        self._pending_stale = False
        self._notes = fmgr_tracking.NotificationWriter(self._transaction, clock)
        self._sync_lock = threading.Lock()
        self._load()
        self._stop_sync = threading.Event()
        self._sync_thread: threading.Thread | None = None
        if self.shared:
            self._sync_thread = threading.Thread(target=self._sync_loop, name="store-sync", daemon=True)
            self._sync_thread.start()

    def _load(self) -> None:
        loaded = self.repo.load()
        aggregates = Aggregates(self._cdn_edge_counts, self._fmgr_edge_counts)
        aggregates.load(loaded.counters, loaded.cdn, loaded.fmgr_tasks, loaded.fmgr_items, loaded.pending)
        self.aggregates, self.cdn_windows, self.fmgr_windows = (
            aggregates, aggregates.cdn_windows, aggregates.fmgr_windows)
        self._seen_seq = loaded.change_seq

    # ------------------------------------------------------------------ replicas: the change log
    def sync(self) -> None:
        """Apply the changes committed since the last catch-up (a shared store only)."""
        if not self.shared:
            return
        with self._sync_lock:
            changes, complete = self.repo.changes_since(self._seen_seq)
            if not complete:
                log.warning("store: this replica fell behind the change log; rebuilding from the tables")
                self._load()
                return
            for seq, _origin, payload in changes:
                data = json.loads(payload)
                work = Work(tx=None)  # type: ignore[arg-type]  # only its in-memory parts are used
                work.incs = {(n, lab): v for n, lab, v in data["incs"]}
                work.cdn = [_tuples(d) for d in data["cdn"]]
                work.fmgr = [_tuples(d) for d in data["fmgr"]]
                work.prunes = [(which, before) for which, before in data.get("prunes", [])]
                self.aggregates.apply(work)
                self._seen_seq = seq

    def _sync_loop(self) -> None:
        while not self._stop_sync.wait(SYNC_EVERY):
            try:
                self.sync()
            except Exception as exc:  # the database is away: the next round or read retries
                log.warning("store: cannot follow the change log: %s", exc)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._stop_sync.set()
        if self._sync_thread is not None:
            self._sync_thread.join(10)
        self.repo.close()

    def ping(self) -> bool:
        """True when the database answers (for /readyz)."""
        return self.repo.ping()

    def write_health(self) -> tuple[bool, str]:
        """(True, "") when a write can be expected to work, else (False, why): for /readyz."""
        return self.repo.write_health()

    @contextmanager
    def _transaction(self, fence: Fence | None = None) -> Iterator[Work]:
        """One repository transaction; its in-memory changes are applied only once it committed. With a
        ``fence``, it commits only while that lease is still this replica's (else ``LeaseLost``)."""
        try:
            with self.repo.transaction() as tx:
                if fence is not None:
                    tx.check_fence(fence)
                work = Work(tx)
                yield work
                if work.incs:
                    tx.add_counters(work.counter_rows())
                if self.shared and (work.incs or work.cdn or work.fmgr or work.prunes):
                    tx.log_change(self._origin, json.dumps(
                        {"incs": work.counter_rows(), "cdn": work.cdn, "fmgr": work.fmgr, "prunes": work.prunes},
                        separators=(",", ":")))
        except BaseException:
            # Nothing of a rolled-back transaction reached memory, but a write outside transactions may have
            # failed half-way before it: recount the pending tasks from what is stored, now or at the next
            # commit if the database cannot even be read now.
            self._recount_pending()
            raise
        if not self.shared:  # shared: applied from the log, in commit order
            self.aggregates.apply(work)
        if self._pending_stale:
            self._recount_pending()

    def _recount_pending(self) -> None:
        try:
            self.aggregates.set_pending(self.repo.fmgr_count_pending())
            self._pending_stale = False
        except Exception as exc:  # the database cannot be read now: retried after the next commit
            self._pending_stale = True
            log.error("store: cannot recount pending Fmgr tasks: %s", exc)

    # ------------------------------------------------------------------ generic state and counters
    def get_state(self, key: str) -> Any:
        return self.repo.get_state(key)

    def get_states(self, prefix: str) -> dict[str, Any]:
        """Every state whose key starts with ``prefix`` (one read, for a scrape: the stored quota answers)."""
        return self.repo.get_states(prefix)

    def set_state(self, key: str, value: Any, *, fence: Fence | None = None) -> None:
        with self._transaction(fence) as work:
            work.tx.set_state(key, value)

    def increment(self, name: str, labels: dict[str, str], delta: float = 1.0) -> None:
        """A persistent counter (survives restarts, like the history it counts)."""
        with self._transaction() as work:
            work.inc(name, labels, delta)

    def snapshot(self) -> Snapshot:
        """Every counter and histogram as of one moment: what one scrape reads."""
        self.sync()
        return self.aggregates.snapshot()

    def counters(self, name: str) -> list[tuple[dict[str, str], float]]:
        """All label sets and values of counter ``name`` (from memory: no SQL on a scrape)."""
        return self.snapshot().counters(name)

    def histogram(self, name: str, labels: dict[str, str], bounds: Sequence[float]) -> Histogram:
        """Cumulative histogram kept as persistent counters (all buckets present, zeros included)."""
        return self.snapshot().histogram(name, labels, bounds)

    # ------------------------------------------------------------------ CDN tasks
    def upsert_cdn_tasks(self, account: str, kind: str, tasks: Iterable[CdnTask], *,
                         fence: Fence | None = None) -> UpsertResult:
        """Insert or update tasks in one transaction; count each task's finish exactly once."""
        now = self._clock()
        new = changed = finished = 0
        with self._transaction(fence) as work:
            tx = work.tx
            for t in tasks:
                row = tx.cdn_get(account, kind, t.url, t.create_ts)
                if row is not None and row == (t.status, t.rate):
                    if not t.final:
                        # Unchanged but unfinished: remember when it was last seen, for re-check planning.
                        tx.cdn_touch(account, kind, t.url, t.create_ts, now)
                    continue
                tx.cdn_put(account, kind, t, now)
                if row is None:
                    new += 1
                else:
                    changed += 1
                    work.cdn.extend(cdn_deltas(account, kind, t.create_ts, row[0], row[1], -1))
                work.cdn.extend(cdn_deltas(account, kind, t.create_ts, t.status, t.rate, +1))
                if t.final and not (row is not None and row[0] in CDN_FINAL):
                    finished += 1
                    families = m.CDN[kind]
                    work.inc(families.tasks_finished.store_key, {"account": account, "status": t.status})
                    if t.finish_ts is not None:
                        work.observe(families.duration.store_key, {"account": account},
                                     max(0.0, t.finish_ts - t.create_ts), families.duration.buckets)
        return UpsertResult(new, changed, finished)

    def cdn_window_counts(self, account: str, kind: str, now: float, windows: Sequence[float], *,
                          catch_up: bool = True) -> list[Counts]:
        """Per window ``w``, label -> sum over the tasks created in ``(now - w, now]``: ``("status", s)`` -> tasks,
        ``("rate_sum",)`` / ``("rate_n",)`` over the finished ones that report a rate. ``catch_up=False``:
        a scrape that caught up with the change log once (``snapshot``) reads every window at that point."""
        if catch_up:
            self.sync()
        return self.cdn_windows.windows((account, kind), now, windows)

    def _cdn_edge_counts(self, group: Any, after: float, until: float) -> Counts:
        """The window counter's exact count of a partial minute: the same deltas, from the rows themselves."""
        account, kind = group
        return sum_deltas(d for create_ts, status, rate in self.repo.cdn_edge_rows(account, kind, after, until)
                          for d in cdn_deltas(account, kind, create_ts, status, rate, +1))

    def cdn_oldest_unfinished(self, account: str, kind: str, since: float | None = None) -> float | None:
        """Create time of the oldest task not yet finished (index seek, not a scan)."""
        return self.repo.cdn_oldest_unfinished(account, kind, since)

    def cdn_range_count(self, account: str, kind: str, start: float, end: float) -> int:
        """Stored tasks created in [start, end] (an index range count, for planning reads)."""
        return self.repo.cdn_range_count(account, kind, start, end)

    def cdn_unfinished(self, account: str, kind: str, start: float, end: float
                       ) -> list[tuple[float, str, float, str]]:
        """(create_ts, url, last seen, status) of the unfinished tasks created in [start, end], oldest first."""
        return self.repo.cdn_unfinished(account, kind, start, end)

    def cdn_mark_checked(self, account: str, kind: str, start: float, end: float, ts: float,
                         url: str | None = None, *, fence: Fence | None = None) -> None:
        """A read covered [start, end] (or one url in it): its unfinished tasks were checked at ``ts``, even
        those the vendor did not return, so that re-check planning does not ask for them again at once."""
        with self._transaction(fence) as work:
            work.tx.cdn_mark_checked(account, kind, start, end, ts, url)

    def cdn_rows(self, account: str, kind: str, start: float, end: float) -> list[tuple[float, str, str]]:
        """(create_ts, url, status) of the tasks created in [start, end] (tests, benchmarks, diagnostics)."""
        return self.repo.cdn_rows(account, kind, start, end)

    def cdn_task_count(self, account: str | None = None, kind: str | None = None) -> int:
        return self.repo.cdn_task_count(account, kind)

    def cdn_counts_by_status(self, account: str, kind: str, start: float, end: float) -> dict[str, int]:
        """Exact counts for tasks created in [start, end] (tests and diagnostics; not used on scrapes)."""
        return self.repo.cdn_counts_by_status(account, kind, start, end)

    def prune_cdn(self, before: float) -> int:
        """Drop tasks created before ``before``: they are older than every window and than the API's reach."""
        deleted = self.repo.prune_cdn(before)
        self._prune_memory("cdn", before)
        return deleted

    def _prune_memory(self, which: str, before: float) -> None:
        if self.shared:  # every replica forgets the same buckets, when it reaches this point of the log
            with self._transaction() as work:
                work.prunes.append((which, before))
        else:
            (self.cdn_windows if which == "cdn" else self.fmgr_windows).prune(before)

    def prune_changes(self, before: float) -> None:
        """Forget the change log written before ``before`` (a replica further behind rebuilds)."""
        self.repo.prune_changes(before)

    # ------------------------------------------------------------------ Fmgr tasks
    def register_fmgr_ids(self, ids: Sequence[str], source: str) -> int:
        """Start tracking ids; returns how many were new. Known ids are left as they are."""
        with self._transaction() as work:
            return fmgr_tracking.register(work, ids, source, self._clock())

    def apply_fmgr_status(
        self, status: fmgrwire.FmgrStatus, *, source: str, polled: bool,
        lifecycle: fmgrwire.Lifecycle = DEFAULT_LIFECYCLE, fence: Fence | None = None,
    ) -> None:
        """Record what the vendor said about a task (from a poll or a verified notification); ``lifecycle``
        says when it is polled next, or that it is final."""
        with self._transaction(fence) as work:
            fmgr_tracking.apply_status(work, status, source=source, polled=polled, lifecycle=lifecycle,
                                       now=self._clock())

    def record_notification(self, status: fmgrwire.FmgrStatus, dedup_key: str, received_ts: float, *,
                            lifecycle: fmgrwire.Lifecycle = DEFAULT_LIFECYCLE) -> bool:
        """Store a verified notification once (group-committed with concurrent ones); False when this exact
        delivery was already stored. A new one schedules the confirming poll that ``lifecycle`` asks for."""
        return self._notes.record(status, dedup_key, received_ts, lifecycle)

    def count_notification(self, result: str) -> None:
        self.increment(m.FMGR_NOTIFICATIONS.store_key, {"result": result})

    def fmgr_due(self, now: float, limit: int) -> list[str]:
        """Ids to poll now: not final yet (processing, or the notification phase not settled), oldest due first."""
        return self.repo.fmgr_due(now, limit)

    def fmgr_next_due(self) -> float | None:
        return self.repo.fmgr_next_due()

    def fmgr_poll_failed(self, task_id: str, error: str, next_poll: float, *, give_up: bool = False,
                         fence: Fence | None = None) -> None:
        with self._transaction(fence) as work:
            if work.tx.fmgr_poll_failed(task_id, error, next_poll, give_up, self._clock()):
                work.pending -= 1

    def abandon_old_fmgr(self, before: float) -> int:
        """Stop polling tasks first seen before ``before`` (fmgr.max_task_age): those that never finished are
        abandoned; those that finished (by notification) but were never confirmed by a poll just stop
        waiting for that poll and stay completed."""
        n = self.repo.abandon_old_fmgr(before)
        self._recount_pending()
        return n

    def fmgr_pending(self) -> tuple[int, float | None]:
        """(number of tracked tasks not final, first-seen time of the oldest of them)."""
        # Other replicas change the count too: a shared store counts it (an index range count).
        pending = self.repo.fmgr_count_pending() if self.shared else self.aggregates.pending
        return pending, self.repo.fmgr_oldest_pending()

    def fmgr_unknown(self) -> int:
        """Tracked ids still polled whose last poll the vendor answered "not found" (cdnetworks_fmgr_unknown_ids)."""
        return self.repo.fmgr_count_unknown()

    def fmgr_window_counts(self, now: float, windows: Sequence[float], *,
                           catch_up: bool = True) -> dict[str, list[Counts]]:
        """Per group, one Counter per window: "tasks" code -> n, "items" (op, code) -> n (code -1 = other,
        None = not polled yet), "outcomes" succeeded/failed -> n (final items)."""
        if catch_up:
            self.sync()
        return {g: self.fmgr_windows.windows(g, now, windows) for g in ("tasks", "items", "outcomes")}

    def _fmgr_edge_counts(self, group: Any, after: float, until: float) -> Counts:
        """The window counter's exact count of a partial minute, from the rows the deltas were made from."""
        if group == "tasks":
            return sum_deltas(d for first_seen, code in self.repo.fmgr_edge_task_rows(after, until)
                              for d in fmgr_task_deltas(first_seen, code, +1))
        return sum_deltas((d for first_seen, op, code in self.repo.fmgr_edge_item_rows(after, until)
                           for d in fmgr_item_deltas(first_seen, op, code, +1)), group)

    def list_fmgr_tasks(self, state: str | None, limit: int, task_id: str | None = None,
                        pending: bool | None = None) -> list[dict[str, Any]]:
        """Tracked tasks, newest first, optionally only those in ``state`` and those ``pending`` or not
        (filtered and limited in SQL)."""
        return fmgr_tracking.list_tasks(self.repo, state, limit, task_id, pending)

    def fmgr_task(self, task_id: str) -> dict[str, Any] | None:
        rows = self.list_fmgr_tasks(None, 1, task_id=task_id)
        return rows[0] if rows else None

    def prune_fmgr(self, before: float, keep: Sequence[str] = ()) -> int:
        """Forget final tasks (and old dedup keys) seen before ``before``, except the ids in ``keep``."""
        n = self.repo.prune_fmgr(before, keep)
        self._prune_memory("fmgr", before)
        return n
