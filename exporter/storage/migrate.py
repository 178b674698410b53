"""PostgreSQL stores from the command line: the one-shot copy of an SQLite store into PostgreSQL
(``--storage.migrate-from``), and the check of a database that ``--check-config`` runs.

The copy
--------

``migrate_sqlite`` copies every table a store's rows live in (``TABLES``) from an SQLite file into the
PostgreSQL database of ``storage.url``. The replicas' own tables (``leases``, ``changes``) and ``meta`` (the
schema version, which each backend keeps for itself) are not copied. In order:

1. The SQLite file is opened read-only (it is never written, even by mistake) and must be a store whose schema
   version this exporter understands. Everything is read inside one read transaction: one consistent
   snapshot, even while an exporter still writes to the file (what it commits later is not copied).
2. The target's schema is created, or its version checked, by ``postgres_repo.PostgresRepository`` itself,
   exactly as at an exporter's start.
3. One PostgreSQL transaction, holding the store's write lock (replicas that start meanwhile wait): the target
   must hold no leases that are still live (no replica runs on it) and no row in any of ``TABLES``; each table
   is streamed with ``COPY`` in batches of ``BATCH`` rows; the row count of every table in the target must
   then equal the source's. Only then does it commit: a copy that fails at any point leaves the target as
   it was (empty), so it can simply be run again.

Types are converted as ``postgres_repo`` stores them: SQLite's 0/1 flags become booleans, and text loses its
NUL characters (replaced as ``postgres_repo.pg_text`` does on every read and write, which PostgreSQL requires);
the report says how many values had one. The columns are read from both databases' catalogs, so a column
that exists on one side only is an error, not silently dropped.

The check
---------

``check_database`` connects once, with a short timeout, and reads without writing anything: whether the
server accepts writes, the store's schema version when the tables exist, or else whether the first start
could create them (a schema in the ``search_path`` and the ``CREATE`` privilege on it).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.storage.postgres_repo import CONNECT_DEFAULTS, WRITE_LOCK_KEY, PostgresRepository, mask_url, pg_text
from exporter.storage.sql_repo import ADDED_COLUMNS, SCHEMA_VERSION

log = logging.getLogger(__name__)

# The tables a store's rows live in, in the order they are copied.
TABLES = ("cdn_tasks", "counters", "state", "fmgr_tasks", "fmgr_items", "fmgr_notifications")
# The tables each backend keeps for itself: never copied.
# failure_log holds at most the last second's failures not yet logged (--log.task-failures): not worth numbering
# the target's sequence for.
NOT_COPIED = ("meta", "leases", "changes", "failure_log")
BATCH = 5000
CHECK_TIMEOUT = 5  # seconds, for --check-config: to connect, and for each statement


class MigrationError(Exception):
    """The copy cannot be made, or was not made; the message says why (never with a password)."""


@dataclass
class Report:
    """What ``migrate_sqlite`` did."""

    source: str
    target: str  # the URL, password masked
    schema_version: int
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied (and counted in the target)
    nul_replaced: int = 0  # text values whose NUL characters were replaced
    seconds: float = 0.0

    def lines(self) -> list[str]:
        width = max(len(t) for t in TABLES)
        out = [f"copied {self.source} into {self.target} (schema version {self.schema_version}) "
               f"in {self.seconds:.1f}s:"]
        out += [f"  {table:<{width}}  {n:>10} rows" for table, n in self.rows.items()]
        out.append(f"row counts verified: the target holds exactly the {sum(self.rows.values())} rows of the source")
        if self.nul_replaced:
            out.append(f"{self.nul_replaced} text value(s) had NUL characters, replaced by U+FFFD "
                       "(PostgreSQL text cannot hold them; the exporter does the same on every write)")
        return out


def connection_params(url: str, password: str | None, **overrides: Any) -> dict[str, Any]:
    """The libpq parameters ``PostgresRepository`` connects with (its defaults, then the URL's own, then
    ``storage.password``), and ``overrides`` on top."""
    scheme, sep, rest = url.partition("://")
    params = {**CONNECT_DEFAULTS, **conninfo_to_dict(scheme.lower() + sep + rest)}
    if password:
        params["password"] = password
    return {**params, **overrides}


def _scrub(message: str, params: dict[str, Any]) -> str:
    """A driver's error message as it may be shown: on one line (libpq adds indented hints), and without the
    password, should the driver ever quote it."""
    message = " ".join(message.split())
    secret = params.get("password")
    return message.replace(secret, "***") if isinstance(secret, str) and secret else message


# ---------------------------------------------------------------------------------------------- check


def check_database(url: str, password: str | None, *, timeout: int = CHECK_TIMEOUT) -> tuple[list[str], str]:
    """(problems, summary) of the PostgreSQL store at ``url``: problems when the database cannot be used by
    this exporter (each message names the URL, password masked), else a one-line summary of what was found.
    Reads only: nothing is created or changed."""
    masked = mask_url(url)
    params = connection_params(url, password, connect_timeout=max(2, timeout),
                               application_name="cdnetworks-exporter-check")
    try:
        with psycopg.connect(make_conninfo("", **params), autocommit=True) as conn:
            conn.execute(sql.SQL("SET statement_timeout = {}").format(sql.Literal(f"{timeout}s")))
            row = conn.execute("SELECT current_setting('transaction_read_only'), current_schema(), "
                               "to_regclass('meta') IS NOT NULL").fetchone()
            assert row is not None
            read_only, schema, exists = row[0] == "on", row[1], bool(row[2])
            problems: list[str] = []
            if read_only:
                problems.append(f"{masked}: the database accepts no writes (read-only: a standby?)")
            if exists:
                found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if found is not None and int(found[0]) > SCHEMA_VERSION:
                    problems.append(f"{masked}: schema version {found[0]} is newer than this exporter understands "
                                    f"({SCHEMA_VERSION})")
                version = found[0] if found is not None else "not recorded yet"
                summary = f"{masked}: the database answers; store schema version {version}"
            elif schema is None:
                problems.append(f"{masked}: no schema of the search_path exists, so the first start could not "
                                "create the tables")
                summary = ""
            else:
                can_create = conn.execute("SELECT has_schema_privilege(current_schema(), 'CREATE')").fetchone()
                if not (can_create and can_create[0]):
                    problems.append(f"{masked}: no store yet, and the role may not create its tables in schema "
                                    f"{schema} (grant CREATE on it, or create the tables once as its owner)")
                summary = (f"{masked}: the database answers; no store yet (the first start creates its tables "
                           f"in schema {schema})")
    except psycopg.Error as exc:
        return [f"{masked}: cannot use the database: {_scrub(str(exc), params)}"], ""
    return problems, summary


# ----------------------------------------------------------------------------------------------- copy


def _source(path: str) -> tuple[sqlite3.Connection, int]:
    """The SQLite store at ``path``, read-only, inside a read transaction; its schema version."""
    file = Path(path)
    if not file.is_file():
        raise MigrationError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(file.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise MigrationError(f"{path}: cannot open: {exc}") from exc
    try:
        conn.execute("BEGIN")  # one snapshot for every read below
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in ("meta", *TABLES) if t not in tables]
        if missing:
            raise MigrationError(f"{path}: not an exporter store (no table {', '.join(missing)})")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise MigrationError(f"{path}: not an exporter store (no schema version)")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise MigrationError(f"{path}: schema version {version} is newer than this exporter understands "
                                 f"({SCHEMA_VERSION})")
    except sqlite3.Error as exc:
        conn.close()
        raise MigrationError(f"{path}: cannot read: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn, version


def _columns(src: sqlite3.Connection, dst: psycopg.Connection[Any], table: str) -> list[tuple[str, str]]:
    """(column, PostgreSQL type) of ``table``, in the source's order; the two sides must have the same."""
    source = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
    target = dict(dst.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (table,)).fetchall())
    # A store of an older schema lacks the columns added since: they stay NULL in the copy.
    added = {name for name, _ in ADDED_COLUMNS.get(table, ())}
    if set(source) != set(target) and not (set(source) < set(target) and set(target) - set(source) <= added):
        raise MigrationError(f"table {table}: the columns differ (SQLite: {', '.join(source)}; "
                             f"PostgreSQL: {', '.join(target)})")
    return [(name, target[name]) for name in source]


