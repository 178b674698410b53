"""The SQLite backend of ``sql_repo.SqlRepository``: its dialect, its connections and transactions.

One SQLite file serves one exporter: there are no leases to take (every poller runs here) and no change log.
Writes go through one connection guarded by a lock. Reads on the scrape path (a window's edge minutes, the
oldest unfinished task, the oldest pending Fmgr task) use a second connection with a lock of its own, so a
scrape never waits behind a write transaction: WAL mode lets it read the last committed state meanwhile.
WAL with ``synchronous=NORMAL`` makes every committed transaction survive a crash of the process (kill -9);
only an OS crash or power loss can lose the last commits.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from exporter.polling.leases import Fence, Grant
from exporter.storage.model import Loaded
from exporter.storage.sql_repo import Dialect, SqlRepository, SqlTransaction

log = logging.getLogger(__name__)


class SqliteDialect(Dialect):
    real = "REAL"
    bigint = "INTEGER"  # 64 bits
    boolean = "INTEGER"  # 0 or 1
    true = "1"
    false = "0"
    table_options = " WITHOUT ROWID"
    row_lock = ""  # the write transaction (BEGIN IMMEDIATE) excludes every other writer already
    serial = "INTEGER"  # as the primary key: the rowid, numbered by SQLite
    window_indexes = """\
-- The exact count of a window's partial edge minutes (and the planner's range counts): a range seek that
-- reads only the index. Its condition holds for every row; queries use it only by repeating it, so it cannot
-- take over the queries the narrower indexes serve (without statistics SQLite would prefer it for the oldest
-- unfinished task and scan every finished one since then).
CREATE INDEX IF NOT EXISTS cdn_tasks_window ON cdn_tasks (account, kind, create_ts, status, rate)
    WHERE status IS NOT NULL;
-- The windows' edge minutes, as cdn_tasks_window (and kept off the pending queries the same way).
CREATE INDEX IF NOT EXISTS fmgr_tasks_window ON fmgr_tasks (first_seen, code, id) WHERE first_seen IS NOT NULL;
"""

    def sql(self, text: str) -> str:
        return text  # sqlite3 takes ? placeholders

    def contains(self, column: str) -> str:
        return f"instr({column}, ?) > 0"

    def flag(self, column: str, value: bool) -> str:
        return f"{column} = {1 if value else 0}"

    def insert_ignore(self, into: str, values: str, key: str) -> str:
        return f"INSERT OR IGNORE INTO {into} {values}"

    def among(self, column: str, values: Sequence[Any], *, negate: bool = False,
              array_type: str | None = None) -> tuple[str, list[Any]]:
        return f"{column} {'NOT IN' if negate else 'IN'} ({','.join('?' * len(values))})", list(values)

    def indexed_by(self, index: str) -> str:
        # Without statistics, SQLite would not pick the windows' indexes for their queries.
        return f" INDEXED BY {index}"

    def window_condition(self, condition: str) -> str:
        return f" AND {condition}"  # SQLite uses a partial index only for a query that implies its condition


SQLITE = SqliteDialect()
SCHEMA = SQLITE.schema()


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


class _Tx(SqlTransaction[sqlite3.Connection]):
    """``repository.Transaction`` on the write connection, inside BEGIN IMMEDIATE ... COMMIT."""

    dialect = SQLITE

    def check_fence(self, fence: Fence) -> None:
        """One SQLite file serves one exporter, which runs every poller: there is no rival to fence off."""

    def log_change(self, origin: str, payload: str) -> None:
        raise NotImplementedError("an SQLite store is not shared between replicas")


class SqliteRepository(SqlRepository[sqlite3.Connection]):
    dialect = SQLITE
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
        self._check_schema_version(conn)
        # An in-memory database exists once per connection: it has to read through the writer's.
        self._rconn = self._conn if self.path == ":memory:" else _connect(self.path)
        self._rlock = self._lock if self.path == ":memory:" else threading.RLock()
        # The task browser's reads: a third connection, opened at the first page, so that a page never holds
        # the scrape reader's lock (nor the writer's).
        self._bconn: sqlite3.Connection | None = self._conn if self.path == ":memory:" else None
        self._block = self._lock if self.path == ":memory:" else threading.RLock()
        self._closed = False
        self._write_error: str | None = None  # why the last write failed; None after a commit
        self._identity = self._file_identity()

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock, self._rlock if self._rlock is not self._lock else nullcontext():
            if not self._closed:
                self._closed = True
                self._conn.close()
                if self._rconn is not self._conn:
                    self._rconn.close()
            with self._block:
                if self._bconn is not None and self._bconn is not self._conn:
                    self._bconn.close()
                self._bconn = None

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

    def _browse(self, sql: str, args: Sequence[Any]) -> list[Any]:
        with self._block:
            if self._closed:
                raise sqlite3.ProgrammingError("store is closed")
            if self._bconn is None:
                self._bconn = _connect(self.path)
            return self._bconn.execute(sql, args).fetchall()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """A read on the writer connection: sees this process's writes in order with them (planning)."""
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    @contextmanager
    def _maintenance(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def _unit(self, conn: sqlite3.Connection) -> AbstractContextManager[object]:
        return nullcontext()  # each statement commits by itself: the writer's lock is held throughout

    # ------------------------------------------------------------------ state and rebuild
    def load(self) -> Loaded:
        with self._lock:  # the writer's lock: no commit lands between these reads
            return self._loaded(self._query, 0)

    def changes_since(self, seq: int) -> tuple[list[tuple[int, str, str]], bool]:
        return [], True  # nobody else writes here

    def prune_changes(self, before: float) -> None:
        return None

    def lease_acquire(self, name: str, holder: str, ttl: float) -> Grant | None:
        return Grant(1)  # the only exporter on this file runs every poller

    def lease_release(self, name: str, holder: str) -> None:
        return None
