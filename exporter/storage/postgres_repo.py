"""The PostgreSQL backend of ``sql_repo.SqlRepository``: its dialect, connections and transactions, and the
replicas' leases and change log.

Its answers are those of the SQLite backend (the reference), on the same tables. The differences are the
database's, not the exporter's:

* Connections come from a small ``psycopg_pool.ConnectionPool`` in autocommit mode; a write transaction is an
  explicit ``conn.transaction()``. Each connection is checked when it is handed out, so connections the
  server dropped (a restart, ``pg_terminate_backend``, a failover) are replaced instead of failing a write.
* Writes are serialised inside the process by one lock, as SQLite's single writer connection does: a
  transaction reads rows and then writes what follows from them (a task's old status, a notification's dedup
  key), and the in-memory aggregates apply the deltas computed from those reads after the commit, so two
  transactions of this process must not interleave. Reads take no lock and never wait for a writer (MVCC).
* Timestamps are ``DOUBLE PRECISION`` (unix seconds, as SQLite's ``REAL``), codes and sizes ``BIGINT`` (the
  wire accepts integers up to 2**53, as SQLite's 64-bit integers hold), flags ``BOOLEAN``.
* PostgreSQL text cannot hold NUL characters, which SQLite stores: free text from the vendor (URLs, item
  operations, error messages) has them replaced, consistently on every read and write, so such a row is
  stored and found again instead of failing its whole transaction.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from exporter.polling.leases import Fence, Grant, LeaseLost
from exporter.storage.model import Loaded
from exporter.storage.sql_repo import Dialect, SqlRepository, SqlTransaction

log = logging.getLogger(__name__)

# Serialises schema creation between processes that start at once against an empty database: concurrent
# CREATE TABLE IF NOT EXISTS of the same table can fail on PostgreSQL's catalog unique indexes.
_SCHEMA_LOCK_KEY = 0x63646E78  # "cdnx"
# Serialises write transactions between replicas, as SQLite's single writer does within one: a transaction
# reads rows and writes what follows from them (a task's old status, a notification's dedup key), and the
# change log's sequence numbers must follow commit order. Held from a transaction's first statement to its end.
WRITE_LOCK_KEY = 0x63646E77  # "cdnw"
_NOW = "extract(epoch from clock_timestamp())"  # the database's clock: replicas' clocks never compare

# Connection settings used unless the URL says otherwise: a refused or unreachable server fails a connection
# attempt in seconds, and a peer that vanished without closing is noticed within about a minute, idle (TCP
# keepalives) or not (unacknowledged data).
CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "tcp_user_timeout": 30000,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "application_name": "cdnetworks-exporter",
}


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or as a ``password`` parameter) replaced by ``***``, for
    logs, errors and ``Repository.path``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    user, at, hosts = netloc.rpartition("@")
    if at and ":" in user:
        netloc = user.split(":", 1)[0] + ":***@" + hosts
    query = re.sub(r"(^|&)(password=)[^&]*", r"\1\2***", parts.query, flags=re.IGNORECASE)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def pg_text(value: str) -> str:
    """Vendor text as PostgreSQL can store it (no NUL)."""
    return value.replace("\x00", "\ufffd")


@functools.lru_cache(maxsize=512)
def _format_placeholders(text: str) -> str:
    return text.replace("%", "%%").replace("?", "%s")


class PostgresDialect(Dialect):
    real = "DOUBLE PRECISION"
    bigint = "BIGINT"
    boolean = "BOOLEAN"
    true = "TRUE"
    false = "FALSE"
    table_options = ""
    row_lock = " FOR UPDATE"  # the transaction's later writes follow from what it read
    serial = "BIGSERIAL"
    window_indexes = """\
-- A window's partial edge minutes and the planner's range counts: index-only range reads. PostgreSQL keeps
-- statistics, so unlike SQLite this index needs no always-true condition to stay off the other queries.
CREATE INDEX IF NOT EXISTS cdn_tasks_window ON cdn_tasks (account, kind, create_ts) INCLUDE (status, rate);
CREATE INDEX IF NOT EXISTS fmgr_tasks_window ON fmgr_tasks (first_seen) INCLUDE (code, id);
"""
    own_tables = """\
