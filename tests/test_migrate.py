"""Moving from SQLite: ``--storage.migrate-from`` copies an SQLite store, built by the exporter's own code (a
real CDN poller against the simulator, the Fmgr tracking of the store), into PostgreSQL; a Store opened on the
copy must answer exactly as the original did. A target that is not empty, or that replicas run on, is
refused; a copy that fails half-way leaves nothing behind."""

from __future__ import annotations

import hashlib
import random
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, T0, make_config

from exporter.fmgr.wire import FmgrItem, FmgrStatus
from exporter.metrics.health import ApiHealth
from exporter.polling.cdn_poller import CdnPoller
from exporter.storage.migrate import NOT_COPIED, TABLES, MigrationError, migrate_sqlite
from exporter.storage.model import CdnTask
from exporter.storage.postgres_repo import PostgresRepository
from exporter.storage.repository import open_repository
from exporter.storage.sqlite_repo import SqliteRepository
from exporter.storage.store import DURATION_BUCKETS, Store
from exporter.vendor.cdn import CdnClient

pytestmark = pytest.mark.postgres

DAY = 86400.0
WINDOWS = [900.0, 3600.0, DAY]


def run_cycle(poller: CdnPoller, clock: Any) -> None:
    for _ in range(5000):
        if poller.idle():
            return
        clock.t = max(clock(), poller.next_run())
        poller.step()
    raise AssertionError("the poller never caught up")


def status(task_id: str, code: int, items: list[tuple[str | None, int, int | None]]) -> FmgrStatus:
    return FmgrStatus(id=task_id, code=code, separate=0,
                      items=tuple(FmgrItem(op=op, code=c, fsize=fs, error=None) for op, c, fs in items))


def build_sqlite_store(sim_factory: Any, clock: Any, path: Path) -> None:
    """A store as an exporter leaves it: CDN history, watermarks and budgets from a real poller; tracked,
    notified, polled, failed and abandoned Fmgr tasks; counters and histograms of all of them."""
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=300, failure_ratio=0.1, start_ts=T0 - 2 * DAY)
    config = make_config(sim.url, str(path))
    store = Store(str(path), clock=clock, repository=SqliteRepository(path))
    try:
        account, kind = config.accounts[0], config.kinds["prefetch"]
        health = ApiHealth()
        poller = CdnPoller(account, "prefetch", kind, store,
                           CdnClient(account, clock=clock, timeout=kind.request_timeout, health=health),
                           health, clock=clock, rng=random.Random(7))
        run_cycle(poller, clock)
        clock.advance(300)
        run_cycle(poller, clock)
        assert store.get_state("cdn:acme:prefetch") is not None
        # Vendor text PostgreSQL cannot hold as it is (a NUL), in a key column and in free text.
        store.upsert_cdn_tasks("globex", "purge", [
            CdnTask("http://x/with\x00nul", clock() - 600, "run"),
            CdnTask("http://x/done", clock() - 500, "success", finish_ts=clock() - 400, rate=100.0)])
        store.register_fmgr_ids([f"r{i}" for i in range(30)], "api")
        for i in range(0, 30, 3):
            store.apply_fmgr_status(status(f"r{i}", 6, [("fetch", 6, 1000 + i), ("copy", 20, None)]),
                                    source="poll", polled=True)
        for i in range(40):
            assert store.record_notification(status(f"n{i}", 3, [("fetch", 3, 10 * i)]), f"key-{i}", clock())
        assert not store.record_notification(status("n0", 3, [("fetch", 3, 0)]), "key-0", clock())
        store.count_notification("accepted")
        store.fmgr_poll_failed("r1", "boom\x00 at the vendor", clock() + 60)
        store.fmgr_poll_failed("r2", "gone", clock() + 60, give_up=True)
        store.set_state("fmgr:budget", {"recent": [clock() - 5, clock() - 1], "in_flight": None})
    finally:
        store.close()


