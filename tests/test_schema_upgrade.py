"""A store written by schema version 1 (before the task browser) opens as version 2 with nothing lost: the Fmgr
items gain their error and key columns (NULL for the old rows), failure_log and the status index appear; and
such a file can still be copied into PostgreSQL (--storage.migrate-from)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exporter.fmgr.wire import FmgrItem, FmgrStatus
from exporter.storage.migrate import migrate_sqlite
from exporter.storage.model import CdnTask
from exporter.storage.postgres_repo import PostgresRepository
from exporter.storage.sql_repo import SCHEMA_VERSION
from exporter.storage.sqlite_repo import SqliteRepository
from exporter.storage.store import Store

T = 1795334400.0


def version_1_store(path: Path) -> None:
    """A store as version 1 left it: written, then its schema taken back to what version 1 created."""
    store = Store(path, clock=lambda: T)
    store.upsert_cdn_tasks("acme", "prefetch", [CdnTask("https://a.example/1", T - 60, "failure", T - 50, T - 40, 5.0)])
    store.apply_fmgr_status(FmgrStatus("job-1", 3, 0, (FmgrItem("fetch", 2, None, "gone", "k/1"),)), source="poll",
                            polled=True)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE fmgr_items DROP COLUMN error")
        conn.execute("ALTER TABLE fmgr_items DROP COLUMN key")
        conn.execute("DROP TABLE failure_log")
        conn.execute("DROP INDEX cdn_tasks_status")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")


def columns(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_a_version_1_sqlite_store_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    version_1_store(path)
    assert "error" not in columns(path, "fmgr_items")
    store = Store(path, clock=lambda: T)
    try:
        assert columns(path, "fmgr_items")[-2:] == ["error", "key"]
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
                SCHEMA_VERSION)
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"failure_log", "cdn_tasks_status"} <= names
        rows, _ = store.repo.cdn_browse("acme", "prefetch", 0, T, status="failure", limit=10, scan=10)
        assert [r.url for r in rows] == ["https://a.example/1"]
        items, _ = store.repo.fmgr_details(["job-1"])
        assert [(i.op, i.code, i.error, i.key) for _, i in items["job-1"]] == [("fetch", 2, None, None)]
        # Written again, the item keeps what the vendor says now.
        store.apply_fmgr_status(FmgrStatus("job-1", 6, 0, (FmgrItem("fetch", 20, None, "gone", "k/1"),)),
                                source="poll", polled=True)
        items, _ = store.repo.fmgr_details(["job-1"])
        assert [(i.code, i.error, i.key) for _, i in items["job-1"]] == [(20, "gone", "k/1")]
    finally:
        store.close()
    SqliteRepository(path).close()  # opening an upgraded store again changes nothing
    assert columns(path, "fmgr_items")[-2:] == ["error", "key"]


def test_a_version_1_file_copies_into_postgresql(tmp_path: Path, postgres_url: str) -> None:
    path = tmp_path / "v1.db"
    version_1_store(path)
    report = migrate_sqlite(str(path), postgres_url)
    assert report.rows["fmgr_items"] == 1 and report.rows["cdn_tasks"] == 1 and report.schema_version == 1
    repo = PostgresRepository(postgres_url)
    try:
        items, _ = repo.fmgr_details(["job-1"])
        assert [(i.op, i.code, i.error, i.key) for _, i in items["job-1"]] == [("fetch", 2, None, None)]
    finally:
        repo.close()