-- Replicas: which one runs each poller (exporter/polling/leases.py), and the in-memory changes of every transaction,
-- in commit order, for the other replicas to apply (store.py).
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, generation BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY, origin TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, payload TEXT NOT NULL
);
"""

    def sql(self, text: str) -> str:
        return _format_placeholders(text)  # psycopg takes %s placeholders

    def contains(self, column: str) -> str:
        return f"strpos({column}, ?) > 0"

    def flag(self, column: str, value: bool) -> str:
        return column if value else f"NOT {column}"

    def insert_ignore(self, into: str, values: str, key: str) -> str:
        return f"INSERT INTO {into} {values} ON CONFLICT ({key}) DO NOTHING"

    def among(self, column: str, values: Sequence[Any], *, negate: bool = False,
              array_type: str | None = None) -> tuple[str, list[Any]]:
        cast = f"::{array_type}[]" if array_type else ""
        return f"{column} {'<> ALL' if negate else '= ANY'}(?{cast})", [list(values)]

    def text(self, value: str) -> str:
        return pg_text(value)


POSTGRES = PostgresDialect()
SCHEMA = POSTGRES.schema()


class _Tx(SqlTransaction[psycopg.Connection[Any]]):
    """``repository.Transaction`` on one pooled connection, inside ``conn.transaction()``."""

    dialect = POSTGRES

    def check_fence(self, fence: Fence) -> None:
        # FOR SHARE keeps a rival's takeover (an UPDATE of this row) waiting until this transaction ends.
        row = self._c.execute("SELECT holder, generation FROM leases WHERE name = %s FOR SHARE",
                              (fence.name,)).fetchone()
        if row is None or (row[0], row[1]) != (fence.holder, fence.generation):
            raise LeaseLost(f"lease {fence.name} has moved to another replica")

    def log_change(self, origin: str, payload: str) -> None:
        self._c.execute(f"INSERT INTO changes (origin, ts, payload) VALUES (%s, {_NOW}, %s)", (origin, payload))

    def prune_changes(self, before: float) -> None:
        """Forget old changes, and remember the newest one forgotten: a replica that had not read it rebuilds."""
        rows = self._c.execute("DELETE FROM changes WHERE ts < %s RETURNING seq", (before,)).fetchall()
        if rows:
            self._c.execute(
                "INSERT INTO meta VALUES ('changes_pruned_through', %s) ON CONFLICT (key) DO UPDATE SET "
                "value = greatest(meta.value::bigint, excluded.value::bigint)::text", (str(max(r[0] for r in rows)),))


class PostgresRepository(SqlRepository[psycopg.Connection[Any]]):
    """``repository.Repository`` on a PostgreSQL database given by a ``postgresql://`` URL; several exporters
    (replicas) may share it.

    ``timeout`` bounds, in seconds, the wait for a working connection: at start, and for each operation while
    the server does not answer (an operation then raises ``psycopg.OperationalError``), as SQLite's busy
    timeout does. ``probe_timeout`` bounds ``ping`` and ``write_health``, which answer readiness probes (within
    the probes' own timeout). ``reconnect_timeout``: how long the pool retries, with growing delays, to replace
    a lost connection before it leaves the next attempt to the next operation; short, so that the first
    operations after an outage do not wait out a long retry delay."""

    dialect = POSTGRES

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 4, timeout: float = 5.0,
                 probe_timeout: float = 3.0, reconnect_timeout: float = 10.0, password: str | None = None) -> None:
        self.shared = True
        scheme, sep, rest = url.partition("://")
        url = scheme.lower() + sep + rest  # libpq knows the scheme in lower case only; URL schemes ignore case
        self.path = mask_url(url)
        self._probe_timeout = probe_timeout
        self._lock = threading.RLock()  # the one writer of this process, as sqlite_repo's write connection
        self._closed = False
        self._write_error: str | None = None  # why the last write transaction failed; None after a commit
        params = {**CONNECT_DEFAULTS, **conninfo_to_dict(url), **({"password": password} if password else {})}
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            make_conninfo("", **params), min_size=min_size, max_size=max_size, timeout=timeout,
            kwargs={"autocommit": True}, check=ConnectionPool.check_connection, open=False,
            reconnect_timeout=reconnect_timeout, name="cdnetworks-store")
        try:
            self._pool.open(wait=True, timeout=timeout)
            self._create_schema()
        except psycopg.Error as exc:
            self._pool.close()
            # RuntimeError, as the refusal of a newer schema: start-up reports it and exits 1.
            raise RuntimeError(f"{self.path}: cannot use the database: {exc}") from exc
        except BaseException:
            self._pool.close()
            raise

    # ------------------------------------------------------------------ lifecycle
    def _create_schema(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
            conn.execute(SCHEMA)
            self._check_schema_version(conn)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._pool.close()

    def ping(self) -> bool:
        """True when the database answers (for /readyz)."""
        if self._closed:
            return False
        try:
            with self._pool.connection(timeout=self._probe_timeout) as conn:
                conn.execute("SELECT 1").fetchone()
            return True
        except psycopg.Error as exc:
            log.warning("store ping failed: %s", exc)
            return False

    def write_health(self) -> tuple[bool, str]:
        """(True, "") when a write can be expected to work, else (False, why): for /readyz."""
        if self._closed:
            return False, "store is closed"
        try:
            with self._pool.connection(timeout=self._probe_timeout) as conn:
                row = conn.execute("SELECT current_setting('transaction_read_only')").fetchone()
        except psycopg.Error as exc:
            return False, f"store: {exc}"
        if row is not None and row[0] == "on":  # a hot standby, or default_transaction_read_only
            return False, "store: the database accepts no writes (read-only)"
        error = self._write_error
        if error is not None:
            return False, f"store: last write failed: {error}"
        return True, ""

    @contextmanager
    def transaction(self) -> Iterator[_Tx]:
        with self._lock:
            try:
                with self._pool.connection() as conn, conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                    yield _Tx(conn)
            except psycopg.Error as exc:
                self._write_error = str(exc)
                raise
            self._write_error = None

    def _write(self, sql: str, args: Sequence[Any]) -> int:
        with self._lock, self._pool.connection() as conn:
            return self._run(conn, sql, args).rowcount

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """A read: sees every committed write, never waits for a write transaction."""
        with self._pool.connection() as conn:
            return self._run(conn, sql, args).fetchall()

    def _read(self, sql: str, args: Sequence[Any]) -> list[Any]:
        return self._query(sql, args)

    def _browse(self, sql: str, args: Sequence[Any]) -> list[Any]:
        return self._query(sql, args)  # a connection of the pool, as any read

    @contextmanager
    def _maintenance(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock, self._pool.connection() as conn:
            yield conn

    def _unit(self, conn: psycopg.Connection[Any]) -> AbstractContextManager[object]:
        return conn.transaction()

    # ------------------------------------------------------------------ state and rebuild
    def load(self) -> Loaded:
        # One snapshot for every table and the change log's end: changes after it are applied on top.
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            seq = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
            return self._loaded(lambda sql: self._run(conn, sql).fetchall(), int(seq[0]) if seq else 0)

    def changes_since(self, seq: int) -> tuple[list[tuple[int, str, str]], bool]:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = conn.execute("SELECT value FROM meta WHERE key = 'changes_pruned_through'").fetchone()
            if row is not None and int(row[0]) > seq:
                return [], False
            rows = conn.execute("SELECT seq, origin, payload FROM changes WHERE seq > %s ORDER BY seq",
                                (seq,)).fetchall()
        return [(int(q), o, p) for q, o, p in rows], True

    def prune_changes(self, before: float) -> None:
        with self.transaction() as tx:
            tx.prune_changes(before)

    def lease_acquire(self, name: str, holder: str, ttl: float) -> Grant | None:
        """Renew ``name`` for ``holder``, or take it when it is free or expired (a new generation)."""
        with self._pool.connection() as conn:
            row = conn.execute(
                f"INSERT INTO leases VALUES (%(n)s, %(h)s, 1, {_NOW} + %(ttl)s) ON CONFLICT (name) DO UPDATE SET "
                "holder = excluded.holder, expires_at = excluded.expires_at, generation = leases.generation + "
                "CASE WHEN leases.holder = excluded.holder THEN 0 ELSE 1 END "
                f"WHERE leases.holder = excluded.holder OR leases.expires_at < {_NOW} RETURNING generation",
                {"n": name, "h": holder, "ttl": ttl}).fetchone()
        return None if row is None else Grant(int(row[0]))

    def lease_release(self, name: str, holder: str) -> None:
        with self._pool.connection() as conn:
            conn.execute("UPDATE leases SET expires_at = 0 WHERE name = %s AND holder = %s", (name, holder))
