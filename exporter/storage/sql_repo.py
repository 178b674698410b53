"""The store's SQL, written once for every database: the schema, the statements of a transaction, the queries.

``SqlRepository`` and ``SqlTransaction`` implement ``repository.Repository`` and ``repository.Transaction``
over a DB-API connection (``sqlite3``'s or ``psycopg``'s). A backend (``sqlite_repo.py``, ``postgres_repo.py``)
subclasses them with only what differs between the databases: how it connects, how it runs a transaction,
leases and the change log (the replicas' tables), and a ``Dialect``: the few things its SQL says otherwise.

The SQL here is written with ``?`` placeholders (``Dialect.sql`` turns them into the driver's own), and
conditions on flags as ``Dialect.flag`` writes them, which is how the partial indexes define them: each
database's planner matches such a condition to its index only when both are written alike.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, closing
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from exporter.storage.model import CDN_UNFINISHED, CdnTask, FmgrApiRow, FmgrItemRow, FmgrTaskRow, Loaded, StateFilter

SCHEMA_VERSION = 1
PRUNE_CHUNK = 500  # tasks deleted by one statement (SQLite's limit on host parameters is 999)

UNFINISHED_SQL = "status IN (" + ", ".join(f"'{s}'" for s in CDN_UNFINISHED) + ")"


class DbCursor(Protocol):
    """What the repositories use of a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> object: ...
    def close(self) -> None: ...


class DbConnection(Protocol):
    """What the repositories use of a DB-API connection."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> DbCursor: ...
    def cursor(self) -> DbCursor: ...


C = TypeVar("C", bound=DbConnection)


class Dialect(ABC):
    """How one database's SQL says what the statements here need. Backends define one each."""

    real: ClassVar[str]  # column type of timestamps (unix seconds) and rates
    bigint: ClassVar[str]  # of codes and sizes (the wire accepts integers up to 2**53)
    boolean: ClassVar[str]  # of flags
    true: ClassVar[str]  # a flag's literals
    false: ClassVar[str]
    table_options: ClassVar[str]  # after a table's definition, for the tables of many small rows
    row_lock: ClassVar[str]  # after a SELECT of the row the transaction updates next
    # The indexes of the windows' edge minutes and range counts (each planner needs its own kind), and the
    # tables only this database has, as DDL.
    window_indexes: ClassVar[str]
    own_tables: ClassVar[str] = ""

    def __init__(self) -> None:
        # Pending as cdnetworks_fmgr_pending_tasks counts it; due: still to be polled.
        self.pending = f"final_seen IS NULL AND {self.flag('abandoned', False)}"
        self.due = f"(final_seen IS NULL OR {self.flag('confirmed', False)}) AND {self.flag('abandoned', False)}"

    @abstractmethod
    def sql(self, text: str) -> str:
        """``text``, written with ``?`` placeholders, as the driver wants it."""

    @abstractmethod
    def flag(self, column: str, value: bool) -> str:
        """The condition that the flag ``column`` is ``value``."""

    @abstractmethod
    def insert_ignore(self, into: str, values: str, key: str) -> str:
        """``INSERT INTO {into} {values}``, doing nothing for a row whose ``key`` (its primary key) exists."""

    @abstractmethod
    def among(self, column: str, values: Sequence[Any], *, negate: bool = False,
              array_type: str | None = None) -> tuple[str, list[Any]]:
        """The condition that ``column`` is one of ``values`` (or, ``negate``, none of them; ``array_type``
        names their SQL type where the database needs it), and its arguments."""

    def indexed_by(self, index: str) -> str:
        """The clause that makes a query read a table through ``index``, where the planner needs telling."""
        return ""

    def window_condition(self, condition: str) -> str:
        """`` AND condition``, where ``condition`` (true of every row) is that of a window index the query is
        to use and the database needs it repeated for that; else nothing."""
        return ""

    def text(self, value: str) -> str:
        """Vendor text (a URL, an item's operation, an error message) as the database can store it."""
        return value

    def schema(self) -> str:
        """Every table and index of the store, created where missing."""
        real, bigint, options = self.real, self.bigint, self.table_options
        return f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cdn_tasks (
    account TEXT NOT NULL, kind TEXT NOT NULL, url TEXT NOT NULL, create_ts {real} NOT NULL,
    status TEXT NOT NULL, begin_ts {real}, finish_ts {real}, rate {real}, updated_ts {real} NOT NULL,
    PRIMARY KEY (account, kind, url, create_ts)
){options};
CREATE INDEX IF NOT EXISTS cdn_tasks_unfinished ON cdn_tasks (account, kind, create_ts)
    WHERE {UNFINISHED_SQL};
