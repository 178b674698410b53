"""SQLite store: the single source of truth between the pollers/receivers and the collector.

Writers (pollers, the notify receiver, the registration API) go through one connection guarded by a
lock; the collector reads in-memory window counters (whose partial edge minutes are index range reads) and
a few indexed lookups, never scanning tasks.
WAL mode with ``synchronous=NORMAL`` makes every committed transaction survive a crash of the process
(kill -9); only an OS crash or power loss can lose the last commits.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import fmgr as fmgrwire
from .windows import Counts, Delta, WindowCounter

log = logging.getLogger(__name__)

CDN_STATUSES = ("success", "failure", "wait", "run", "unknown")
CDN_FINAL = frozenset({"success", "failure"})
DEFAULT_LIFECYCLE = fmgrwire.Lifecycle()
# finishTime - createTime of a prefetch/purge: seconds to hours.
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cdn_tasks (
    account TEXT NOT NULL, kind TEXT NOT NULL, url TEXT NOT NULL, create_ts REAL NOT NULL,
    status TEXT NOT NULL, begin_ts REAL, finish_ts REAL, rate REAL, updated_ts REAL NOT NULL,
    PRIMARY KEY (account, kind, url, create_ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cdn_tasks_unfinished ON cdn_tasks (account, kind, create_ts)
    WHERE status IN ('wait', 'run', 'unknown');
CREATE INDEX IF NOT EXISTS cdn_tasks_created ON cdn_tasks (create_ts);
-- The exact count of a window's partial edge minutes (and the planner's range counts): a range seek that
-- reads only the index. Its condition
-- holds for every row; queries use it only by repeating it, so it cannot take over the queries the narrower
-- indexes serve (without statistics SQLite would prefer it for the oldest unfinished task and scan every
-- finished one since then).
CREATE INDEX IF NOT EXISTS cdn_tasks_window ON cdn_tasks (account, kind, create_ts, status, rate)
    WHERE status IS NOT NULL;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (name, labels)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fmgr_tasks (
    id TEXT PRIMARY KEY, first_seen REAL NOT NULL, final_seen REAL, code INTEGER, source TEXT NOT NULL,
    last_polled REAL, next_poll REAL NOT NULL, confirmed INTEGER NOT NULL DEFAULT 0,
    abandoned INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    updated_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS fmgr_tasks_due ON fmgr_tasks (next_poll)
    WHERE (final_seen IS NULL OR confirmed = 0) AND abandoned = 0;
CREATE INDEX IF NOT EXISTS fmgr_tasks_pending ON fmgr_tasks (first_seen)
    WHERE final_seen IS NULL AND abandoned = 0;
-- The windows' edge minutes, as cdn_tasks_window (and kept off the pending queries the same way).
CREATE INDEX IF NOT EXISTS fmgr_tasks_window ON fmgr_tasks (first_seen, code, id) WHERE first_seen IS NOT NULL;
CREATE TABLE IF NOT EXISTS fmgr_items (
    task_id TEXT NOT NULL, idx INTEGER NOT NULL, op TEXT NOT NULL, code INTEGER, fsize INTEGER,
    PRIMARY KEY (task_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fmgr_notifications (
    dedup_key TEXT PRIMARY KEY, task_id TEXT NOT NULL, received_ts REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fmgr_notifications_received ON fmgr_notifications (received_ts);
CREATE INDEX IF NOT EXISTS fmgr_notifications_task ON fmgr_notifications (task_id);
"""


@dataclass(frozen=True)
class CdnTask:
    """One row of ``resultDetail``, times as unix seconds."""

    url: str
    create_ts: float
    status: str
    begin_ts: float | None = None
    finish_ts: float | None = None
    rate: float | None = None  # 0..100 as the vendor sends it

    @property
    def final(self) -> bool:
        return self.status in CDN_FINAL


@dataclass(frozen=True)
class UpsertResult:
    new: int
    changed: int
    newly_finished: int


@dataclass
class _Note:
    """A notification waiting for the group commit, and what became of it."""

    status: fmgrwire.FmgrStatus
    dedup_key: str
    ts: float
    lifecycle: fmgrwire.Lifecycle
    done: bool = False
    result: bool = False
    error: BaseException | None = None

    def outcome(self) -> bool:
        if self.error is not None:
            raise self.error
        return self.result


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, float], ...]  # cumulative (upper bound, count), +Inf last
    total: float
    count: float


def _labels_key(labels: dict[str, str]) -> str:
    return _labels_key_of(tuple(sorted(labels.items())))


