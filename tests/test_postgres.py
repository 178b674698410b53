"""The PostgreSQL backend beyond what every store test checks on both backends (tests/test_store.py): choosing
it, its schema version, a password kept out of sight, and a database that goes away and comes back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import ROOT, PostgresCluster, free_port, require_postgres

from exporter.storage.postgres_repo import PostgresRepository, mask_url
from exporter.storage.repository import open_repository
from exporter.storage.sql_repo import SCHEMA_VERSION
from exporter.storage.sqlite_repo import SqliteRepository
from exporter.storage.store import Store

pytestmark = pytest.mark.postgres

T0 = 1795334400.0


def test_open_repository_picks_the_backend_by_target(tmp_path, postgres_url):
    sqlite = open_repository(str(tmp_path / "store.db"))
    assert isinstance(sqlite, SqliteRepository)
    sqlite.close()
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1),
                postgres_url.replace("postgresql://", "PostgreSQL://", 1)):
        repo = open_repository(url)
        assert isinstance(repo, PostgresRepository), url
        assert repo.write_health() == (True, "")
        repo.close()


def test_sqlite_users_never_import_psycopg(tmp_path):
    code = ("import sys\n"
            "from exporter.storage.repository import open_repository\n"
            "from exporter.storage.store import Store\n"
            "Store('x', repository=open_repository(sys.argv[1])).close()\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg', 'psycopg_pool'))\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "store.db")], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_the_store_lives_in_the_schema_the_url_names(postgres_cluster, postgres_url):
    """What the per-test fixture relies on, and a deployment may use: the URL's search_path places the tables."""
    schema = postgres_url.rpartition("%3D")[2]
    open_repository(postgres_url).close()
    tables = {r[0] for r in postgres_cluster.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", schema)}
    assert tables == {"meta", "cdn_tasks", "counters", "state", "fmgr_tasks", "fmgr_items", "fmgr_notifications",
                      "leases", "changes", "failure_log"}


def test_the_password_is_masked_in_the_path(postgres_url):
    url = postgres_url.replace("postgres@", "postgres:s3cret@", 1)  # trust authentication ignores it
    repo = open_repository(url)
    store = Store(repo.path, repository=repo)
    try:
        assert "s3cret" not in repo.path and repo.path == postgres_url.replace("postgres@", "postgres:***@", 1)
        assert store.path == repo.path
    finally:
        store.close()  # its change-log thread first, then the repository


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://u:p%40ss@db:5432/x", "postgresql://u:***@db:5432/x"),
    ("postgresql://u@db/x?sslmode=require&password=pw", "postgresql://u@db/x?sslmode=require&password=***"),
    ("postgres://u:pw@a:1,b:2/x?Password=pw2", "postgres://u:***@a:1,b:2/x?Password=***"),
    ("postgresql://db/x", "postgresql://db/x"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


def test_an_unreachable_database_fails_the_start_without_showing_the_password():
    url = f"postgresql://exporter:hunter2@127.0.0.1:{free_port()}/store"
    started = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        PostgresRepository(url, timeout=1.0)
    assert time.monotonic() - started < 10
    assert "hunter2" not in str(err.value) and "exporter:***@127.0.0.1" in str(err.value)
    assert isinstance(err.value.__cause__, psycopg.OperationalError)


def test_a_schema_newer_than_the_exporter_is_refused_and_left_alone(postgres_url):
    Store("x", repository=open_repository(postgres_url)).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(RuntimeError,
                       match=rf"schema version 99 is newer than this exporter understands \({SCHEMA_VERSION}\)"):
        open_repository(postgres_url)
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT value FROM meta").fetchall() == [("99",)]


def test_connections_the_server_dropped_are_replaced(postgres_cluster, postgres_url):
    store = Store("x", repository=open_repository(postgres_url))
    try:
        store.register_fmgr_ids(["a"], "api")
        assert postgres_cluster.terminate("postgres") >= 1  # a restart or failover does as much
        assert store.write_health() == (True, "")
        assert store.register_fmgr_ids(["b"], "api") == 1
        assert store.repo.ping()
        assert store.fmgr_pending()[0] == 2
    finally:
        store.close()


def test_a_transaction_cut_off_fails_then_the_next_one_commits(postgres_cluster, postgres_url):
    store = Store("x", repository=open_repository(postgres_url))
    try:
        with pytest.raises(psycopg.OperationalError), store.repo.transaction() as tx:
            tx.fmgr_register("lost", T0, "api")
            postgres_cluster.terminate("postgres")
            tx.fmgr_register("lost-too", T0, "api")
        ok, why = store.write_health()
        assert not ok and why.startswith("store: last write failed: "), why
        assert store.register_fmgr_ids(["kept"], "api") == 1
        assert store.write_health() == (True, "")
        assert [t["persistentId"] for t in store.list_fmgr_tasks(None, 10)] == ["kept"]
        assert store.fmgr_pending()[0] == 1
    finally:
        store.close()


def test_a_read_only_database_is_not_ready_for_writes(postgres_cluster):
    name = postgres_cluster.create_database()
    store = Store("x", repository=open_repository(postgres_cluster.url(name)))
    try:
        # What a failover to a standby, or an operator's read-only switch, looks like to new connections.
        postgres_cluster.sql(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        postgres_cluster.terminate(name)
        assert store.write_health() == (False, "store: the database accepts no writes (read-only)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            store.register_fmgr_ids(["a"], "api")
        postgres_cluster.sql(f"ALTER DATABASE {name} RESET default_transaction_read_only")
        postgres_cluster.terminate(name)
        assert store.register_fmgr_ids(["a"], "api") == 1
        assert store.write_health() == (True, "")
    finally:
        store.close()
        postgres_cluster.drop_database(name)


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster this test alone stops and starts."""
    cluster = PostgresCluster(require_postgres())
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_the_database_going_away_and_coming_back(own_cluster):
    repo = PostgresRepository(own_cluster.url(), timeout=1.0, probe_timeout=0.5, reconnect_timeout=1.0)
    store = Store(repo.path, repository=repo)
    try:
        store.register_fmgr_ids(["before"], "api")
        assert store.write_health() == (True, "")
        own_cluster.stop()

        ok, why = store.write_health()
        assert not ok and why.startswith("store: "), why
        assert not store.ping()
        with pytest.raises(psycopg.OperationalError):
            store.register_fmgr_ids(["during"], "api")
        # Longer than the pool's reconnection retries: it has given up on them, the next operation retries.
        time.sleep(1.5)

        own_cluster.start()
        deadline, errors = time.monotonic() + 20, []
        while True:
            try:
                assert store.register_fmgr_ids(["after"], "api") == 1
                break
            except psycopg.OperationalError as exc:
                errors.append(str(exc))
                assert time.monotonic() < deadline, errors
        assert len(errors) <= 1, errors  # at most the first try waited for the pool to reconnect
        assert store.write_health() == (True, "") and store.ping()
        assert {t["persistentId"] for t in store.list_fmgr_tasks(None, 10)} == {"before", "after"}
        assert store.fmgr_pending()[0] == 2
    finally:
        store.close()

