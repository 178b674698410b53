"""Polling the daily quotas (exporter/quotas.py): one worker per (account, quota kind), on a budget of its own.

Each worker reads its quota every ``quota.poll_interval`` within ``quota.rate_limit``, a budget kept apart from
the task queries' (the vendor limits each API on its own), stored like theirs so that neither a restart nor a
failover bursts past it. A verified answer is stored whole (state ``quota:<account>:<kind>``: when it was read,
every unit's limit and remaining amount), and the collector serves it from there; a failed request is counted
and classified like every vendor call, and changes nothing that is served.

Why the store and not the poller's memory: with several replicas, one of them polls (the holder of the lease
``cdn:<account>:<kind>_quota``) and any of them may be scraped. Served from the store, every replica shows the
same values, a failover shows them without a gap, and a restart keeps them (until the vendor's day ends: the
collector drops an answer of an earlier day, which the vendor has reset since).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import requests

from exporter.config import Account, Config, QuotaConfig
from exporter.metrics.health import ApiHealth
from exporter.polling.budget import RateBudget, after_failure, backoff_delay
from exporter.polling.leases import MARGIN, Leases, LeaseView, cdn_lease
from exporter.polling.worker import Worker
from exporter.quotas import BY_NAME, VOLUME_UNITS, QuotaKind, vendor_day_start
from exporter.storage.store import Store
from exporter.vendor.http import VendorError
from exporter.vendor.quota import QuotaClient

log = logging.getLogger(__name__)

AUTH_BACKOFF = 600.0  # a key that may not query quotas will not be allowed in a minute: say so, wait long


def lease_name(account: str, kind: QuotaKind) -> str:
    """The lease of one quota poller: a CDN API of the account (``cdnetworks_replica_leases{api="<kind>_quota"}``)."""
    return cdn_lease(account, kind.api)


STATE_PREFIX = "quota:"


def state_key(account: str, kind: str) -> str:
    """Where the last verified answer of ``account``'s ``kind`` quota is stored."""
    return f"{STATE_PREFIX}{account}:{kind}"


def answer_state(ts: float, units: dict[str, tuple[int, int]]) -> dict[str, Any]:
    return {"ts": ts, "units": {unit: [limit, remaining] for unit, (limit, remaining) in units.items()}}


def read_answer(value: Any) -> tuple[float, dict[str, tuple[float, float]]] | None:
    """(when it was read, unit -> (limit, remaining)) of a stored answer; None when there is none."""
    if not isinstance(value, dict) or not isinstance(value.get("units"), dict):
        return None
    return float(value["ts"]), {unit: (float(pair[0]), float(pair[1])) for unit, pair in value["units"].items()}


def current(value: Any, now: float) -> tuple[float, dict[str, tuple[float, float]]] | None:
    """A stored answer with its figures when it was read in the vendor's day holding ``now``; with none (``{}``)
    when it is of an earlier day: the vendor has started the quota over since, and the old figures would say
    that today's quota is spent. None when nothing was stored."""
    answer = read_answer(value)
    if answer is None:
        return None
    ts, units = answer
    return (ts, units) if vendor_day_start(ts) == vendor_day_start(now) else (ts, {})


def pollers(config: Config) -> list[tuple[str, str]]:
    """(account, api) of every poller the configuration runs: ``config.pollers()`` and the quota pollers
    (``api`` = ``<kind>_quota``). What the lease gauge lists and the health keeps across a reload."""
    return config.pollers() + [(account, BY_NAME[kind].api) for account, kind in config.quota.pollers(config.accounts)]