CREATE INDEX IF NOT EXISTS cdn_tasks_created ON cdn_tasks (create_ts);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value {real} NOT NULL, PRIMARY KEY (name, labels)
){options};
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS fmgr_tasks (
    id TEXT PRIMARY KEY, first_seen {real} NOT NULL, final_seen {real}, code {bigint}, source TEXT NOT NULL,
    last_polled {real}, next_poll {real} NOT NULL, confirmed {self.boolean} NOT NULL DEFAULT {self.false},
    abandoned {self.boolean} NOT NULL DEFAULT {self.false}, errors INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    updated_ts {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS fmgr_tasks_due ON fmgr_tasks (next_poll)
    WHERE {self.due};
CREATE INDEX IF NOT EXISTS fmgr_tasks_pending ON fmgr_tasks (first_seen)
    WHERE {self.pending};
CREATE TABLE IF NOT EXISTS fmgr_items (
    task_id TEXT NOT NULL, idx INTEGER NOT NULL, op TEXT NOT NULL, code {bigint}, fsize {bigint},
    PRIMARY KEY (task_id, idx)
){options};
CREATE TABLE IF NOT EXISTS fmgr_notifications (
    dedup_key TEXT PRIMARY KEY, task_id TEXT NOT NULL, received_ts {real} NOT NULL
){options};
CREATE INDEX IF NOT EXISTS fmgr_notifications_received ON fmgr_notifications (received_ts);
CREATE INDEX IF NOT EXISTS fmgr_notifications_task ON fmgr_notifications (task_id);
{self.window_indexes}{self.own_tables}"""


class SqlTransaction(Generic[C]):
    """The statements of ``repository.Transaction`` on one connection, inside the backend's transaction. A
    backend adds ``check_fence`` and ``log_change``."""

    dialect: ClassVar[Dialect]

    def __init__(self, conn: C) -> None:
        self._c = conn

    def _x(self, sql: str, args: Sequence[Any] = ()) -> DbCursor:
        return self._c.execute(self.dialect.sql(sql), args)

    def set_state(self, key: str, value: Any) -> None:
        self._x("INSERT INTO state VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, json.dumps(value)))

    def add_counters(self, increments: Iterable[tuple[str, str, float]]) -> None:
        rows = list(increments)
        if not rows:
            return
        with closing(self._c.cursor()) as cur:
            cur.executemany(self.dialect.sql(
                "INSERT INTO counters VALUES (?, ?, ?) "
                "ON CONFLICT (name, labels) DO UPDATE SET value = counters.value + excluded.value"), rows)

    # ------------------------------------------------------------------ CDN
    def cdn_get(self, account: str, kind: str, url: str, create_ts: float) -> tuple[str, float | None] | None:
        row = self._x("SELECT status, rate FROM cdn_tasks WHERE account=? AND kind=? AND url=? AND create_ts=?",
                      (account, kind, self.dialect.text(url), create_ts)).fetchone()
        return None if row is None else (row[0], row[1])

    def cdn_touch(self, account: str, kind: str, url: str, create_ts: float, ts: float) -> None:
        self._x("UPDATE cdn_tasks SET updated_ts=? WHERE account=? AND kind=? AND url=? AND create_ts=?",
                (ts, account, kind, self.dialect.text(url), create_ts))

    def cdn_put(self, account: str, kind: str, task: CdnTask, ts: float) -> None:
        self._x(
            "INSERT INTO cdn_tasks VALUES (?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (account, kind, url, create_ts) DO UPDATE SET status=excluded.status, "
            "begin_ts=excluded.begin_ts, finish_ts=excluded.finish_ts, rate=excluded.rate, "
            "updated_ts=excluded.updated_ts",
            (account, kind, self.dialect.text(task.url), task.create_ts, task.status, task.begin_ts,
             task.finish_ts, task.rate, ts))

    def cdn_mark_checked(self, account: str, kind: str, start: float, end: float, ts: float,
                         url: str | None) -> None:
        sql = (f"UPDATE cdn_tasks SET updated_ts=? WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ? "
               f"AND {UNFINISHED_SQL}")
        args: list[Any] = [ts, account, kind, start, end]
        if url is not None:
            sql += " AND url=?"
            args.append(self.dialect.text(url))
        self._x(sql, args)

    # ------------------------------------------------------------------ Fmgr
    def fmgr_register(self, task_id: str, ts: float, source: str) -> bool:
        cur = self._x(self.dialect.insert_ignore(
            "fmgr_tasks (id, first_seen, source, next_poll, updated_ts)", "VALUES (?, ?, ?, ?, ?)", "id"),
            (task_id, ts, source, ts, ts))
        return cur.rowcount != 0

    def fmgr_get(self, task_id: str) -> FmgrTaskRow | None:
        row = self._x(
            "SELECT first_seen, final_seen, code, confirmed, abandoned, next_poll, last_polled FROM fmgr_tasks "
            "WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else FmgrTaskRow(row[0], row[1], row[2], bool(row[3]), bool(row[4]), row[5],
                                                    row[6])

    def fmgr_was_notified(self, task_id: str) -> bool:
        return self._x("SELECT 1 FROM fmgr_notifications WHERE task_id = ? LIMIT 1", (task_id,)).fetchone() is not None

    def fmgr_insert(self, task_id: str, first_seen: float, source: str, code: int | None,
                    final_seen: float | None, confirmed: bool, ts: float, last_polled: float | None,
                    next_poll: float) -> None:
        self._x(
            "INSERT INTO fmgr_tasks (code, final_seen, confirmed, updated_ts, last_polled, next_poll, id, "
            "first_seen, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (code, final_seen, bool(confirmed), ts, last_polled, next_poll, task_id, first_seen, source))

    def fmgr_update(self, task_id: str, code: int | None, final_seen: float | None, confirmed: bool, ts: float,
                    last_polled: float | None, next_poll: float) -> None:
        self._x(
            "UPDATE fmgr_tasks SET code=?, final_seen=?, confirmed=?, updated_ts=?, "
            f"last_polled=coalesce(CAST(? AS {self.dialect.real}), last_polled), next_poll=?, errors=0, "
            "last_error=NULL WHERE id=?",
            (code, final_seen, bool(confirmed), ts, last_polled, next_poll, task_id))

    def fmgr_items(self, task_id: str) -> dict[int, FmgrItemRow]:
        return {idx: FmgrItemRow(op, code, fsize) for idx, op, code, fsize in self._x(
            "SELECT idx, op, code, fsize FROM fmgr_items WHERE task_id = ?", (task_id,))}

    def fmgr_put_item(self, task_id: str, idx: int, item: FmgrItemRow) -> None:
        self._x(
            "INSERT INTO fmgr_items VALUES (?, ?, ?, ?, ?) ON CONFLICT (task_id, idx) DO UPDATE SET "
            "op=excluded.op, code=excluded.code, fsize=excluded.fsize",
            (task_id, idx, self.dialect.text(item.op), item.code, item.fsize))

    def notification_add(self, dedup_key: str, task_id: str, ts: float) -> bool:
        cur = self._x(self.dialect.insert_ignore("fmgr_notifications", "VALUES (?, ?, ?)", "dedup_key"),
                      (dedup_key, task_id, ts))
        return cur.rowcount != 0

    def fmgr_poll_failed(self, task_id: str, error: str, next_poll: float, give_up: bool, ts: float) -> bool:
        d = self.dialect
        row = self._x(f"SELECT final_seen, abandoned FROM fmgr_tasks WHERE id = ?{d.row_lock}", (task_id,)).fetchone()
        self._x(
            "UPDATE fmgr_tasks SET errors = errors + 1, last_error = ?, next_poll = ?, "
            f"abandoned = CASE WHEN ? THEN {d.true} ELSE abandoned END, last_polled = ? WHERE id = ?",
            (d.text(error[:200]), next_poll, bool(give_up), ts, task_id))
        return give_up and row is not None and row[0] is None and not row[1]


class SqlRepository(ABC, Generic[C]):
    """The queries of ``repository.Repository``. A backend supplies the connections (the hooks below, whose
    ``sql`` is written as here: ``Dialect.sql`` makes it the driver's), the lifecycle, transactions, leases
    and the change log."""

    dialect: ClassVar[Dialect]
    path: str

    @abstractmethod
    def _read(self, sql: str, args: Sequence[Any]) -> list[Any]:
        """A read on the scrape path: never waits for a write transaction."""

    @abstractmethod
    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """A read that sees this process's writes in order with them (planning)."""

    @abstractmethod
    def _write(self, sql: str, args: Sequence[Any]) -> int:
        """One statement outside a transaction (autocommit); its row count."""

    @abstractmethod
    def _maintenance(self) -> AbstractContextManager[C]:
        """The connection for a maintenance job's statements, holding this process's write lock."""

    @abstractmethod
    def _unit(self, conn: C) -> AbstractContextManager[object]:
        """A group of a maintenance job's statements on ``conn``: committed together where the backend says."""

    def _run(self, conn: C, sql: str, args: Sequence[Any] = ()) -> DbCursor:
        return conn.execute(self.dialect.sql(sql), args)

    def _check_schema_version(self, conn: C) -> None:
        """Record the schema version in a new store; refuse a store that a newer exporter wrote."""
        row = self._run(conn, "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._run(conn, "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {row[0]} is newer than this exporter understands ({SCHEMA_VERSION})")

    # ------------------------------------------------------------------ state and rebuild
    def get_state(self, key: str) -> Any:
        rows = self._query("SELECT value FROM state WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    def get_states(self, prefix: str) -> dict[str, Any]:
        # A scan of a small table (a few rows per poller), compared exactly: LIKE would read _ as a wildcard and,
        # in SQLite, ignore case.
        rows = self._read("SELECT key, value FROM state WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
        return {key: json.loads(value) for key, value in rows}

    def _loaded(self, fetch: Callable[[str], list[Any]], change_seq: int) -> Loaded:
        """``Loaded``, read by ``fetch`` (within one snapshot)."""
        return Loaded(
            fetch("SELECT name, labels, value FROM counters"),
            fetch("SELECT account, kind, create_ts, status, rate FROM cdn_tasks"),
            fetch("SELECT first_seen, code FROM fmgr_tasks"),
            fetch("SELECT t.first_seen, i.op, i.code FROM fmgr_items i JOIN fmgr_tasks t ON t.id = i.task_id"),
            int(fetch(f"SELECT count(*) FROM fmgr_tasks WHERE {self.dialect.pending}")[0][0]),
            change_seq)

    # ------------------------------------------------------------------ CDN
    def cdn_edge_rows(self, account: str, kind: str, after: float, until: float
                      ) -> list[tuple[float, str, float | None]]:
        d = self.dialect
        return self._read(
            f"SELECT create_ts, status, rate FROM cdn_tasks{d.indexed_by('cdn_tasks_window')} "
            "WHERE account=? AND kind=? AND create_ts > ? AND create_ts <= ?"
            f"{d.window_condition('status IS NOT NULL')}", (account, kind, after, until))

    def cdn_oldest_unfinished(self, account: str, kind: str, since: float | None) -> float | None:
        rows = self._read(
            f"SELECT min(create_ts) FROM cdn_tasks WHERE account=? AND kind=? AND {UNFINISHED_SQL} "
            "AND create_ts >= ?", (account, kind, since if since is not None else float("-inf")))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def cdn_range_count(self, account: str, kind: str, start: float, end: float) -> int:
        rows = self._query(  # an index-only range count on cdn_tasks_window
            "SELECT count(*) FROM cdn_tasks WHERE account=? AND kind=? AND create_ts BETWEEN ? AND ?"
            f"{self.dialect.window_condition('status IS NOT NULL')}", (account, kind, start, end))
        return int(rows[0][0])

    def cdn_unfinished(self, account: str, kind: str, start: float, end: float
                       ) -> list[tuple[float, str, float, str]]:
        return [(c, u, s, st) for c, u, s, st in self._query(
            f"SELECT create_ts, url, updated_ts, status FROM cdn_tasks WHERE account=? AND kind=? AND "
            f"{UNFINISHED_SQL} AND create_ts BETWEEN ? AND ? ORDER BY create_ts", (account, kind, start, end))]

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
        d = self.dialect
        return self._read(
            f"SELECT first_seen, code FROM fmgr_tasks{d.indexed_by('fmgr_tasks_window')} "
            f"WHERE first_seen > ? AND first_seen <= ?{d.window_condition('first_seen IS NOT NULL')}", (after, until))

    def fmgr_edge_item_rows(self, after: float, until: float) -> list[tuple[float, str, int | None]]:
        d = self.dialect
        return self._read(
            f"SELECT t.first_seen, i.op, i.code FROM fmgr_tasks t{d.indexed_by('fmgr_tasks_window')} "
            "JOIN fmgr_items i ON i.task_id = t.id "
            f"WHERE t.first_seen > ? AND t.first_seen <= ?{d.window_condition('t.first_seen IS NOT NULL')}",
            (after, until))

    def fmgr_due(self, now: float, limit: int) -> list[str]:
        return [r[0] for r in self._query(
            f"SELECT id FROM fmgr_tasks WHERE {self.dialect.due} AND next_poll <= ? ORDER BY next_poll LIMIT ?",
            (now, limit))]

    def fmgr_next_due(self) -> float | None:
        rows = self._query(f"SELECT min(next_poll) FROM fmgr_tasks WHERE {self.dialect.due}")
        return rows[0][0] if rows else None

    def fmgr_count_pending(self) -> int:
        return int(self._query(f"SELECT count(*) FROM fmgr_tasks WHERE {self.dialect.pending}")[0][0])

    def fmgr_oldest_pending(self) -> float | None:
        rows = self._read(f"SELECT min(first_seen) FROM fmgr_tasks WHERE {self.dialect.pending}", ())
        return rows[0][0] if rows else None

    def fmgr_count_unknown(self) -> int:
        # Among the tasks still polled (the due index), those whose last poll was answered "not found".
        rows = self._read(f"SELECT count(*) FROM fmgr_tasks WHERE {self.dialect.due} AND last_error LIKE ?",
                          ("not_found%",))
        return int(rows[0][0]) if rows else 0

    def abandon_old_fmgr(self, before: float) -> int:
        d = self.dialect
        with self._maintenance() as conn, self._unit(conn):
            cur = self._run(
                conn, f"UPDATE fmgr_tasks SET abandoned = {d.true} WHERE {d.flag('abandoned', False)} "
                "AND first_seen < ? AND final_seen IS NULL", (before,))
            self._run(
                conn, f"UPDATE fmgr_tasks SET confirmed = {d.true} WHERE {d.flag('confirmed', False)} "
                "AND first_seen < ? AND final_seen IS NOT NULL", (before,))
            return cur.rowcount

    def fmgr_task_rows_for_api(self, where: StateFilter, limit: int, task_id: str | None) -> list[FmgrApiRow]:
        conds, args = self._conditions(where)
        if task_id is not None:
            conds, args = [*conds, "id = ?"], [*args, task_id]
        sql = ("SELECT id, first_seen, final_seen, code, source, last_polled, confirmed, abandoned, errors, "
               "last_error FROM fmgr_tasks" + (" WHERE " + " AND ".join(conds) if conds else "")
               + " ORDER BY first_seen DESC LIMIT ?")
        return [FmgrApiRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), bool(r[7]), r[8], r[9])
                for r in self._query(sql, (*args, limit))]

    def _conditions(self, where: StateFilter) -> tuple[list[str], list[Any]]:
        d = self.dialect
        if where.nothing:
            return [d.false], []
        conds: list[str] = []
        args: list[Any] = []
        if where.abandoned is not None:
            conds.append(d.flag("abandoned", where.abandoned))
        if where.unknown:
            conds.append("code IS NULL")
        if where.codes_in is not None:
            cond, values = d.among("code", where.codes_in, array_type="bigint")
            conds.append(cond)
            args.extend(values)
        if where.codes_not_in is not None:
            cond, values = d.among("code", where.codes_not_in, negate=True, array_type="bigint")
            conds.extend(["code IS NOT NULL", cond])
            args.extend(values)
        if where.pending is not None:
            conds.append(d.pending if where.pending else f"NOT ({d.pending})")  # as fmgr_count_pending
        return conds, args

    def prune_fmgr(self, before: float, keep: Sequence[str]) -> int:
        kept = set(keep)
        with self._maintenance() as conn:
            ids = [r[0] for r in self._run(
                conn, "SELECT id FROM fmgr_tasks WHERE first_seen < ? AND "
                f"(final_seen IS NOT NULL OR {self.dialect.flag('abandoned', True)})", (before,),
            ) if r[0] not in kept]
            # In chunks: a large prune never holds one long transaction.
            for chunk in range(0, len(ids), PRUNE_CHUNK):
                part = ids[chunk:chunk + PRUNE_CHUNK]
                items, items_args = self.dialect.among("task_id", part)
                tasks, tasks_args = self.dialect.among("id", part)
                with self._unit(conn):
                    self._run(conn, f"DELETE FROM fmgr_items WHERE {items}", items_args)
                    self._run(conn, f"DELETE FROM fmgr_tasks WHERE {tasks}", tasks_args)
            self._run(conn, "DELETE FROM fmgr_notifications WHERE received_ts < ?", (before,))
        return len(ids)
