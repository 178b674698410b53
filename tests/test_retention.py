"""Retention (exporter/polling/retention.py): the store is pruned on a worker and a lease of its own."""

from __future__ import annotations

import pytest
from conftest import T0, Clock, make_config

from exporter.metrics.health import ApiHealth
from exporter.polling.leases import RETENTION_LEASE, Leases, LeaseView
from exporter.polling.poller import PollerGroup
from exporter.polling.retention import RETENTION_EVERY, RetentionWorker
from exporter.storage.model import CdnTask
from exporter.storage.repository import open_repository
from exporter.storage.store import Store

DAY = 86400.0


def tasks(*ages: float) -> list[CdnTask]:
    return [CdnTask(url=f"https://x.example/{i}", create_ts=T0 - age, status="success", finish_ts=T0 - age + 60,
                    rate=100.0) for i, age in enumerate(ages)]


def test_retention_drops_only_what_no_window_and_no_query_needs(tmp_path):
    clock = Clock(T0)
    config = make_config("http://127.0.0.1:9", str(tmp_path / "db.sqlite"))
    store = Store(config.storage.path, clock=clock)
    try:
        # The longest window is 24h and the API answers for 3 days: kept up to 3 days and an hour.
        store.upsert_cdn_tasks("acme", "prefetch", tasks(3600, DAY + 60, 3 * DAY, 3 * DAY + 7200, 5 * DAY))
        worker = RetentionWorker(config, store, clock=clock)
        assert worker.next_run() <= clock()
        worker.step()
        assert store.cdn_task_count("acme", "prefetch") == 3
        assert worker.next_run() == T0 + RETENTION_EVERY  # then every few minutes, not in a loop
    finally:
        store.close()


def test_the_group_runs_retention_on_a_worker_of_its_own(tmp_path):
    config = make_config("http://127.0.0.1:9", str(tmp_path / "db.sqlite"), fmgr={"enabled": False})
    store = Store(config.storage.path)
    try:
        group = PollerGroup(config, store, ApiHealth())
        assert isinstance(group.retention, RetentionWorker) and group.retention in group.workers
        assert group.held() is None  # alone, it runs everything
    finally:
        store.close()


@pytest.mark.postgres
def test_one_replica_prunes_at_a_time_and_the_lease_is_no_poller(postgres_url, tmp_path):
    stores = [Store("", repository=open_repository(postgres_url)) for _ in range(2)]
    config = make_config("http://127.0.0.1:9", postgres_url)
    try:
        groups = [PollerGroup(config, s, ApiHealth()) for s in stores]
        for g in groups:
            assert g.leases is not None
            g.leases.refresh()
        holders = [g for g in groups if g.leases is not None and RETENTION_LEASE in g.leases.held()]
        assert len(holders) == 1
        assert holders[0].retention.lease.usable_for(0.0)
        other = next(g for g in groups if g is not holders[0])
        assert not other.retention.lease.usable_for(0.0)
        assert other.retention.next_run() > other.retention.clock()  # it waits for the lease
        for g in groups:  # the lease is not a poller: cdnetworks_replica_leases never names it
            assert all(api in ("prefetch", "fmgr") for _, api in g.held() or set())
        standalone = Leases(stores[0].repo, [RETENTION_LEASE], ttl=60.0)
        standalone.refresh()
        assert not LeaseView(standalone, RETENTION_LEASE).usable_for(0.0)  # held by the replica already
    finally:
        for g in groups:
            if g.leases is not None:
                g.leases.stop(release=True)
        for s in stores:
            s.close()