def _converter(types: list[str], report: Report) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    flags = [i for i, t in enumerate(types) if t == "boolean"]
    texts = [i for i, t in enumerate(types) if t == "text"]

    def convert(row: tuple[Any, ...]) -> tuple[Any, ...]:
        out = list(row)
        for i in flags:
            if out[i] is not None:
                out[i] = bool(out[i])
        for i in texts:
            value = out[i]
            if isinstance(value, str) and "\x00" in value:
                out[i] = pg_text(value)
                report.nul_replaced += 1
        return tuple(out)

    return convert


def _refuse_unless_empty(dst: psycopg.Connection[Any]) -> None:
    live = dst.execute("SELECT count(*) FROM leases WHERE expires_at > extract(epoch from clock_timestamp())"
                       ).fetchone()
    if live is not None and live[0]:
        raise MigrationError(f"the target has {live[0]} live lease(s): exporters are running on it; stop them, "
                             "then copy into an empty store")
    filled = []
    for table in TABLES:
        row = dst.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        if row is not None and row[0]:
            filled.append(f"{table}: {row[0]} rows")
    if filled:
        raise MigrationError(f"the target store is not empty ({'; '.join(filled)}); copying into it would mix two "
                             "stores: use an empty database or schema, or drop these tables first")


def _copy_table(src: sqlite3.Connection, dst: psycopg.Connection[Any], table: str, batch: int,
                report: Report) -> int:
    columns = _columns(src, dst, table)
    names = [c for c, _ in columns]
    convert = _converter([t for _, t in columns], report)
    expected = int(src.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    copied = 0
    cursor = src.execute(f"SELECT {', '.join(names)} FROM {table}")
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in names))
    with dst.cursor() as cur, cur.copy(statement) as copy:
        while rows := cursor.fetchmany(batch):
            for row in rows:
                copy.write_row(convert(row))
            copied += len(rows)
            log.debug("migrate: %s: %d of %d rows", table, copied, expected)
    counted = dst.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    in_target = int(counted[0]) if counted is not None else -1
    if not copied == expected == in_target:
        raise MigrationError(f"table {table}: the source has {expected} rows, {copied} were read and the target "
                             f"counts {in_target}; nothing was committed")
    log.info("migrate: %s: %d rows", table, copied)
    return copied


