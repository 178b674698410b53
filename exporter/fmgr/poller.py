"""The Fmgr poller: polls tracked ids that are not final (or final by notification only) within the budget.

A ``Worker`` (``exporter.polling.worker``) on its own lease; what a poll's answer changes is
``exporter.fmgr.tracking``'s, through the store.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from exporter.config import FmgrConfig
from exporter.fmgr.wire import FmgrApiError, FmgrClient, Lifecycle
from exporter.metrics.health import ApiHealth
from exporter.polling.budget import RateBudget, backoff_delay
from exporter.polling.leases import FMGR_LEASE, MARGIN, LeaseView
from exporter.polling.worker import Worker
from exporter.storage.store import Store

log = logging.getLogger(__name__)

# An Fmgr id the vendor answers "not found" (its failure body, about that id: a typo, or not created yet) is
# retried every UNKNOWN_RETRY poll intervals, and given up once it has been tracked for UNKNOWN_ID_EXPIRY (or
# UNKNOWN_RETRY * 3 poll intervals, if longer) without the vendor ever knowing it.
UNKNOWN_RETRY = 5
UNKNOWN_ID_EXPIRY = 3600.0


def fmgr_lifecycle(cfg: FmgrConfig) -> Lifecycle:
    """The polling policy of a task's lifecycle (README: "Fmgr task lifecycle") from the fmgr config."""
    return Lifecycle(poll_interval=cfg.poll_interval, notify_grace=cfg.notify_grace,
                     confirm_delay=cfg.confirm_delay)


class FmgrPoller(Worker):
    """Polls tracked Fmgr ids that are not final (or final by notification only) within the budget."""

    name = "poll-fmgr"

    def __init__(self, cfg: FmgrConfig, store: Store, client: FmgrClient | None, health: ApiHealth, *,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 maintenance_every: float = 300.0,
                 lease: LeaseView | None = None):
        super().__init__(clock)
        self.cfg, self.store, self.client, self.health = cfg, store, client, health
        self.lifecycle = fmgr_lifecycle(cfg)
        self.rng = rng or random.Random()
        self.given_up_unknown = 0  # ids given up as never known to the vendor, not yet logged
        self.lease = lease or LeaseView(None, FMGR_LEASE)
        self.stop_timeout = cfg.request_timeout + 5.0
        self._restore()
        self.maintenance_every = maintenance_every
        self.last_maintenance = 0.0
        if client is not None:
            if client.health is None:
                client.health = health  # its requests are counted with the rest of this poller's health
            health.declare("", "fmgr", up=False)

    @property
    def unknown_id_expiry(self) -> float:
        """How long an id the vendor never knew is tracked before it is given up."""
        return max(UNKNOWN_ID_EXPIRY, UNKNOWN_RETRY * 3 * self.cfg.poll_interval)

    def _restore(self) -> None:
        saved = self.store.get_state("fmgr:budget")
        # Not paced within its period: Fmgr polls are spread by their own due times, and its budget is per
        # second (10 per 1s by default), far shorter than any poll interval.
        self.budget = RateBudget(self.cfg.rate_limit, self.clock, saved, burst=self.cfg.rate_limit.requests)
        if isinstance(saved, dict) and saved.get("in_flight") is not None:
            # Sent, and never recorded as answered (see CdnPoller._restore).
            self.budget.record(float(saved["in_flight"]) + self.cfg.request_timeout)
        self.failures = 0
        self.not_before = 0.0

    def _save_budget(self, in_flight: float | None = None) -> None:
        self.store.set_state("fmgr:budget", {**self.budget.state(), "in_flight": in_flight},
                             fence=self.lease.fence())

    def next_run(self) -> float:
        now = self.clock()
        if not self.lease.usable_for(self.cfg.request_timeout + MARGIN):
            return now + 1.0  # another replica runs the Fmgr poller
        at = self.last_maintenance + self.maintenance_every
        if self.client is not None:
            due = self.store.fmgr_next_due()
            if due is not None:
                at = min(at, max(due, self.not_before, now + self.budget.wait_time()))
        return at

    def on_unexpected(self) -> None:
        self.failures += 1
        self.not_before = self.clock() + backoff_delay(self.failures, self.rng)

    def step(self) -> None:
        if not self.lease.usable_for(self.cfg.request_timeout + MARGIN):
            return
        if self.lease.newly_taken() is not None:
            self._restore()
        now = self.clock()
        if now >= self.last_maintenance + self.maintenance_every:
            self.last_maintenance = now
            n = self.store.abandon_old_fmgr(now - self.cfg.max_task_age)
            if n:
                log.warning("fmgr: stopped polling %d task(s) older than max_task_age", n)
            if self.given_up_unknown:
                log.warning("fmgr: gave up %d id(s) the vendor did not know %.0f minutes after they were registered",
                            self.given_up_unknown, self.unknown_id_expiry / 60)
                self.given_up_unknown = 0
        if self.client is None or now < self.not_before:
            return
        for task_id in self.store.fmgr_due(now, limit=self.cfg.rate_limit.requests):
            if (self.budget.wait_time() > 0 or self._stop.is_set()
                    or not self.lease.usable_for(self.cfg.request_timeout + MARGIN)):
                break
            self._save_budget(in_flight=self.clock())
            try:
                ok = self.poll_one(task_id)
            finally:
                self.budget.record()  # at completion, as for the CDN budget
                self._save_budget()
            if not ok:
                break

    def poll_one(self, task_id: str) -> bool:
        """Poll one id; False when the API looks unhealthy and the rest should wait."""
        assert self.client is not None
        try:
            status = self.client.status(task_id)  # counted (result, duration) by the client
        except FmgrApiError as exc:
            now = self.clock()
            if exc.kind == "not_found":
                # The vendor's failure body says it does not know this id: an answer about the id, not an outage
                # (a wrong endpoint answers a bare 404, which the client calls malformed). Counted in
                # cdnetworks_fmgr_unknown_ids; an id never known is given up after unknown_id_expiry.
                self.health.poll_result("", "fmgr", True, now)
                task = self.store.fmgr_task(task_id)
                give_up = (task is not None and task["code"] is None
                           and now - task["firstSeen"] >= self.unknown_id_expiry)
                self.store.fmgr_poll_failed(task_id, f"not_found: {exc}", now + self.cfg.poll_interval * UNKNOWN_RETRY,
                                            give_up=give_up, fence=self.lease.fence())
                if give_up:
                    self.given_up_unknown += 1
                    log.debug("fmgr: %s is still unknown to the vendor; given up", task_id)
                return True
            self.failures += 1
            self.health.poll_result("", "fmgr", False, now)
            delay = max(backoff_delay(self.failures, self.rng), exc.retry_after or 0.0)
            self.store.fmgr_poll_failed(task_id, f"{exc.kind}: {exc}", now + delay, fence=self.lease.fence())
            if exc.kind == "rate_limited":
                self.budget.block_until(now + delay)
            self.not_before = now + delay
            log.warning("fmgr: %s polling %s (%s); retrying in %.1fs", exc.kind, task_id, exc, delay)
            return False
        now = self.clock()
        self.failures = 0
        self.health.poll_result("", "fmgr", True, now)
        self.store.apply_fmgr_status(status, source="poll", polled=True, lifecycle=self.lifecycle,
                                     fence=self.lease.fence())
        return True
