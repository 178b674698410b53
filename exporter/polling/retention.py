"""Data retention: what the store keeps, pruned on a worker and a lease of its own.

Tasks older than every window and than the API's reach, Fmgr tasks past their windows and ``max_task_age``, and
the replicas' change log past ``CHANGES_KEPT`` are dropped every ``RETENTION_EVERY`` seconds. With replicas, one
of them at a time does it (the ``retention`` lease), whichever runs which poller: pruning is nobody's poll.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from exporter.config import Config
from exporter.polling.budget import backoff_delay
from exporter.polling.leases import RETENTION_LEASE, LeaseView
from exporter.polling.worker import Worker
from exporter.storage.store import CHANGES_KEPT, Store

log = logging.getLogger(__name__)

RETENTION_EVERY = 300.0
MARGIN_AFTER = 3600.0  # kept this much longer than any window or reach needs (clock skew, a late scrape)


def cdn_keep(config: Config) -> float:
    """Seconds of CDN tasks to keep: the longest window and the API's reach (tasks it can still be asked about)."""
    kinds = [c for _, c in config.task_kinds()]
    return max([c.max_query_age for c in kinds] + [w.seconds for c in kinds for w in c.windows] + [0.0])


def fmgr_keep(config: Config) -> float:
    """Seconds of Fmgr tasks to keep: the longest window and ``max_task_age``."""
    return max([w.seconds for w in config.fmgr.windows] + [config.fmgr.max_task_age])


class RetentionWorker(Worker):
    name = "retention"

    def __init__(self, config: Config, store: Store, *, clock: Callable[[], float] = time.time,
                 lease: LeaseView | None = None, every: float = RETENTION_EVERY,
                 rng: random.Random | None = None) -> None:
        super().__init__(clock)
        self.config, self.store = config, store
        self.lease = lease or LeaseView(None, RETENTION_LEASE)
        self.every = every
        self.last_run = 0.0
        self.not_before = 0.0
        self.failures = 0
        self.rng = rng or random.Random()

    def next_run(self) -> float:
        now = self.clock()
        if not self.lease.usable_for(0.0):
            return now + 1.0  # another replica prunes
        return max(self.last_run + self.every, self.not_before)

    def on_unexpected(self) -> None:
        self.failures += 1
        self.not_before = self.clock() + backoff_delay(self.failures, self.rng)

    def step(self) -> None:
        if not self.lease.usable_for(0.0):
            return
        now = self.clock()
        self.last_run = now
        self.prune(now)
        self.failures = 0

    def prune(self, now: float) -> None:
        config, store = self.config, self.store
        if any(True for _ in config.task_kinds()):
            n = store.prune_cdn(now - cdn_keep(config) - MARGIN_AFTER)
            if n:
                log.info("pruned %d CDN task(s) older than every window", n)
        # Ids listed in the config stay known: pruned, they would be registered as new on the next start.
        store.prune_fmgr(now - fmgr_keep(config) - MARGIN_AFTER, keep=config.fmgr.persistent_ids)
        store.prune_changes(now - CHANGES_KEPT)