def observe(store: Store, names: list[str], now: float) -> dict[str, Any]:
    """Everything a scrape, the registration API and the pollers read from a store."""
    pending, oldest = store.fmgr_pending()
    return {
        "cdn_windows": {(a, k): store.cdn_window_counts(a, k, now, WINDOWS)
                        for a, k in (("acme", "prefetch"), ("globex", "purge"))},
        "counters": {n: sorted((sorted(lab.items()), v) for lab, v in store.counters(n)) for n in names},
        "histogram": store.histogram("prefetch_duration_seconds", {"account": "acme"}, DURATION_BUCKETS),
        # Newest first, in an order each database may break ties of differently.
        "fmgr_tasks": sorted(store.list_fmgr_tasks(None, 1000), key=lambda t: t["persistentId"]),
        "fmgr_windows": store.fmgr_window_counts(now, WINDOWS),
        "pending": (pending, oldest),
        "due": sorted(store.fmgr_due(now + 3600, 1000)),
        "state": {k: store.get_state(k) for k in ("cdn:acme:prefetch", "cdn:acme:prefetch:budget", "fmgr:budget")},
        "cdn_count": store.cdn_task_count(),
        "unfinished": sorted(store.cdn_unfinished("globex", "purge", 0, now)),
    }


def counter_names(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT DISTINCT name FROM counters ORDER BY name")]


def table_counts(url: str) -> dict[str, int]:
    repo = PostgresRepository(url, min_size=1, max_size=1)
    try:
        return {t: repo._query(f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}
    finally:
        repo.close()


def write_config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"accounts": [{"name": "acme", "username": "acme", "api_key": "k"}],
                                      "storage": {"url": url}}))
    return config


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter.cli", *args], capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT)


def test_the_copy_answers_as_the_original(sim_factory, clock, tmp_path, postgres_url):
    source = tmp_path / "old.db"
    build_sqlite_store(sim_factory, clock, source)
    names = counter_names(source)
    assert {"prefetch_tasks_finished_total", "fmgr_notifications_total", "fmgr_processed_bytes_total"} <= set(names)
    original = Store(str(source), clock=clock, repository=SqliteRepository(source))
    try:
        before = observe(original, names, clock())
        with sqlite3.connect(source) as conn:
            source_rows = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        original.close()
    assert before["cdn_count"] > 100 and before["pending"][0] > 0 and len(before["fmgr_tasks"]) == 70
    assert all(source_rows.values()), source_rows
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    done = run_cli("--config.file", str(write_config(tmp_path, postgres_url)), "--storage.migrate-from", str(source))
    assert done.returncode == 0, done.stderr
    for table, n in source_rows.items():
        assert any(line.split() == [table, str(n), "rows"] for line in done.stdout.splitlines()), (table, done.stdout)
    assert "row counts verified" in done.stdout
    assert "2 text value(s) had NUL characters" in done.stdout
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest  # the source is only read
    assert table_counts(postgres_url) == source_rows

    copy = Store(postgres_url, clock=clock, repository=open_repository(postgres_url))
    try:
        after = observe(copy, names, clock())
        # The NUL the vendor sent comes back as PostgreSQL stores it, everywhere else the same.
        assert [u for _, u, _, _ in after["unfinished"]] == ["http://x/with\ufffdnul"]
        before["unfinished"] = [(c, u.replace("\x00", "\ufffd"), s, st) for c, u, s, st in before["unfinished"]]
        failed = next(t for t in after["fmgr_tasks"] if t["persistentId"] == "r1")
        assert failed["lastError"] == "boom\ufffd at the vendor"
        for t in before["fmgr_tasks"]:
            if t.get("lastError"):
                t["lastError"] = t["lastError"].replace("\x00", "\ufffd")
        assert after == before
        # The copy is a working store: a new notification is counted on top of the copied ones.
        assert copy.record_notification(status("late", 3, [("fetch", 3, 5)]), "key-late", clock())
        notes = {lab["result"]: v for lab, v in copy.counters("fmgr_notifications_total")}
        copied = {dict(lab)["result"]: v for lab, v in before["counters"]["fmgr_notifications_total"]}
        assert notes == {**copied, "accepted": copied["accepted"] + 1}
    finally:
        copy.close()

    # A second run would mix two stores: refused, and the target is left as it is.
    again = run_cli("--config.file", str(write_config(tmp_path, postgres_url)), "--storage.migrate-from", str(source))
    assert again.returncode == 1
    assert "migration failed:" in again.stderr and "is not empty" in again.stderr and "cdn_tasks:" in again.stderr
    assert "Traceback" not in again.stderr
    assert table_counts(postgres_url)["fmgr_tasks"] == source_rows["fmgr_tasks"] + 1


