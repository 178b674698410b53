"""The PostgreSQL implementation of ``repository.Repository``: schema, migrations, transactions, queries.

Its answers are those of ``sqlite_repo.py`` (the reference), on the same tables. The differences are the
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

import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from .leases import Fence, Grant, LeaseLost
from .repository import CDN_UNFINISHED, CdnTask, FmgrApiRow, FmgrItemRow, FmgrTaskRow, Loaded, StateFilter

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cdn_tasks (
    account TEXT NOT NULL, kind TEXT NOT NULL, url TEXT NOT NULL, create_ts DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL, begin_ts DOUBLE PRECISION, finish_ts DOUBLE PRECISION, rate DOUBLE PRECISION,
    updated_ts DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (account, kind, url, create_ts)
);
CREATE INDEX IF NOT EXISTS cdn_tasks_unfinished ON cdn_tasks (account, kind, create_ts)
    WHERE status IN ('wait', 'run', 'unknown');
CREATE INDEX IF NOT EXISTS cdn_tasks_created ON cdn_tasks (create_ts);
-- A window's partial edge minutes and the planner's range counts: index-only range reads. PostgreSQL keeps
-- statistics, so unlike SQLite this index needs no always-true condition to stay off the other queries.
CREATE INDEX IF NOT EXISTS cdn_tasks_window ON cdn_tasks (account, kind, create_ts) INCLUDE (status, rate);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value DOUBLE PRECISION NOT NULL, PRIMARY KEY (name, labels)
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fmgr_tasks (
    id TEXT PRIMARY KEY, first_seen DOUBLE PRECISION NOT NULL, final_seen DOUBLE PRECISION, code BIGINT,
    source TEXT NOT NULL, last_polled DOUBLE PRECISION, next_poll DOUBLE PRECISION NOT NULL,
    confirmed BOOLEAN NOT NULL DEFAULT FALSE, abandoned BOOLEAN NOT NULL DEFAULT FALSE,
    errors INTEGER NOT NULL DEFAULT 0, last_error TEXT, updated_ts DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS fmgr_tasks_due ON fmgr_tasks (next_poll)
    WHERE (final_seen IS NULL OR NOT confirmed) AND NOT abandoned;
CREATE INDEX IF NOT EXISTS fmgr_tasks_pending ON fmgr_tasks (first_seen)
    WHERE final_seen IS NULL AND NOT abandoned;
CREATE INDEX IF NOT EXISTS fmgr_tasks_window ON fmgr_tasks (first_seen) INCLUDE (code, id);
CREATE TABLE IF NOT EXISTS fmgr_items (
    task_id TEXT NOT NULL, idx INTEGER NOT NULL, op TEXT NOT NULL, code BIGINT, fsize BIGINT,
    PRIMARY KEY (task_id, idx)
);
CREATE TABLE IF NOT EXISTS fmgr_notifications (
    dedup_key TEXT PRIMARY KEY, task_id TEXT NOT NULL, received_ts DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS fmgr_notifications_received ON fmgr_notifications (received_ts);
CREATE INDEX IF NOT EXISTS fmgr_notifications_task ON fmgr_notifications (task_id);
-- Replicas: which one runs each poller (exporter/leases.py), and the in-memory changes of every transaction,
-- in commit order, for the other replicas to apply (store.py).
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, generation BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    seq BIGSERIAL PRIMARY KEY, origin TEXT NOT NULL, ts DOUBLE PRECISION NOT NULL, payload TEXT NOT NULL
);
"""

# Serialises schema creation between processes that start at once against an empty database: concurrent
# CREATE TABLE IF NOT EXISTS of the same table can fail on PostgreSQL's catalog unique indexes.
_SCHEMA_LOCK_KEY = 0x63646E78  # "cdnx"
# Serialises write transactions between replicas, as SQLite's single writer does within one: a transaction
# reads rows and writes what follows from them (a task's old status, a notification's dedup key), and the
# change log's sequence numbers must follow commit order. Held from a transaction's first statement to its end.
WRITE_LOCK_KEY = 0x63646E77  # "cdnw"
_NOW = "extract(epoch from clock_timestamp())"  # the database's clock: replicas' clocks never compare