# Label sets repeat endlessly (a few per account and bucket): encoding and decoding them once keeps
# json off the scrape path and out of the per-task write path.
@lru_cache(maxsize=8192)
def _labels_key_of(items: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(items), separators=(",", ":"))


@lru_cache(maxsize=8192)
def _labels_of(key: str) -> tuple[tuple[str, str], ...]:
    return tuple(json.loads(key).items())


def _processed_fmgr(code: int | None) -> bool:
    """Processing is over (3 and the notification phase after it): the task is no longer pending."""
    return code is not None and code in fmgrwire.PROCESSED_TASK_CODES


def _item_phase(code: int | None) -> int:
    """How far an item's code is along its lifecycle (0/1, then 2/3, then 4/18, then 5/6/19/20)."""
    if code in (2, 3):
        return 1
    if code in (4, 18):
        return 2
    if code in (5, 6, 19, 20):
        return 3
    return 0


class Store:
    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = str(path)
        self._clock = clock
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(SCHEMA)
        self._migrate()
        self.cdn_windows = WindowCounter(self._cdn_edge_counts)
        self.fmgr_windows = WindowCounter(self._fmgr_edge_counts)
        self._counters: dict[tuple[str, str], float] = {}
        self._txn_incs: dict[tuple[str, str], float] = {}
        self._fmgr_pending = 0
        self._notes: list[_Note] = []
        self._notes_cv = threading.Condition()
        self._notes_writing = False
        self._closed = False
        self._write_error: str | None = None  # why the last write failed; None after a commit
        self._pending_stale = False
        self._identity = self._file_identity()
        self._rebuild_memory()

    # ------------------------------------------------------------------ lifecycle
    def _migrate(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {row[0]} is newer than this exporter understands ({SCHEMA_VERSION})"
            )

    def _rebuild_memory(self) -> None:
        """Rebuild the in-memory aggregates from SQLite after a (re)start."""
        rows = self._conn.execute(
            "SELECT account, kind, create_ts, status, rate FROM cdn_tasks"
        ).fetchall()
        changes = []
        for account, kind, create_ts, status, rate in rows:
            changes.extend(self._cdn_deltas(account, kind, create_ts, status, rate, +1))
        self.cdn_windows.add_many(changes)
        fchanges: list[Delta] = []
        for first_seen, code in self._conn.execute("SELECT first_seen, code FROM fmgr_tasks"):
            fchanges.extend(self._fmgr_task_deltas(first_seen, code, +1))
        for first_seen, op, icode in self._conn.execute(
            "SELECT t.first_seen, i.op, i.code FROM fmgr_items i JOIN fmgr_tasks t ON t.id = i.task_id"
        ):
            fchanges.extend(self._fmgr_item_deltas(first_seen, op, icode, +1))
        self.fmgr_windows.add_many(fchanges)
        for name, labels, value in self._conn.execute("SELECT name, labels, value FROM counters"):
            self._counters[(name, labels)] = value
        self._fmgr_pending = self._count_pending()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    def ping(self) -> bool:
        """True when the database answers (for /readyz)."""
        try:
            with self._lock:
                if self._closed:
                    return False
                self._conn.execute("SELECT 1").fetchone()
            return True
        except sqlite3.Error as exc:
            log.warning("store ping failed: %s", exc)
            return False

    # ------------------------------------------------------------------ generic state and counters
    def get_state(self, key: str) -> Any:
        with self._lock:
            row = self._conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_state(self, key: str, value: Any) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)),
            )

    def _inc_locked(self, name: str, labels: dict[str, str], delta: float = 1.0) -> None:
        """Add to a counter inside the open transaction; written once per key when the transaction commits."""
        key = (name, _labels_key(labels))
        self._txn_incs[key] = self._txn_incs.get(key, 0.0) + delta

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        st = os.stat(self.path)  # FileNotFoundError (an OSError) once the file is gone
        return st.st_dev, st.st_ino

    def _check_file(self) -> None:
        """Refuse to write when the database file was deleted or replaced under us: SQLite would go on
        writing into the unlinked file and every acknowledged write would be lost at the next start."""
        try:
            same = self._file_identity() == self._identity
        except OSError:
            same = False
        if not same:
            raise sqlite3.OperationalError(f"database file {self.path} was removed or replaced")

    def write_health(self) -> tuple[bool, str]:
        """(True, "") when a write can be expected to work, else (False, why): for /readyz."""
        with self._lock:
            if self._closed:
                return False, "store is closed"
            try:
                self._check_file()
                self._conn.execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                return False, f"store: {exc}"
            if self._write_error is not None:
                return False, f"store: last write failed: {self._write_error}"
        return True, ""

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction under the store lock; counters reach memory only once it committed."""
        with self._lock:
            try:
                self._check_file()
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._write_error = str(exc)
                raise
            try:
                yield
                if self._txn_incs:
                    self._conn.executemany(
                        "INSERT INTO counters VALUES (?, ?, ?) "
                        "ON CONFLICT(name, labels) DO UPDATE SET value = value + excluded.value",
                        [(k[0], k[1], v) for k, v in self._txn_incs.items()],
                    )
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._txn_incs = {}
                if isinstance(exc, sqlite3.Error):
                    self._write_error = str(exc)
                try:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_exc:  # e.g. the files became unwritable mid-transaction
                    log.error("store: rollback failed: %s", rollback_exc)
                # The in-memory pending count may have moved with the rolled-back writes: recount it, or
                # at the next commit if the database cannot even be read now.
                self._recount_pending()
                raise
            for key, delta in self._txn_incs.items():
                self._counters[key] = self._counters.get(key, 0.0) + delta
            self._txn_incs = {}
            self._write_error = None
            if self._pending_stale:
                self._recount_pending()

    def _recount_pending(self) -> None:
        try:
            self._fmgr_pending = self._count_pending()
            self._pending_stale = False
        except sqlite3.Error as exc:
            self._pending_stale = True
            log.error("store: cannot recount pending Fmgr tasks: %s", exc)

    def _count_pending(self) -> int:
        (count,) = self._conn.execute(
            "SELECT count(*) FROM fmgr_tasks WHERE final_seen IS NULL AND abandoned = 0"
        ).fetchone()
        return int(count)

    def increment(self, name: str, labels: dict[str, str], delta: float = 1.0) -> None:
        """A persistent counter (survives restarts, like the history it counts)."""
        with self._transaction():
            self._inc_locked(name, labels, delta)

    def counters(self, name: str) -> list[tuple[dict[str, str], float]]:
        """All label sets and values of counter ``name`` (from memory: no SQL on a scrape)."""
        return [(dict(_labels_of(lab)), v) for (n, lab), v in list(self._counters.items()) if n == name]

    # ------------------------------------------------------------------ CDN tasks
    @staticmethod
    def _cdn_deltas(account: str, kind: str, create_ts: float, status: str, rate: float | None,
                    sign: int) -> list[Delta]:
        group = (account, kind)
        out: list[Delta] = [(group, create_ts, ("status", status), sign)]
        if status in CDN_FINAL and rate is not None:
            out.append((group, create_ts, ("rate_sum",), sign * rate))
            out.append((group, create_ts, ("rate_n",), sign))
        return out

    def upsert_cdn_tasks(self, account: str, kind: str, tasks: Iterable[CdnTask]) -> UpsertResult:
        """Insert or update tasks in one transaction; count each task's finish exactly once."""
        now = self._clock()
        new = changed = finished = 0
        deltas: list[Delta] = []
        with self._transaction():
            for t in tasks:
                row = self._conn.execute(
                    "SELECT status, rate FROM cdn_tasks WHERE account=? AND kind=? AND url=? AND create_ts=?",
                    (account, kind, t.url, t.create_ts),
                ).fetchone()
                if row is not None and row[0] == t.status and row[1] == t.rate:
                    if not t.final:
                        # Unchanged but unfinished: remember when it was last seen, for re-check planning.
                        self._conn.execute(
                            "UPDATE cdn_tasks SET updated_ts=? WHERE account=? AND kind=? AND url=? AND create_ts=?",
                            (now, account, kind, t.url, t.create_ts))
                    continue
                self._conn.execute(
                    "INSERT INTO cdn_tasks VALUES (?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT(account, kind, url, create_ts) DO UPDATE SET status=excluded.status, "
                    "begin_ts=excluded.begin_ts, finish_ts=excluded.finish_ts, rate=excluded.rate, "
                    "updated_ts=excluded.updated_ts",
                    (account, kind, t.url, t.create_ts, t.status, t.begin_ts, t.finish_ts, t.rate, now),
                )
                if row is None:
                    new += 1
                else:
                    changed += 1
                    deltas.extend(self._cdn_deltas(account, kind, t.create_ts, row[0], row[1], -1))
                deltas.extend(self._cdn_deltas(account, kind, t.create_ts, t.status, t.rate, +1))
                was_final = row is not None and row[0] in CDN_FINAL
                if t.final and not was_final:
                    finished += 1
                    self._inc_locked(f"{kind}_tasks_finished_total", {"account": account, "status": t.status})
                    if t.finish_ts is not None:
                        self._observe_locked(f"{kind}_duration_seconds", {"account": account},
                                             max(0.0, t.finish_ts - t.create_ts), DURATION_BUCKETS)
        self.cdn_windows.add_many(deltas)
        return UpsertResult(new, changed, finished)

    def _observe_locked(self, name: str, labels: dict[str, str], value: float, bounds: Sequence[float]) -> None:
        for bound in bounds:
            if value <= bound:
                self._inc_locked(name + "_bucket", {**labels, "le": repr(float(bound))})
        self._inc_locked(name + "_bucket", {**labels, "le": "+Inf"})
        self._inc_locked(name + "_sum", labels, value)
        self._inc_locked(name + "_count", labels)

    def histogram(self, name: str, labels: dict[str, str], bounds: Sequence[float]) -> Histogram:
        """Cumulative histogram kept as persistent counters (all buckets present, zeros included)."""
        get = self._counters.get
        buckets = [
            (b, get((name + "_bucket", _labels_key({**labels, "le": repr(float(b))})), 0.0)) for b in bounds
        ]
        buckets.append((float("inf"), get((name + "_bucket", _labels_key({**labels, "le": "+Inf"})), 0.0)))
        return Histogram(
            tuple(buckets),
            get((name + "_sum", _labels_key(labels)), 0.0),
            get((name + "_count", _labels_key(labels)), 0.0),
        )

    def cdn_window_counts(self, account: str, kind: str, now: float, windows: Sequence[float]) -> list[Counts]:
        """Per window ``w``, label -> sum over the tasks created in ``(now - w, now]``: ``("status", s)`` -> tasks,
        ``("rate_sum",)`` / ``("rate_n",)`` over the finished ones that report a rate."""
        return self.cdn_windows.windows((account, kind), now, windows)

    def _cdn_edge_counts(self, group: Any, after: float, until: float) -> Counts:
        """The window counter's exact count of a partial minute: the same deltas, from the rows themselves."""
        account, kind = group
        with self._lock:
            rows = self._conn.execute(
                "SELECT create_ts, status, rate FROM cdn_tasks INDEXED BY cdn_tasks_window "
                "WHERE account=? AND kind=? AND create_ts > ? AND create_ts <= ? AND status IS NOT NULL",
                (account, kind, after, until),
            ).fetchall()
        out: Counts = Counter()
        for create_ts, status, rate in rows:
            for _, _, label, delta in self._cdn_deltas(account, kind, create_ts, status, rate, +1):
                out[label] += delta  # type: ignore[assignment]  # float rate sums, see windows.Counts
        return out

    def cdn_oldest_unfinished(self, account: str, kind: str, since: float | None = None) -> float | None:
        """Create time of the oldest task not yet finished (index seek, not a scan)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT min(create_ts) FROM cdn_tasks WHERE account=? AND kind=? AND "
                "status IN ('wait','run','unknown') AND create_ts >= ?",
                (account, kind, since if since is not None else float("-inf")),
            ).fetchone()
        return row[0] if row and row[0] is not None else None

    def cdn_range_count(self, account: str, kind: str, start: float, end: float) -> int:
        """Stored tasks created in [start, end] (an index range count, for planning reads)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM cdn_tasks WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ? "
                "AND status IS NOT NULL",  # the condition of cdn_tasks_window: an index-only range count
                (account, kind, start, end)).fetchone()
        return int(row[0])

    def cdn_unfinished(self, account: str, kind: str, start: float, end: float
                       ) -> list[tuple[float, str, float, str]]:
        """(create_ts, url, last seen, status) of the unfinished tasks created in [start, end], oldest first."""
        with self._lock:
            return [(c, u, s, st) for c, u, s, st in self._conn.execute(
                "SELECT create_ts, url, updated_ts, status FROM cdn_tasks WHERE account=? AND kind=? AND "
                "status IN ('wait','run','unknown') AND create_ts BETWEEN ? AND ? ORDER BY create_ts",
                (account, kind, start, end))]

    def cdn_mark_checked(self, account: str, kind: str, start: float, end: float, ts: float,
                         url: str | None = None) -> None:
        """A read covered [start, end] (or one url in it): its unfinished tasks were checked at ``ts``, even
        those the vendor did not return, so that re-check planning does not ask for them again at once."""
        sql = ("UPDATE cdn_tasks SET updated_ts=? WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ? "
               "AND status IN ('wait','run','unknown')")
        args: list[Any] = [ts, account, kind, start, end]
        if url is not None:
            sql += " AND url=?"
            args.append(url)
        with self._lock:
            self._conn.execute(sql, args)

    def cdn_task_count(self, account: str | None = None, kind: str | None = None) -> int:
        sql, args = "SELECT count(*) FROM cdn_tasks WHERE 1=1", []
        if account is not None:
            sql += " AND account = ?"
            args.append(account)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        with self._lock:
            return int(self._conn.execute(sql, args).fetchone()[0])

    def cdn_counts_by_status(self, account: str, kind: str, start: float, end: float) -> dict[str, int]:
        """Exact counts for tasks created in [start, end] (tests and diagnostics; not used on scrapes)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT status, count(*) FROM cdn_tasks WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ? "
                "GROUP BY status",
                (account, kind, start, end),
            ).fetchall()
        return {s: n for s, n in rows}

    def prune_cdn(self, before: float) -> int:
        """Drop tasks created before ``before``: they are older than every window and than the API's reach."""
        with self._lock:
            cur = self._conn.execute("DELETE FROM cdn_tasks WHERE create_ts < ?", (before,))
            deleted = cur.rowcount
        self.cdn_windows.prune(before)
        return deleted

    # ------------------------------------------------------------------ Fmgr tasks
    @staticmethod
    def _fmgr_task_deltas(first_seen: float, code: int | None, sign: int) -> list[Delta]:
        # Keys stay bounded: unknown codes collapse to -1 ("other"); None = not polled yet.
        key = code if code is None or code in fmgrwire.TASK_STATES else -1
        return [("tasks", first_seen, key, sign)]

    @staticmethod
    def _fmgr_item_deltas(first_seen: float, op: str, code: int | None, sign: int) -> list[Delta]:
        key = code if code is None or code in fmgrwire.ITEM_STATES else -1
        out: list[Delta] = [("items", first_seen, (op, key), sign)]
        outcome = fmgrwire.item_outcome(code)
        if outcome is not None:
            out.append(("outcomes", first_seen, outcome, sign))
        return out

    def register_fmgr_ids(self, ids: Sequence[str], source: str) -> int:
        """Start tracking ids; returns how many were new. Known ids are left as they are."""
        now = self._clock()
        added = 0
        deltas: list[Delta] = []
        with self._transaction():
            for task_id in ids:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO fmgr_tasks (id, first_seen, source, next_poll, updated_ts) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (task_id, now, source, now, now),
                )
                if cur.rowcount:
                    added += 1
                    self._fmgr_pending += 1  # under the store lock, like every other change to it
                    deltas.extend(self._fmgr_task_deltas(now, None, +1))
        self.fmgr_windows.add_many(deltas)
        return added

    def apply_fmgr_status(
        self, status: fmgrwire.FmgrStatus, *, source: str, polled: bool,
        lifecycle: fmgrwire.Lifecycle = DEFAULT_LIFECYCLE,
    ) -> None:
        """Record what the vendor said about a task (from a poll or a verified notification); ``lifecycle``
        says when it is polled next, or that it is final."""
        with self._transaction():
            deltas = self._apply_fmgr_locked(status, source=source, polled=polled, lifecycle=lifecycle)
        self.fmgr_windows.add_many(deltas)

    def _apply_fmgr_locked(
        self, status: fmgrwire.FmgrStatus, *, source: str, polled: bool, lifecycle: fmgrwire.Lifecycle
    ) -> list[Delta]:
        now = self._clock()
        deltas: list[Delta] = []
        row = self._conn.execute(
            "SELECT first_seen, final_seen, code, confirmed, abandoned, next_poll FROM fmgr_tasks WHERE id = ?",
            (status.id,),
        ).fetchone()
        new_task = row is None
        first_seen, final_seen, old_code, confirmed, abandoned, next_poll = (
            (now, None, None, 0, 0, now) if new_task else row)
        # A notification reports the task's *notification* status at top level, never the task code.
        new_code = old_code
        if polled:
            new_code = status.code
        elif (status.items and all(fmgrwire.item_outcome(i.code) is not None for i in status.items)
              and old_code in (None, 0, 1)):  # never back from notifying/notified to completed
            # A notification is only sent once processing is over: the task is at least "completed".
            new_code = 3
        if new_task:
            deltas.extend(self._fmgr_task_deltas(first_seen, new_code, +1))
        elif new_code != old_code:
            deltas.extend(self._fmgr_task_deltas(first_seen, old_code, -1))
            deltas.extend(self._fmgr_task_deltas(first_seen, new_code, +1))
        if fmgrwire.notify_failed(new_code, item=False) and not fmgrwire.notify_failed(old_code, item=False):
            self._inc_locked("fmgr_notify_failures_total", {"scope": "task"})
        new_final_seen = final_seen if final_seen is not None else (now if _processed_fmgr(new_code) else None)
        if new_final_seen is None and new_task:
            self._fmgr_pending += 1
        elif final_seen is None and new_final_seen is not None and not abandoned and not new_task:
            self._fmgr_pending -= 1
        if polled:
            # A task that was notified has a notifyURL, so its 3 is not final whatever the grace period.
            notified = self._conn.execute(
                "SELECT 1 FROM fmgr_notifications WHERE task_id = ? LIMIT 1", (status.id,)
            ).fetchone() is not None
            due = lifecycle.after_poll(new_code, now, processed_since=new_final_seen, notified=notified)
            confirmed, next_poll = (1, now) if due is None else (0, due)
        else:
            due = lifecycle.after_notification(new_code, now)
            if due is not None:
                confirmed, next_poll = 0, due
        values = (new_code, new_final_seen, confirmed, now, now if polled else None, next_poll)
        if new_task:
            self._conn.execute(
                "INSERT INTO fmgr_tasks (code, final_seen, confirmed, updated_ts, last_polled, next_poll, id, "
                "first_seen, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*values, status.id, now, source),
            )
            old_items: dict[int, tuple[str, int | None, int | None]] = {}
        else:
            self._conn.execute(
                "UPDATE fmgr_tasks SET code=?, final_seen=?, confirmed=?, updated_ts=?, "
                "last_polled=coalesce(?, last_polled), next_poll=?, errors=0, last_error=NULL WHERE id=?",
                (*values, status.id),
            )
            old_items = {
                idx: (op, code, fsize)
                for idx, op, code, fsize in self._conn.execute(
                    "SELECT idx, op, code, fsize FROM fmgr_items WHERE task_id = ?", (status.id,)
                )
            }
        for idx, item in enumerate(status.items):
            old = old_items.get(idx)
            if old is not None and old[1] == item.code and old[2] == item.fsize:
                continue
            if not polled and old is not None and _item_phase(item.code) < _item_phase(old[1]):
                continue  # a notification is older news than a poll that saw the notification phase
            self._conn.execute(
                "INSERT INTO fmgr_items VALUES (?, ?, ?, ?, ?) ON CONFLICT(task_id, idx) DO UPDATE SET "
                "op=excluded.op, code=excluded.code, fsize=excluded.fsize",
                (status.id, idx, item.op, item.code, item.fsize),
            )
            if old is not None:
                deltas.extend(self._fmgr_item_deltas(first_seen, old[0], old[1], -1))
            deltas.extend(self._fmgr_item_deltas(first_seen, item.op, item.code, +1))
            if fmgrwire.notify_failed(item.code, item=True) and not (
                    old is not None and fmgrwire.notify_failed(old[1], item=True)):
                self._inc_locked("fmgr_notify_failures_total", {"scope": "item"})
            # Counted once: when an item is first seen succeeded with a size (the size may come later).
            counted = old is not None and fmgrwire.item_outcome(old[1]) == "succeeded" and bool(old[2])
            if fmgrwire.item_outcome(item.code) == "succeeded" and item.fsize and not counted:
                self._inc_locked("fmgr_processed_bytes_total", {"op": item.op}, float(item.fsize))
        return deltas

    def record_notification(self, status: fmgrwire.FmgrStatus, dedup_key: str, received_ts: float, *,
                            lifecycle: fmgrwire.Lifecycle = DEFAULT_LIFECYCLE) -> bool:
        """Store a verified notification once; False when this exact delivery was already stored. A new one
        schedules the confirming poll that ``lifecycle`` asks for.

        Group commit: concurrent callers queue their notification and the first of them writes the whole
        queue in one transaction, so a burst costs one commit instead of one per notification. Every caller
        returns only once its own notification is committed (or raises if it could not be)."""
        note = _Note(status, dedup_key, received_ts, lifecycle)
        with self._notes_cv:
            self._notes.append(note)
            if self._notes_writing:
                while not note.done:
                    self._notes_cv.wait()
                return note.outcome()
            self._notes_writing = True
        batch: list[_Note] = []
        try:
            while True:
                with self._notes_cv:
                    batch, self._notes = self._notes, []
                    if not batch:
                        self._notes_writing = False
                        break
                self._write_notes(batch)
                with self._notes_cv:
                    for n in batch:
                        n.done = True
                    self._notes_cv.notify_all()
        except BaseException:
            with self._notes_cv:  # never leave followers waiting for a writer that is gone
                self._notes_writing = False
                for n in [*batch, *self._notes, note]:
                    if not n.done:
                        n.error, n.done = RuntimeError("notification writer stopped"), True
                self._notes = []
                self._notes_cv.notify_all()
            raise
        return note.outcome()

    def _write_notes(self, batch: list[_Note]) -> None:
        """One transaction for the batch; if it fails, each notification alone, so one bad entry fails only
        its own sender (who gets a 5xx and retries) and a broken store fails them all."""
        try:
            deltas = self._notes_transaction(batch)
        except Exception:
            if len(batch) == 1:
                batch[0].error = sys.exc_info()[1]
                return
            for n in batch:
                self._write_notes([n])
            return
        self.fmgr_windows.add_many(deltas)

    def _notes_transaction(self, batch: list[_Note]) -> list[Delta]:
        deltas: list[Delta] = []
        with self._transaction():
            for n in batch:
                cur = self._conn.execute(
                    "INSERT OR IGNORE INTO fmgr_notifications VALUES (?, ?, ?)", (n.dedup_key, n.status.id, n.ts)
                )
                n.result = cur.rowcount != 0
                if n.result:
                    deltas.extend(self._apply_fmgr_locked(n.status, source="notify", polled=False,
                                                          lifecycle=n.lifecycle))
                self._inc_locked("fmgr_notifications_total", {"result": "accepted" if n.result else "duplicate"})
        return deltas

    def count_notification(self, result: str) -> None:
        self.increment("fmgr_notifications_total", {"result": result})

    def fmgr_due(self, now: float, limit: int) -> list[str]:
        """Ids to poll now: not final yet (processing, or the notification phase not settled), oldest due first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM fmgr_tasks WHERE (final_seen IS NULL OR confirmed = 0) AND abandoned = 0 "
                "AND next_poll <= ? ORDER BY next_poll LIMIT ?",
                (now, limit),
            ).fetchall()
        return [r[0] for r in rows]

    def fmgr_next_due(self) -> float | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT min(next_poll) FROM fmgr_tasks WHERE (final_seen IS NULL OR confirmed = 0) AND abandoned = 0"
            ).fetchone()
        return row[0] if row else None

    def fmgr_poll_failed(self, task_id: str, error: str, next_poll: float, *, give_up: bool = False) -> None:
        with self._lock:
            row = self._conn.execute(
                "SELECT final_seen, abandoned FROM fmgr_tasks WHERE id = ?", (task_id,)
            ).fetchone()
            self._conn.execute(
                "UPDATE fmgr_tasks SET errors = errors + 1, last_error = ?, next_poll = ?, "
                "abandoned = CASE WHEN ? THEN 1 ELSE abandoned END, last_polled = ? WHERE id = ?",
                (error[:200], next_poll, give_up, self._clock(), task_id),
            )
            if give_up and row is not None and row[0] is None and not row[1]:
                self._fmgr_pending -= 1

    def abandon_old_fmgr(self, before: float) -> int:
        """Stop polling tasks first seen before ``before`` (fmgr.max_task_age): those that never finished are
        abandoned; those that finished (by notification) but were never confirmed by a poll just stop
        waiting for that poll and stay completed."""
        with self._lock:
            cur = self._conn.execute(
                "UPDATE fmgr_tasks SET abandoned = 1 WHERE abandoned = 0 AND first_seen < ? AND final_seen IS NULL",
                (before,),
            )
            self._conn.execute(
                "UPDATE fmgr_tasks SET confirmed = 1 WHERE confirmed = 0 AND first_seen < ? AND final_seen IS NOT NULL",
                (before,),
            )
            self._fmgr_pending = self._count_pending()
            return cur.rowcount

    def fmgr_pending(self) -> tuple[int, float | None]:
        """(number of tracked tasks not final, first-seen time of the oldest of them)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT min(first_seen) FROM fmgr_tasks WHERE final_seen IS NULL AND abandoned = 0"
            ).fetchone()
        return self._fmgr_pending, (row[0] if row else None)

    def fmgr_window_counts(self, now: float, windows: Sequence[float]) -> dict[str, list[Counts]]:
        """Per group, one Counter per window: "tasks" code -> n, "items" (op, code) -> n (code -1 = other,
        None = not polled yet), "outcomes" succeeded/failed -> n (final items)."""
        return {g: self.fmgr_windows.windows(g, now, windows) for g in ("tasks", "items", "outcomes")}

    def _fmgr_edge_counts(self, group: Any, after: float, until: float) -> Counts:
        """The window counter's exact count of a partial minute, from the rows the deltas were made from."""
        with self._lock:
            if group == "tasks":
                deltas = [d for first_seen, code in self._conn.execute(
                    "SELECT first_seen, code FROM fmgr_tasks INDEXED BY fmgr_tasks_window "
                    "WHERE first_seen > ? AND first_seen <= ? AND first_seen IS NOT NULL",
                    (after, until),
                ) for d in self._fmgr_task_deltas(first_seen, code, +1)]
            else:
                deltas = [d for first_seen, op, code in self._conn.execute(
                    "SELECT t.first_seen, i.op, i.code FROM fmgr_tasks t INDEXED BY fmgr_tasks_window "
                    "JOIN fmgr_items i ON i.task_id = t.id "
                    "WHERE t.first_seen > ? AND t.first_seen <= ? AND t.first_seen IS NOT NULL",
                    (after, until),
                ) for d in self._fmgr_item_deltas(first_seen, op, code, +1)]
        out: Counts = Counter()
        for g, _, label, delta in deltas:
            if g == group:
                out[label] += int(delta)  # Fmgr deltas are counts of tasks and items
        return out

    def list_fmgr_tasks(self, state: str | None, limit: int, task_id: str | None = None) -> list[dict[str, Any]]:
        """Tracked tasks, newest first, optionally only those in ``state`` (filtered and limited in SQL)."""
        where, args = self._state_filter(state)
        if task_id is not None:
            where, args = [*where, "id = ?"], [*args, task_id]
        sql = ("SELECT id, first_seen, final_seen, code, source, last_polled, confirmed, abandoned, errors, "
               "last_error FROM fmgr_tasks" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY first_seen DESC LIMIT ?")
        with self._lock:
            rows = self._conn.execute(sql, (*args, limit)).fetchall()
        return [{
            "persistentId": r[0], "code": r[3], "firstSeen": r[1], "finalSeen": r[2], "source": r[4],
            "state": "abandoned" if r[7] else ("unknown" if r[3] is None else fmgrwire.task_state(r[3])),
            "lastPolled": r[5], "confirmed": bool(r[6]), "errors": r[8], "lastError": r[9],
        } for r in rows]

    @staticmethod
    def _state_filter(state: str | None) -> tuple[list[str], list[Any]]:
        """SQL conditions for a task state name, the inverse of the state shown by list_fmgr_tasks."""
        if state is None:
            return [], []
        if state == "abandoned":
            return ["abandoned = 1"], []
        if state == "unknown":
            return ["abandoned = 0", "code IS NULL"], []
        known = sorted(fmgrwire.TASK_STATES)
        marks = ",".join("?" * len(known))
        if state == "other":
            return ["abandoned = 0", "code IS NOT NULL", f"code NOT IN ({marks})"], list(known)
        codes = [c for c, name in fmgrwire.TASK_STATES.items() if name == state]
        if not codes:
            return ["0"], []  # a state no task can be in
        return ["abandoned = 0", f"code IN ({','.join('?' * len(codes))})"], codes

    def fmgr_task(self, task_id: str) -> dict[str, Any] | None:
        rows = self.list_fmgr_tasks(None, 1, task_id=task_id)
        return rows[0] if rows else None

    def prune_fmgr(self, before: float, keep: Sequence[str] = ()) -> int:
        """Forget final tasks (and old dedup keys) seen before ``before``, except the ids in ``keep``."""
        kept = set(keep)
        with self._lock:
            ids = [r[0] for r in self._conn.execute(
                "SELECT id FROM fmgr_tasks WHERE first_seen < ? AND (final_seen IS NOT NULL OR abandoned = 1)",
                (before,),
            ) if r[0] not in kept]
            for chunk in range(0, len(ids), 500):
                part = ids[chunk:chunk + 500]
                marks = ",".join("?" * len(part))
                self._conn.execute(f"DELETE FROM fmgr_items WHERE task_id IN ({marks})", part)
                self._conn.execute(f"DELETE FROM fmgr_tasks WHERE id IN ({marks})", part)
            self._conn.execute("DELETE FROM fmgr_notifications WHERE received_ts < ?", (before,))
        self.fmgr_windows.prune(before)
        return len(ids)
