"""A store that cannot be read takes out only the parts of a scrape that read it (node_exporter's model).

Each section of ``/metrics`` (each CDN task kind, fmgr, health, leases) is built whole or left out, and
``cdnetworks_scrape_collector_success{collector}`` says which. With the store's tables gone from under the
exporter (renamed by another client: a broken migration, a PostgreSQL blip on the change log), ``/metrics``
still answers 200 with ``cdnetworks_up`` and the request counters, the store sections at 0; once the tables are
back every section is served again. Both backends.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
import requests
from conftest import make_config
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter


def scrape(exporter: Exporter) -> tuple[int, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    assert exporter.server is not None
    answer = requests.get(f"http://127.0.0.1:{exporter.server.port}/metrics", timeout=10)
    out = {}
    if answer.status_code == 200:
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return answer.status_code, out


def sections(metrics: dict) -> dict[str, float]:
    return {dict(labels)["collector"]: v for (name, labels), v in metrics.items()
            if name == "cdnetworks_scrape_collector_success"}


def names(metrics: dict) -> set[str]:
    return {name for name, _ in metrics}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path) -> tuple[str, Callable[[str], None]]:
    """(storage path or URL, run one SQL statement on the store as another client)."""
    if request.param == "sqlite":
        path = str(tmp_path / "exporter.db")

        def sql(statement: str) -> None:
            with sqlite3.connect(path) as conn:
                conn.execute(statement)

        return path, sql
    cluster = request.getfixturevalue("postgres_cluster")
    url = request.getfixturevalue("postgres_url")
    schema = url.rpartition("%3D")[2]
    return url, lambda statement: cluster.sql(statement.replace("TABLE ", f"TABLE {schema}.", 1))


def test_a_store_that_cannot_be_read_takes_out_only_its_sections(sim_factory, backend, caplog):
    storage, sql = backend
    sim = sim_factory()
    config = make_config(sim.url, storage, fmgr={"enabled": True, "windows": ["1h"], "endpoint": sim.url})
    exporter = Exporter(config, listen_address="127.0.0.1:0")
    assert exporter.server is not None
    exporter.server.start()
    try:
        status, healthy = scrape(exporter)
        assert status == 200
        assert sections(healthy) == {"prefetch": 1, "fmgr": 1, "health": 1, "leases": 1}
        assert "cdnetworks_prefetch_tasks" in names(healthy)

        # The tables every store section reads (and, on PostgreSQL, the change log each scrape catches up with).
        moved = ["cdn_tasks", "fmgr_tasks"] + (["changes"] if storage.startswith("postgresql") else [])
        for table in moved:
            sql(f"ALTER TABLE {table} RENAME TO {table}_away")
        for _ in range(3):
            status, broken = scrape(exporter)
            assert status == 200
            assert sections(broken) == {"prefetch": 0, "fmgr": 0, "health": 1, "leases": 1}
            assert "cdnetworks_prefetch_tasks" not in names(broken)  # left out whole, never half a section
            assert "cdnetworks_fmgr_tasks" not in names(broken)
            assert {"cdnetworks_up", "cdnetworks_api_requests_total", "cdnetworks_replica_leases",
                    "cdnetworks_exporter_build_info"} <= names(broken)
        failed = [r for r in caplog.records if "section failed and is left out" in r.getMessage()]
        assert len(failed) == 2  # once per section per outage, not once per scrape

        for table in moved:
            sql(f"ALTER TABLE {table}_away RENAME TO {table}")
        status, again = scrape(exporter)
        assert status == 200
        assert sections(again) == {"prefetch": 1, "fmgr": 1, "health": 1, "leases": 1}
        assert names(again) == names(healthy)
        assert any("section is served again" in r.getMessage() for r in caplog.records)
    finally:
        exporter.stop()