def migrate_sqlite(source: str, url: str, password: str | None = None, *, batch: int = BATCH) -> Report:
    """Copy the SQLite store at ``source`` into the empty PostgreSQL store at ``url`` (see the module's
    docstring); raises ``MigrationError`` (the target unchanged) when it cannot."""
    started = time.monotonic()
    masked = mask_url(url)
    src, version = _source(source)
    params = connection_params(url, password, application_name="cdnetworks-exporter-migrate")
    try:
        # The target's schema, created or checked by the exporter's own code, as at a start.
        try:
            PostgresRepository(url, password=password, min_size=1, max_size=1).close()
        except RuntimeError as exc:  # its message already names the URL, masked
            raise MigrationError(str(exc)) from exc
        report = Report(source=source, target=masked, schema_version=version)
        with psycopg.connect(make_conninfo("", **params), autocommit=True) as dst, dst.transaction():
            dst.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            _refuse_unless_empty(dst)
            for table in TABLES:
                report.rows[table] = _copy_table(src, dst, table, batch, report)
    except psycopg.Error as exc:
        raise MigrationError(f"{masked}: {_scrub(str(exc), params)}; nothing was committed") from exc
    except sqlite3.Error as exc:
        raise MigrationError(f"{source}: cannot read: {exc}; nothing was committed") from exc
    finally:
        src.close()
    report.seconds = time.monotonic() - started
    return report
