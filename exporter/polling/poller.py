"""Wiring: every worker of one configuration (CDN pollers, the Fmgr poller, retention, the quota pollers), their
leases when replicas share the store, started and stopped together. The workers themselves are in
``exporter.polling.cdn_poller``, ``exporter.fmgr.poller``, ``exporter.polling.retention`` and
``exporter.polling.quota``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

from exporter.config import Config
from exporter.fmgr.poller import FmgrPoller
from exporter.fmgr.wire import FmgrClient
from exporter.metrics.health import ApiHealth
from exporter.polling.cdn_poller import CdnPoller
from exporter.polling.leases import FMGR_LEASE, RETENTION_LEASE, Leases, LeaseView, cdn_lease, poller_of
from exporter.polling.quota import quota_leases, quota_pollers
from exporter.polling.retention import RetentionWorker
from exporter.polling.worker import Worker
from exporter.storage.store import Store
from exporter.vendor.cdn import CdnClient


class PollerGroup:
    """All workers of one configuration, started and stopped together."""

    def __init__(self, config: Config, store: Store, health: ApiHealth, *, clock: Callable[[], float] = time.time,
                 session_factory: Callable[[], requests.Session] | None = None) -> None:
        make_session = session_factory or requests.Session
        self.workers: list[Worker] = []
        self.cdn: list[CdnPoller] = []
        # Replicas sharing the store share the pollers out; alone, this exporter runs them all.
        self.leases = (Leases(store.repo, [cdn_lease(a.name, k) for a in config.accounts for k, _ in
                                           config.task_kinds()] + [FMGR_LEASE, RETENTION_LEASE]
                              + quota_leases(config), ttl=config.storage.lease_ttl)
                       if store.shared else None)
        for account in config.accounts:
            for kind, kcfg in config.task_kinds():
                client = CdnClient(account, session=make_session(), clock=clock, timeout=kcfg.request_timeout,
                                   health=health, max_response_bytes=kcfg.max_response_bytes)
                poller = CdnPoller(account, kind, kcfg, store, client, health, clock=clock,
                                   lease=LeaseView(self.leases, cdn_lease(account.name, kind)))
                self.cdn.append(poller)
                self.workers.append(poller)
        fcfg = config.fmgr
        fclient = None
        if fcfg.enabled and fcfg.endpoint:
            fclient = FmgrClient(fcfg.endpoint, session=make_session(), timeout=fcfg.request_timeout,
                                 health=health, max_response_bytes=fcfg.max_response_bytes)
        if fcfg.enabled and fcfg.persistent_ids:
            store.register_fmgr_ids(list(fcfg.persistent_ids), "config")
        self.fmgr = FmgrPoller(fcfg, store, fclient, health, clock=clock, lease=LeaseView(self.leases, FMGR_LEASE))
        self.workers.append(self.fmgr)
        self.retention = RetentionWorker(config, store, clock=clock, lease=LeaseView(self.leases, RETENTION_LEASE))
        self.workers.append(self.retention)
        # The daily quotas: their own workers, budgets and leases (exporter/polling/quota.py).
        self.quota = quota_pollers(config, store, health, self.leases, clock=clock, make_session=make_session)
        self.workers.extend(self.quota)

    def start(self) -> None:
        if self.leases is not None:
            self.leases.start()
        for w in self.workers:
            w.start()

    def held(self) -> set[tuple[str, str]] | None:
        """(account, api) of the pollers this replica runs now; None when it runs them all."""
        return None if self.leases is None else {poller_of(name) for name in self.leases.held()
                                                  if name != RETENTION_LEASE}

    def stop(self) -> None:
        for w in self.workers:
            w._stop.set()
            w._wake.set()
        for w in self.workers:
            w.stop()
        if self.leases is not None:
            self.leases.stop(release=True)  # the other replicas take over at once, not at expiry