class QuotaPoller(Worker):
    """One account's quota of one kind: read every poll interval, as the budget allows."""

    def __init__(self, account: Account, kind: QuotaKind, cfg: QuotaConfig, store: Store, client: QuotaClient,
                 health: ApiHealth, *, clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 lease: LeaseView | None = None) -> None:
        super().__init__(clock)
        self.account, self.kind, self.cfg = account, kind, cfg
        self.store, self.client, self.health = store, client, health
        self.name = f"poll-{kind.api}-{account.name}"
        self.rng = rng or random.Random()
        self._lease_name = lease_name(account.name, kind)
        self._key = state_key(account.name, kind.name)
        self.lease = lease or LeaseView(None, self._lease_name)
        self.stop_timeout = cfg.request_timeout + 5.0
        self.requests_sent = 0  # since start (tests count with it)
        self._restore()
        health.declare(account.name, kind.api)

    def _restore(self) -> None:
        """The budget, and when the next read is due, as whoever ran this worker last stored them."""
        saved = self.store.get_state(self._lease_name + ":budget")
        self.budget = RateBudget(self.cfg.rate_limit, self.clock, saved)
        if isinstance(saved, dict) and saved.get("in_flight") is not None:
            # Sent and never recorded as answered: it may have reached the vendor (see CdnPoller._restore).
            self.budget.record(float(saved["in_flight"]) + self.cfg.request_timeout)
        self.not_before = float(saved.get("not_before") or 0.0) if isinstance(saved, dict) else 0.0
        self.failures = 0
        answer = read_answer(self.store.get_state(self._key))
        self.due = 0.0 if answer is None else answer[0] + self.cfg.poll_interval
        if answer is not None:
            self.health.restore_last_ok(self.account.name, self.kind.api, answer[0])

    def next_run(self) -> float:
        now = self.clock()
        if not self.lease.usable_for(self.cfg.request_timeout + MARGIN):
            return now + 1.0  # another replica polls this quota, or the lease is being renewed
        return max(self.due, self.not_before, now + self.budget.wait_time())

    def on_unexpected(self) -> None:
        self.failures += 1
        self.not_before = self.clock() + backoff_delay(self.failures, self.rng)

    def _save_budget(self, in_flight: float | None = None) -> None:
        self.store.set_state(self._lease_name + ":budget", {
            **self.budget.state(), "not_before": self.not_before, "in_flight": in_flight,
        }, fence=self.lease.fence())

    def step(self) -> None:
        if not self.may_send(self.lease, self.cfg.request_timeout, self._restore):
            return
        self._save_budget(in_flight=self.clock())
        try:
            try:
                reading = self.client.query(self.kind)
            finally:
                self.budget.record()  # at completion, as for the task queries
                self.requests_sent += 1
        except VendorError as exc:
            self._on_error(exc)
            self._save_budget()
            return
        done = self.clock()
        self.store.set_state(self._key, answer_state(done, dict(reading.units)), fence=self.lease.fence())
        self.health.poll_result(self.account.name, self.kind.api, True, done)
        self.failures = 0
        self.due = done + self.cfg.poll_interval
        self._save_budget()

    def _on_error(self, exc: VendorError) -> None:
        now = self.clock()
        self.health.poll_result(self.account.name, self.kind.api, False, now)
        self.failures += 1
        if exc.kind == "auth":
            self.not_before = now + AUTH_BACKOFF
            log.error("%s: the vendor refused the quota query (%s): check the keys of account %r, and that it may "
                      "query its quotas (quota.accounts); retrying in %.0fs", self.name, exc.message,
                      self.account.name, AUTH_BACKOFF)
            return
        retry = after_failure(self.name, exc.kind, exc.message, exc.retry_after, budget=self.budget,
                              per=self.cfg.rate_limit.per, failures=self.failures, rng=self.rng, now=now, log=log)
        if retry is not None:
            self.not_before = retry


def quota_leases(config: Config) -> list[str]:
    """The leases of the quota pollers ``config`` runs."""
    return [lease_name(account, BY_NAME[kind]) for account, kind in config.quota.pollers(config.accounts)]


def quota_pollers(config: Config, store: Store, health: ApiHealth, leases: Leases | None, *,
                  clock: Callable[[], float], make_session: Callable[[], requests.Session]) -> list[QuotaPoller]:
    """A poller per (account, quota kind) of ``config``, each with a client and an HTTP session of its own."""
    cfg = config.quota
    accounts = {a.name: a for a in config.accounts}
    out = []
    for name, kind_name in cfg.pollers(config.accounts):
        account, kind = accounts[name], BY_NAME[kind_name]
        client = QuotaClient(account, session=make_session(), clock=clock, timeout=cfg.request_timeout,
                             health=health, volume_unit=VOLUME_UNITS[cfg.volume_unit])
        out.append(QuotaPoller(account, kind, cfg, store, client, health, clock=clock,
                               lease=LeaseView(leases, lease_name(name, kind))))
    return out