def small_store(path: Path, clock: Any, *, dedup_keys: tuple[str, ...] = ("a", "b")) -> None:
    store = Store(str(path), clock=clock, repository=SqliteRepository(path))
    try:
        store.upsert_cdn_tasks("acme", "prefetch", [
            CdnTask(f"http://x/{i}", T0 - 60 * i, "success", finish_ts=T0 - 60 * i + 30, rate=100.0)
            for i in range(23)])
        for i, key in enumerate(dedup_keys):
            store.record_notification(status(f"t{i}", 3, [("fetch", 3, 1)]), key, T0)
    finally:
        store.close()


def test_small_batches_copy_every_row(clock, tmp_path, postgres_url):
    source = tmp_path / "small.db"
    small_store(source, clock)
    report = migrate_sqlite(str(source), postgres_url, batch=4)
    assert report.rows["cdn_tasks"] == 23 and report.rows["fmgr_notifications"] == 2
    assert table_counts(postgres_url) == report.rows


def test_a_failure_half_way_commits_nothing(clock, tmp_path, postgres_url):
    # Two dedup keys that differ only by a NUL and its replacement collide in PostgreSQL: the last table
    # copied fails, after the others were written in the same transaction.
    source = tmp_path / "collide.db"
    small_store(source, clock, dedup_keys=("k\x00", "k\ufffd"))
    with pytest.raises(MigrationError) as failed:
        migrate_sqlite(str(source), postgres_url)
    assert "nothing was committed" in str(failed.value)
    assert set(table_counts(postgres_url).values()) == {0}
    # The reason is fixed in the source: the same command now succeeds.
    with sqlite3.connect(source) as conn:
        conn.execute("DELETE FROM fmgr_notifications WHERE dedup_key = ?", ("k\x00",))
    assert migrate_sqlite(str(source), postgres_url).rows["fmgr_notifications"] == 1


def test_running_replicas_on_the_target_are_refused(clock, tmp_path, postgres_url):
    source = tmp_path / "s.db"
    small_store(source, clock)
    repo = PostgresRepository(postgres_url, min_size=1, max_size=1)
    try:
        assert repo.lease_acquire("fmgr", "replica-1", 60.0) is not None
        with pytest.raises(MigrationError, match="1 live lease"):
            migrate_sqlite(str(source), postgres_url)
        repo.lease_release("fmgr", "replica-1")
        assert migrate_sqlite(str(source), postgres_url).rows["cdn_tasks"] == 23
    finally:
        repo.close()


def test_sources_that_are_not_a_store_are_refused(clock, tmp_path, postgres_url):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(MigrationError, match=r"junk\.db: cannot read"):
        migrate_sqlite(str(junk), postgres_url)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(MigrationError, match="not an exporter store"):
        migrate_sqlite(str(other), postgres_url)
    newer = tmp_path / "newer.db"
    small_store(newer, clock)
    with sqlite3.connect(newer) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(MigrationError, match="schema version 99 is newer"):
        migrate_sqlite(str(newer), postgres_url)
    assert set(table_counts(postgres_url).values()) == {0}


def test_every_table_of_both_schemas_is_copied_or_deliberately_not(tmp_path, postgres_cluster, postgres_url):
    SqliteRepository(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        sqlite_tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    PostgresRepository(postgres_url).close()
    schema = postgres_url.rpartition("%3D")[2]
    pg_tables = {r[0] for r in postgres_cluster.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema)}
    assert sqlite_tables - set(NOT_COPIED) == set(TABLES)
    assert pg_tables - set(NOT_COPIED) == set(TABLES)


def test_cli_problems_exit_2_and_name_what_is_wrong(tmp_path, postgres_url):
    sqlite_config = tmp_path / "sqlite.yml"
    sqlite_config.write_text(yaml.safe_dump({"accounts": [{"name": "acme", "username": "acme", "api_key": "k"}]}))
    source = tmp_path / "s.db"
    SqliteRepository(source).close()
    done = run_cli("--config.file", str(sqlite_config), "--storage.migrate-from", str(source))
    assert done.returncode == 2 and f"{sqlite_config}: storage.url: not set" in done.stderr
    done = run_cli("--config.file", str(write_config(tmp_path, postgres_url)), "--storage.migrate-from",
                   str(tmp_path / "missing.db"))
    assert done.returncode == 2 and "missing.db: no such file" in done.stderr
    assert not (tmp_path / "missing.db").exists()
    done = run_cli("--config.file", str(write_config(tmp_path, postgres_url)), "--storage.migrate-from", str(source),
                   "--check-config")
    assert done.returncode == 2 and "cannot be combined" in done.stderr
