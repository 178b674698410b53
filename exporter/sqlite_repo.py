"""The SQLite implementation of ``repository.Repository``: schema, migrations, transactions, queries.

Writes go through one connection guarded by a lock. Reads on the scrape path (a window's edge minutes, the
oldest unfinished task, the oldest pending Fmgr task) use a second connection with a lock of its own, so a
scrape never waits behind a write transaction: WAL mode lets it read the last committed state meanwhile.
WAL with ``synchronous=NORMAL`` makes every committed transaction survive a crash of the process (kill -9);
only an OS crash or power loss can lose the last commits.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from .leases import Fence, Grant
from .repository import CDN_UNFINISHED, CdnTask, FmgrApiRow, FmgrItemRow, FmgrTaskRow, Loaded, StateFilter

log = logging.getLogger(__name__)

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

_UNFINISHED_SQL = "status IN (" + ",".join(f"'{s}'" for s in CDN_UNFINISHED) + ")"
_PENDING_SQL = "final_seen IS NULL AND abandoned = 0"
_DUE_SQL = "(final_seen IS NULL OR confirmed = 0) AND abandoned = 0"


def path_problem(path: str) -> str | None:
    """Why an SQLite database at ``path`` could not be created or written, in words naming the directory or file
    at fault; None when it can. Creates nothing. The database's directory must be writable too: SQLite keeps
    its write-ahead log and shared-memory files next to it."""
    if path == ":memory:":
        return None
    if not path.strip():
        return "empty; expected a file path"
    target = Path(path)
    if target.is_dir():
        return "is a directory; expected the path of the database file"
    if target.exists() and not os.access(target, os.R_OK | os.W_OK):
        return f"{_access_reason(target)}: the database file cannot be read and written"
    directory = target.absolute().parent
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    if not directory.is_dir():
        return f"{directory} is not a directory, so {missing[-1] if missing else target} cannot be created"
    if not os.access(directory, os.W_OK | os.X_OK):
        what = f"cannot create directory {missing[-1]}" if missing else "cannot create files next to the database"
        return f"{what}: {directory}: {_access_reason(directory)}"
    return None


def _access_reason(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError as exc:
        return exc.strerror or str(exc)
    return "permission denied"


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class _Tx:
    """``repository.Transaction`` on the write connection, inside BEGIN IMMEDIATE ... COMMIT."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._c = conn

    def check_fence(self, fence: Fence) -> None:
        """One SQLite file serves one exporter, which runs every poller: there is no rival to fence off."""

    def log_change(self, origin: str, payload: str) -> None:
        raise NotImplementedError("an SQLite store is not shared between replicas")

    def set_state(self, key: str, value: Any) -> None:
        self._c.execute("INSERT INTO state VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, json.dumps(value)))

    def cdn_mark_checked(self, account: str, kind: str, start: float, end: float, ts: float,
                         url: str | None) -> None:
        sql = (f"UPDATE cdn_tasks SET updated_ts=? WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ? "
               f"AND {_UNFINISHED_SQL}")
        args: list[Any] = [ts, account, kind, start, end]
        if url is not None:
            sql += " AND url=?"
            args.append(url)
        self._c.execute(sql, args)

    def fmgr_poll_failed(self, task_id: str, error: str, next_poll: float, give_up: bool, ts: float) -> bool:
        row = self._c.execute("SELECT final_seen, abandoned FROM fmgr_tasks WHERE id = ?", (task_id,)).fetchone()
        self._c.execute(
            "UPDATE fmgr_tasks SET errors = errors + 1, last_error = ?, next_poll = ?, "
            "abandoned = CASE WHEN ? THEN 1 ELSE abandoned END, last_polled = ? WHERE id = ?",
            (error[:200], next_poll, give_up, ts, task_id))
        return give_up and row is not None and row[0] is None and not row[1]

    def add_counters(self, increments: Iterable[tuple[str, str, float]]) -> None:
        self._c.executemany(
            "INSERT INTO counters VALUES (?, ?, ?) "
            "ON CONFLICT(name, labels) DO UPDATE SET value = value + excluded.value", increments)

    def cdn_get(self, account: str, kind: str, url: str, create_ts: float) -> tuple[str, float | None] | None:
        row = self._c.execute(
            "SELECT status, rate FROM cdn_tasks WHERE account=? AND kind=? AND url=? AND create_ts=?",
            (account, kind, url, create_ts)).fetchone()
        return None if row is None else (row[0], row[1])

    def cdn_touch(self, account: str, kind: str, url: str, create_ts: float, ts: float) -> None:
        self._c.execute("UPDATE cdn_tasks SET updated_ts=? WHERE account=? AND kind=? AND url=? AND create_ts=?",
                        (ts, account, kind, url, create_ts))

    def cdn_put(self, account: str, kind: str, task: CdnTask, ts: float) -> None:
        self._c.execute(
            "INSERT INTO cdn_tasks VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT(account, kind, url, create_ts) DO UPDATE SET status=excluded.status, "
            "begin_ts=excluded.begin_ts, finish_ts=excluded.finish_ts, rate=excluded.rate, "
            "updated_ts=excluded.updated_ts",
            (account, kind, task.url, task.create_ts, task.status, task.begin_ts, task.finish_ts, task.rate, ts))

    def fmgr_register(self, task_id: str, ts: float, source: str) -> bool:
        cur = self._c.execute(
            "INSERT OR IGNORE INTO fmgr_tasks (id, first_seen, source, next_poll, updated_ts) VALUES (?, ?, ?, ?, ?)",
            (task_id, ts, source, ts, ts))
        return cur.rowcount != 0

    def fmgr_get(self, task_id: str) -> FmgrTaskRow | None:
        row = self._c.execute(
            "SELECT first_seen, final_seen, code, confirmed, abandoned, next_poll, last_polled FROM fmgr_tasks "
            "WHERE id = ?",
            (task_id,)).fetchone()
        return None if row is None else FmgrTaskRow(row[0], row[1], row[2], bool(row[3]), bool(row[4]), row[5],
                                                    row[6])

    def fmgr_was_notified(self, task_id: str) -> bool:
        return self._c.execute("SELECT 1 FROM fmgr_notifications WHERE task_id = ? LIMIT 1",
                               (task_id,)).fetchone() is not None

    def fmgr_insert(self, task_id: str, first_seen: float, source: str, code: int | None,
                    final_seen: float | None, confirmed: bool, ts: float, last_polled: float | None,
                    next_poll: float) -> None:
        self._c.execute(
            "INSERT INTO fmgr_tasks (code, final_seen, confirmed, updated_ts, last_polled, next_poll, id, "
            "first_seen, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (code, final_seen, int(confirmed), ts, last_polled, next_poll, task_id, first_seen, source))

    def fmgr_update(self, task_id: str, code: int | None, final_seen: float | None, confirmed: bool, ts: float,
                    last_polled: float | None, next_poll: float) -> None:
        self._c.execute(
            "UPDATE fmgr_tasks SET code=?, final_seen=?, confirmed=?, updated_ts=?, "
            "last_polled=coalesce(?, last_polled), next_poll=?, errors=0, last_error=NULL WHERE id=?",
            (code, final_seen, int(confirmed), ts, last_polled, next_poll, task_id))

    def fmgr_items(self, task_id: str) -> dict[int, FmgrItemRow]:
        return {idx: FmgrItemRow(op, code, fsize) for idx, op, code, fsize in self._c.execute(
            "SELECT idx, op, code, fsize FROM fmgr_items WHERE task_id = ?", (task_id,))}

    def fmgr_put_item(self, task_id: str, idx: int, item: FmgrItemRow) -> None:
        self._c.execute(
            "INSERT INTO fmgr_items VALUES (?, ?, ?, ?, ?) ON CONFLICT(task_id, idx) DO UPDATE SET "
            "op=excluded.op, code=excluded.code, fsize=excluded.fsize",
            (task_id, idx, item.op, item.code, item.fsize))

    def notification_add(self, dedup_key: str, task_id: str, ts: float) -> bool:
        cur = self._c.execute("INSERT OR IGNORE INTO fmgr_notifications VALUES (?, ?, ?)", (dedup_key, task_id, ts))
        return cur.rowcount != 0


class SqliteRepository:
    shared = False

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        conn = None
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path)
            conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            # sqlite3 says "unable to open database file" whatever the reason: name the path and the reason.
            reason = path_problem(self.path) or (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            raise RuntimeError(f"storage path {self.path}: {reason}") from exc
        self._conn = conn
        self._lock = threading.RLock()
        self._migrate()
        # An in-memory database exists once per connection: it has to read through the writer's.
        self._rconn = self._conn if self.path == ":memory:" else _connect(self.path)
        self._rlock = self._lock if self.path == ":memory:" else threading.RLock()
        self._closed = False
        self._write_error: str | None = None  # why the last write failed; None after a commit
        self._identity = self._file_identity()

    # ------------------------------------------------------------------ lifecycle
    def _migrate(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {row[0]} is newer than this exporter understands ({SCHEMA_VERSION})"
            )

    def close(self) -> None:
        with self._lock, self._rlock if self._rlock is not self._lock else nullcontext():
            if not self._closed:
                self._closed = True
                self._conn.close()
                if self._rconn is not self._conn:
                    self._rconn.close()

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
    def transaction(self) -> Iterator[_Tx]:
        with self._lock:
            try:
                self._check_file()
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._write_error = str(exc)
                raise
            try:
                yield _Tx(self._conn)
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if isinstance(exc, sqlite3.Error):
                    self._write_error = str(exc)
                try:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_exc:  # e.g. the files became unwritable mid-transaction
                    log.error("store: rollback failed: %s", rollback_exc)
                raise
            self._write_error = None

    def _write(self, sql: str, args: Sequence[Any]) -> int:
        """One statement outside a transaction (autocommit); its row count."""
        with self._lock:
            return self._conn.execute(sql, args).rowcount

    def _read(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """A scrape-path read on the reader connection: never waits for a write transaction."""
        with self._rlock:
            return self._rconn.execute(sql, args).fetchall()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """A read on the writer connection: sees this process's writes in order with them (planning)."""
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ state and rebuild
    def get_state(self, key: str) -> Any:
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def load(self) -> Loaded:
        with self._lock:  # the writer's lock: no commit lands between these reads
            return Loaded(
                self._query("SELECT name, labels, value FROM counters"),
                self._query("SELECT account, kind, create_ts, status, rate FROM cdn_tasks"),
                self._query("SELECT first_seen, code FROM fmgr_tasks"),
                self._query("SELECT t.first_seen, i.op, i.code FROM fmgr_items i "
                            "JOIN fmgr_tasks t ON t.id = i.task_id"),
                self.fmgr_count_pending(), 0)

    def changes_since(self, seq: int) -> tuple[list[tuple[int, str, str]], bool]:
        return [], True  # nobody else writes here

    def prune_changes(self, before: float) -> None:
        return None

    def lease_acquire(self, name: str, holder: str, ttl: float) -> Grant | None:
        return Grant(1)  # the only exporter on this file runs every poller

    def lease_release(self, name: str, holder: str) -> None:
        return None

    # ------------------------------------------------------------------ CDN
    def cdn_edge_rows(self, account: str, kind: str, after: float, until: float
                      ) -> list[tuple[float, str, float | None]]:
        return self._read(
            "SELECT create_ts, status, rate FROM cdn_tasks INDEXED BY cdn_tasks_window "
            "WHERE account=? AND kind=? AND create_ts > ? AND create_ts <= ? AND status IS NOT NULL",
            (account, kind, after, until))

    def cdn_oldest_unfinished(self, account: str, kind: str, since: float | None) -> float | None:
        rows = self._read(
            f"SELECT min(create_ts) FROM cdn_tasks WHERE account=? AND kind=? AND {_UNFINISHED_SQL} "
            "AND create_ts >= ?", (account, kind, since if since is not None else float("-inf")))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def cdn_range_count(self, account: str, kind: str, start: float, end: float) -> int:
        rows = self._query(
            "SELECT count(*) FROM cdn_tasks WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ? "
            "AND status IS NOT NULL",  # the condition of cdn_tasks_window: an index-only range count
            (account, kind, start, end))
        return int(rows[0][0])

    def cdn_unfinished(self, account: str, kind: str, start: float, end: float
                       ) -> list[tuple[float, str, float, str]]:
        return [(c, u, s, st) for c, u, s, st in self._query(
            f"SELECT create_ts, url, updated_ts, status FROM cdn_tasks WHERE account=? AND kind=? AND "
            f"{_UNFINISHED_SQL} AND create_ts BETWEEN ? AND ? ORDER BY create_ts", (account, kind, start, end))]

    def cdn_rows(self, account: str, kind: str, start: float, end: float) -> list[tuple[float, str, str]]:
        return [(c, u, st) for c, u, st in self._query(
            "SELECT create_ts, url, status FROM cdn_tasks WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ? "
            "AND status IS NOT NULL", (account, kind, start, end))]

    def cdn_task_count(self, account: str | None, kind: str | None) -> int:
        sql, args = "SELECT count(*) FROM cdn_tasks WHERE 1=1", []
        if account is not None:
            sql += " AND account = ?"
            args.append(account)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        return int(self._query(sql, args)[0][0])

    def cdn_counts_by_status(self, account: str, kind: str, start: float, end: float) -> dict[str, int]:
        rows = self._query(
            "SELECT status, count(*) FROM cdn_tasks WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ? "
            "GROUP BY status", (account, kind, start, end))
        return {s: n for s, n in rows}

    def prune_cdn(self, before: float) -> int:
        return self._write("DELETE FROM cdn_tasks WHERE create_ts < ?", (before,))

    # ------------------------------------------------------------------ Fmgr
    def fmgr_edge_task_rows(self, after: float, until: float) -> list[tuple[float, int | None]]:
        return self._read(
            "SELECT first_seen, code FROM fmgr_tasks INDEXED BY fmgr_tasks_window "
            "WHERE first_seen > ? AND first_seen <= ? AND first_seen IS NOT NULL", (after, until))

    def fmgr_edge_item_rows(self, after: float, until: float) -> list[tuple[float, str, int | None]]:
        return self._read(
            "SELECT t.first_seen, i.op, i.code FROM fmgr_tasks t INDEXED BY fmgr_tasks_window "
            "JOIN fmgr_items i ON i.task_id = t.id "
            "WHERE t.first_seen > ? AND t.first_seen <= ? AND t.first_seen IS NOT NULL", (after, until))

    def fmgr_due(self, now: float, limit: int) -> list[str]:
        return [r[0] for r in self._query(
            f"SELECT id FROM fmgr_tasks WHERE {_DUE_SQL} AND next_poll <= ? ORDER BY next_poll LIMIT ?",
            (now, limit))]

    def fmgr_next_due(self) -> float | None:
        rows = self._query(f"SELECT min(next_poll) FROM fmgr_tasks WHERE {_DUE_SQL}")
        return rows[0][0] if rows else None

    def fmgr_count_pending(self) -> int:
        return int(self._query(f"SELECT count(*) FROM fmgr_tasks WHERE {_PENDING_SQL}")[0][0])

    def fmgr_oldest_pending(self) -> float | None:
        rows = self._read(f"SELECT min(first_seen) FROM fmgr_tasks WHERE {_PENDING_SQL}", ())
        return rows[0][0] if rows else None

    def fmgr_count_unknown(self) -> int:
        # Among the tasks still polled (the due index), those whose last poll was answered "not found".
        rows = self._read(f"SELECT count(*) FROM fmgr_tasks WHERE {_DUE_SQL} AND last_error LIKE ?", ("not_found%",))
        return int(rows[0][0]) if rows else 0

    def abandon_old_fmgr(self, before: float) -> int:
        with self._lock:
            cur = self._conn.execute(
                "UPDATE fmgr_tasks SET abandoned = 1 WHERE abandoned = 0 AND first_seen < ? AND final_seen IS NULL",
                (before,))
            self._conn.execute(
                "UPDATE fmgr_tasks SET confirmed = 1 WHERE confirmed = 0 AND first_seen < ? AND final_seen IS NOT NULL",
                (before,))
            return cur.rowcount

    def fmgr_task_rows_for_api(self, where: StateFilter, limit: int, task_id: str | None) -> list[FmgrApiRow]:
        conds, args = _conditions(where)
        if task_id is not None:
            conds, args = [*conds, "id = ?"], [*args, task_id]
        sql = ("SELECT id, first_seen, final_seen, code, source, last_polled, confirmed, abandoned, errors, "
               "last_error FROM fmgr_tasks" + (" WHERE " + " AND ".join(conds) if conds else "")
               + " ORDER BY first_seen DESC LIMIT ?")
        return [FmgrApiRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), bool(r[7]), r[8], r[9])
                for r in self._query(sql, (*args, limit))]

    def prune_fmgr(self, before: float, keep: Sequence[str]) -> int:
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
        return len(ids)


def _conditions(where: StateFilter) -> tuple[list[str], list[Any]]:
    if where.nothing:
        return ["0"], []
    conds: list[str] = []
    args: list[Any] = []
    if where.abandoned is not None:
        conds.append("abandoned = 1" if where.abandoned else "abandoned = 0")
    if where.unknown:
        conds.append("code IS NULL")
    if where.codes_in is not None:
        conds.append(f"code IN ({','.join('?' * len(where.codes_in))})")
        args.extend(where.codes_in)
    if where.codes_not_in is not None:
        conds.extend(["code IS NOT NULL", f"code NOT IN ({','.join('?' * len(where.codes_not_in))})"])
        args.extend(where.codes_not_in)
    if where.pending is not None:
        conds.append(_PENDING_SQL if where.pending else f"NOT ({_PENDING_SQL})")  # as fmgr_count_pending
    return conds, args