# Conditions written exactly as in the partial indexes' definitions, so that the planner matches them.
_UNFINISHED_SQL = "status IN (" + ",".join(f"'{s}'" for s in CDN_UNFINISHED) + ")"
_PENDING_SQL = "final_seen IS NULL AND NOT abandoned"
_DUE_SQL = "(final_seen IS NULL OR NOT confirmed) AND NOT abandoned"

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

_PRUNE_CHUNK = 500


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


def _opt_text(value: str | None) -> str | None:
    return None if value is None else pg_text(value)


class _Tx:
    """``repository.Transaction`` on one pooled connection, inside ``conn.transaction()``."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._c = conn

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

    def set_state(self, key: str, value: Any) -> None:
        self._c.execute("INSERT INTO state VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (key, json.dumps(value)))

    def cdn_mark_checked(self, account: str, kind: str, start: float, end: float, ts: float,
                         url: str | None) -> None:
        sql = (f"UPDATE cdn_tasks SET updated_ts=%s WHERE account=%s AND kind=%s AND create_ts BETWEEN %s AND %s "
               f"AND {_UNFINISHED_SQL}")
        args: list[Any] = [ts, account, kind, start, end]
        if url is not None:
            sql += " AND url=%s"
            args.append(pg_text(url))
        self._c.execute(sql, args)

    def fmgr_poll_failed(self, task_id: str, error: str, next_poll: float, give_up: bool, ts: float) -> bool:
        row = self._c.execute("SELECT final_seen, abandoned FROM fmgr_tasks WHERE id = %s FOR UPDATE",
                              (task_id,)).fetchone()
        self._c.execute(
            "UPDATE fmgr_tasks SET errors = errors + 1, last_error = %s, next_poll = %s, "
            "abandoned = abandoned OR %s, last_polled = %s WHERE id = %s",
            (pg_text(error[:200]), next_poll, bool(give_up), ts, task_id))
        return give_up and row is not None and row[0] is None and not row[1]

    def add_counters(self, increments: Iterable[tuple[str, str, float]]) -> None:
        rows = list(increments)
        if not rows:
            return
        with self._c.cursor() as cur:
            cur.executemany(
                "INSERT INTO counters VALUES (%s, %s, %s) "
                "ON CONFLICT (name, labels) DO UPDATE SET value = counters.value + excluded.value", rows)

    def cdn_get(self, account: str, kind: str, url: str, create_ts: float) -> tuple[str, float | None] | None:
        row = self._c.execute(
            "SELECT status, rate FROM cdn_tasks WHERE account=%s AND kind=%s AND url=%s AND create_ts=%s",
            (account, kind, pg_text(url), create_ts)).fetchone()
        return None if row is None else (row[0], row[1])

    def cdn_touch(self, account: str, kind: str, url: str, create_ts: float, ts: float) -> None:
        self._c.execute(
            "UPDATE cdn_tasks SET updated_ts=%s WHERE account=%s AND kind=%s AND url=%s AND create_ts=%s",
            (ts, account, kind, pg_text(url), create_ts))

    def cdn_put(self, account: str, kind: str, task: CdnTask, ts: float) -> None:
        self._c.execute(
            "INSERT INTO cdn_tasks VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (account, kind, url, create_ts) DO UPDATE SET status=excluded.status, "
            "begin_ts=excluded.begin_ts, finish_ts=excluded.finish_ts, rate=excluded.rate, "
            "updated_ts=excluded.updated_ts",
            (account, kind, pg_text(task.url), task.create_ts, task.status, task.begin_ts, task.finish_ts,
             task.rate, ts))

    def fmgr_register(self, task_id: str, ts: float, source: str) -> bool:
        cur = self._c.execute(
            "INSERT INTO fmgr_tasks (id, first_seen, source, next_poll, updated_ts) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING", (task_id, ts, source, ts, ts))
        return cur.rowcount != 0

    def fmgr_get(self, task_id: str) -> FmgrTaskRow | None:
        row = self._c.execute(
            "SELECT first_seen, final_seen, code, confirmed, abandoned, next_poll, last_polled FROM fmgr_tasks "
            "WHERE id = %s",
            (task_id,)).fetchone()
        return None if row is None else FmgrTaskRow(row[0], row[1], row[2], bool(row[3]), bool(row[4]), row[5],
                                                    row[6])

    def fmgr_was_notified(self, task_id: str) -> bool:
        return self._c.execute("SELECT 1 FROM fmgr_notifications WHERE task_id = %s LIMIT 1",
                               (task_id,)).fetchone() is not None

    def fmgr_insert(self, task_id: str, first_seen: float, source: str, code: int | None,
                    final_seen: float | None, confirmed: bool, ts: float, last_polled: float | None,
                    next_poll: float) -> None:
        self._c.execute(
            "INSERT INTO fmgr_tasks (code, final_seen, confirmed, updated_ts, last_polled, next_poll, id, "
            "first_seen, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (code, final_seen, confirmed, ts, last_polled, next_poll, task_id, first_seen, source))

    def fmgr_update(self, task_id: str, code: int | None, final_seen: float | None, confirmed: bool, ts: float,
                    last_polled: float | None, next_poll: float) -> None:
        self._c.execute(
            "UPDATE fmgr_tasks SET code=%s, final_seen=%s, confirmed=%s, updated_ts=%s, "
            "last_polled=coalesce(%s::double precision, last_polled), next_poll=%s, errors=0, last_error=NULL "
            "WHERE id=%s",
            (code, final_seen, confirmed, ts, last_polled, next_poll, task_id))

    def fmgr_items(self, task_id: str) -> dict[int, FmgrItemRow]:
        return {idx: FmgrItemRow(op, code, fsize) for idx, op, code, fsize in self._c.execute(
            "SELECT idx, op, code, fsize FROM fmgr_items WHERE task_id = %s", (task_id,))}

    def fmgr_put_item(self, task_id: str, idx: int, item: FmgrItemRow) -> None:
        self._c.execute(
            "INSERT INTO fmgr_items VALUES (%s, %s, %s, %s, %s) ON CONFLICT (task_id, idx) DO UPDATE SET "
            "op=excluded.op, code=excluded.code, fsize=excluded.fsize",
            (task_id, idx, _opt_text(item.op), item.code, item.fsize))

    def notification_add(self, dedup_key: str, task_id: str, ts: float) -> bool:
        cur = self._c.execute(
            "INSERT INTO fmgr_notifications VALUES (%s, %s, %s) ON CONFLICT (dedup_key) DO NOTHING",
            (dedup_key, task_id, ts))
        return cur.rowcount != 0


class PostgresRepository:
    """``repository.Repository`` on a PostgreSQL database given by a ``postgresql://`` URL; several exporters
    (replicas) may share it.

    ``timeout`` bounds, in seconds, the wait for a working connection: at start, and for each operation while
    the server does not answer (an operation then raises ``psycopg.OperationalError``), as SQLite's busy
    timeout does. ``probe_timeout`` bounds ``ping`` and ``write_health``, which answer readiness probes (within
    the probes' own timeout). ``reconnect_timeout``: how long the pool retries, with growing delays, to replace
    a lost connection before it leaves the next attempt to the next operation; short, so that the first
    operations after an outage do not wait out a long retry delay."""

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
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: schema version {row[0]} is newer than this exporter understands "
                    f"({SCHEMA_VERSION})")

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
        """One statement outside a transaction (autocommit); its row count."""
        with self._lock, self._pool.connection() as conn:
            return conn.execute(sql, args).rowcount

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """A read: sees every committed write, never waits for a write transaction."""
        with self._pool.connection() as conn:
            return conn.execute(sql, args).fetchall()

    # ------------------------------------------------------------------ state and rebuild
    def get_state(self, key: str) -> Any:
        rows = self._query("SELECT value FROM state WHERE key = %s", (key,))
        return json.loads(rows[0][0]) if rows else None

    def load(self) -> Loaded:
        # One snapshot for every table and the change log's end: changes after it are applied on top.
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            seq = conn.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()
            return Loaded(
                conn.execute("SELECT name, labels, value FROM counters").fetchall(),
                conn.execute("SELECT account, kind, create_ts, status, rate FROM cdn_tasks").fetchall(),
                conn.execute("SELECT first_seen, code FROM fmgr_tasks").fetchall(),
                conn.execute("SELECT t.first_seen, i.op, i.code FROM fmgr_items i "
                             "JOIN fmgr_tasks t ON t.id = i.task_id").fetchall(),
                int(conn.execute(f"SELECT count(*) FROM fmgr_tasks WHERE {_PENDING_SQL}").fetchone()[0]),  # type: ignore[index]
                int(seq[0]) if seq else 0)

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

    # ------------------------------------------------------------------ CDN
    def cdn_edge_rows(self, account: str, kind: str, after: float, until: float
                      ) -> list[tuple[float, str, float | None]]:
        return self._query(
            "SELECT create_ts, status, rate FROM cdn_tasks "
            "WHERE account=%s AND kind=%s AND create_ts > %s AND create_ts <= %s", (account, kind, after, until))

    def cdn_oldest_unfinished(self, account: str, kind: str, since: float | None) -> float | None:
        rows = self._query(
            f"SELECT min(create_ts) FROM cdn_tasks WHERE account=%s AND kind=%s AND {_UNFINISHED_SQL} "
            "AND create_ts >= %s", (account, kind, since if since is not None else float("-inf")))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def cdn_range_count(self, account: str, kind: str, start: float, end: float) -> int:
        rows = self._query(
            "SELECT count(*) FROM cdn_tasks WHERE account=%s AND kind=%s AND create_ts BETWEEN %s AND %s",
            (account, kind, start, end))
        return int(rows[0][0])

    def cdn_unfinished(self, account: str, kind: str, start: float, end: float
                       ) -> list[tuple[float, str, float, str]]:
        return [(c, u, s, st) for c, u, s, st in self._query(
            f"SELECT create_ts, url, updated_ts, status FROM cdn_tasks WHERE account=%s AND kind=%s AND "
            f"{_UNFINISHED_SQL} AND create_ts BETWEEN %s AND %s ORDER BY create_ts", (account, kind, start, end))]

    def cdn_rows(self, account: str, kind: str, start: float, end: float) -> list[tuple[float, str, str]]:
        return [(c, u, st) for c, u, st in self._query(
            "SELECT create_ts, url, status FROM cdn_tasks WHERE account=%s AND kind=%s "
            "AND create_ts BETWEEN %s AND %s AND status IS NOT NULL", (account, kind, start, end))]

    def cdn_task_count(self, account: str | None, kind: str | None) -> int:
        sql, args = "SELECT count(*) FROM cdn_tasks WHERE TRUE", []
        if account is not None:
            sql += " AND account = %s"
            args.append(account)
        if kind is not None:
            sql += " AND kind = %s"
            args.append(kind)
        return int(self._query(sql, args)[0][0])

    def cdn_counts_by_status(self, account: str, kind: str, start: float, end: float) -> dict[str, int]:
        rows = self._query(
            "SELECT status, count(*) FROM cdn_tasks WHERE account=%s AND kind=%s AND create_ts BETWEEN %s AND %s "
            "GROUP BY status", (account, kind, start, end))
        return {s: n for s, n in rows}

    def prune_cdn(self, before: float) -> int:
        return self._write("DELETE FROM cdn_tasks WHERE create_ts < %s", (before,))

    # ------------------------------------------------------------------ Fmgr
    def fmgr_edge_task_rows(self, after: float, until: float) -> list[tuple[float, int | None]]:
        return self._query(
            "SELECT first_seen, code FROM fmgr_tasks WHERE first_seen > %s AND first_seen <= %s", (after, until))

    def fmgr_edge_item_rows(self, after: float, until: float) -> list[tuple[float, str, int | None]]:
        return self._query(
            "SELECT t.first_seen, i.op, i.code FROM fmgr_tasks t JOIN fmgr_items i ON i.task_id = t.id "
            "WHERE t.first_seen > %s AND t.first_seen <= %s", (after, until))

    def fmgr_due(self, now: float, limit: int) -> list[str]:
        return [r[0] for r in self._query(
            f"SELECT id FROM fmgr_tasks WHERE {_DUE_SQL} AND next_poll <= %s ORDER BY next_poll LIMIT %s",
            (now, limit))]

    def fmgr_next_due(self) -> float | None:
        rows = self._query(f"SELECT min(next_poll) FROM fmgr_tasks WHERE {_DUE_SQL}")
        return rows[0][0] if rows else None

    def fmgr_count_pending(self) -> int:
        return int(self._query(f"SELECT count(*) FROM fmgr_tasks WHERE {_PENDING_SQL}")[0][0])

    def fmgr_oldest_pending(self) -> float | None:
        rows = self._query(f"SELECT min(first_seen) FROM fmgr_tasks WHERE {_PENDING_SQL}")
        return rows[0][0] if rows else None

    def fmgr_count_unknown(self) -> int:
        # Among the tasks still polled (the due index), those whose last poll was answered "not found".
        rows = self._query(f"SELECT count(*) FROM fmgr_tasks WHERE {_DUE_SQL} AND last_error LIKE %s", ("not_found%",))
        return int(rows[0][0]) if rows else 0

    def abandon_old_fmgr(self, before: float) -> int:
        with self._lock, self._pool.connection() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE fmgr_tasks SET abandoned = TRUE WHERE NOT abandoned AND first_seen < %s "
                "AND final_seen IS NULL", (before,))
            conn.execute(
                "UPDATE fmgr_tasks SET confirmed = TRUE WHERE NOT confirmed AND first_seen < %s "
                "AND final_seen IS NOT NULL", (before,))
            return cur.rowcount

    def fmgr_task_rows_for_api(self, where: StateFilter, limit: int, task_id: str | None) -> list[FmgrApiRow]:
        conds, args = _conditions(where)
        if task_id is not None:
            conds, args = [*conds, "id = %s"], [*args, task_id]
        sql = ("SELECT id, first_seen, final_seen, code, source, last_polled, confirmed, abandoned, errors, "
               "last_error FROM fmgr_tasks" + (" WHERE " + " AND ".join(conds) if conds else "")
               + " ORDER BY first_seen DESC LIMIT %s")
        return [FmgrApiRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), bool(r[7]), r[8], r[9])
                for r in self._query(sql, (*args, limit))]

    def prune_fmgr(self, before: float, keep: Sequence[str]) -> int:
        kept = set(keep)
        with self._lock, self._pool.connection() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM fmgr_tasks WHERE first_seen < %s AND (final_seen IS NOT NULL OR abandoned)",
                (before,),
            ) if r[0] not in kept]
            # In chunks, each its own transaction: a large prune never holds one long transaction.
            for chunk in range(0, len(ids), _PRUNE_CHUNK):
                part = ids[chunk:chunk + _PRUNE_CHUNK]
                with conn.transaction():
                    conn.execute("DELETE FROM fmgr_items WHERE task_id = ANY(%s)", (part,))
                    conn.execute("DELETE FROM fmgr_tasks WHERE id = ANY(%s)", (part,))
            conn.execute("DELETE FROM fmgr_notifications WHERE received_ts < %s", (before,))
        return len(ids)


def _conditions(where: StateFilter) -> tuple[list[str], list[Any]]:
    if where.nothing:
        return ["FALSE"], []
    conds: list[str] = []
    args: list[Any] = []
    if where.abandoned is not None:
        conds.append("abandoned" if where.abandoned else "NOT abandoned")
    if where.unknown:
        conds.append("code IS NULL")
    if where.codes_in is not None:
        conds.append("code = ANY(%s::bigint[])")
        args.append(list(where.codes_in))
    if where.codes_not_in is not None:
        conds.extend(["code IS NOT NULL", "code <> ALL(%s::bigint[])"])
        args.append(list(where.codes_not_in))
    if where.pending is not None:
        conds.append(_PENDING_SQL if where.pending else f"NOT ({_PENDING_SQL})")  # as fmgr_count_pending
    return conds, args
