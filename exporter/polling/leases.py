"""Leases: which replica runs which poller when several replicas share one store.

Each poller (``cdn:<account>:<kind>``, and ``fmgr`` for the Fmgr poller and the store's maintenance) runs on
the one replica holding its lease. A lease is a row in the shared database with a holder, a generation and an
expiry computed by the database's own clock (replicas' clocks never compare). Every replica tries to take or
renew every lease each ``ttl / 4``: the holder renews, the others take a lease only once it has expired, and
taking it over bumps its generation.

Safety does not rest on timing alone:

* a holder sends a vendor request only while its lease has at least the request's timeout left (measured
  from when the renewal was *sent*, on the local monotonic clock), so a request never outlives the lease:
  the timeout bounds the whole request, body included (``vendor_http``'s deadline cuts a vendor that
  trickles its answer), not just each read of it;
* every write a poller makes carries its lease (``Fence``); the database refuses it once another replica holds
  a newer generation (``LeaseLost``), so a replica that stalled past its expiry cannot overwrite its
  successor's plan, budget or tasks.

A dead holder's pollers move after at most ``ttl`` (its expiry) plus ``ttl / 4`` (the next attempt).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

FMGR_LEASE = "fmgr"
RETENTION_LEASE = "retention"  # pruning the store: one replica at a time, not a poller
# Renewals may come late by this much (a slow database answer, a scheduling hiccup) before a holder stops.
MARGIN = 1.0


class LeaseLost(Exception):
    """A write fenced by a lease that another replica has taken since."""


@dataclass(frozen=True)
class Fence:
    name: str
    holder: str
    generation: int


@dataclass(frozen=True)
class Grant:
    """A lease acquired or renewed, and its generation (it changes whenever the holder changes)."""

    generation: int


class LeaseStore(Protocol):
    def lease_acquire(self, name: str, holder: str, ttl: float) -> Grant | None: ...
    def lease_release(self, name: str, holder: str) -> None: ...


def cdn_lease(account: str, kind: str) -> str:
    return f"cdn:{account}:{kind}"


def poller_of(lease: str) -> tuple[str, str]:
    """(account, api) of a lease's poller, as ``cdnetworks_replica_leases`` labels it."""
    if lease == FMGR_LEASE:
        return "", "fmgr"
    _, account, kind = lease.split(":", 2)
    return account, kind


@dataclass
class _Held:
    fence: Fence
    valid_until: float  # local monotonic time
    grant: Grant


class Leases:
    """This replica's side of the leases: a thread that takes and renews them, and what pollers ask."""

    def __init__(self, store: LeaseStore, names: Iterable[str], *, ttl: float, holder: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.names = tuple(names)
        self.ttl = ttl
        self.holder = holder or uuid.uuid4().hex
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the renewing thread
    def refresh(self) -> None:
        """One round: take or renew every lease."""
        for name in self.names:
            if self._stop.is_set():
                return
            started = self._monotonic()
            try:
                grant = self.store.lease_acquire(name, self.holder, self.ttl)
            except Exception as exc:  # the database is unreachable: keep what is still valid, retry next round
                log.warning("lease %s: cannot renew (%s)", name, exc)
                continue
            with self._lock:
                before = self._held.get(name)
                if grant is None:
                    self._held.pop(name, None)
                else:
                    fence = Fence(name, self.holder, grant.generation)
                    self._held[name] = _Held(fence, started + self.ttl - MARGIN, grant)
            gained = grant is not None and (before is None or before.fence.generation != grant.generation)
            lost = grant is None and before is not None
            if gained:
                log.info("lease %s: taken (generation %d)", name, grant.generation if grant else 0)
            if lost:
                log.warning("lease %s: held by another replica now", name)

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            self.refresh()

    def stop(self, release: bool = True) -> None:
        """Stop renewing; ``release`` hands the leases over at once (a clean shutdown or reload) instead of
        letting the others wait for them to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            held, self._held = list(self._held), {}
        if release:
            for name in held:
                try:
                    self.store.lease_release(name, self.holder)
                except Exception as exc:  # it expires on its own
                    log.warning("lease %s: cannot release (%s); it expires in %.0fs", name, exc, self.ttl)

    # ------------------------------------------------------------------ what pollers ask
    def remaining(self, name: str) -> float:
        """Seconds this replica still holds ``name`` for certain (0 when it does not)."""
        with self._lock:
            held = self._held.get(name)
        return 0.0 if held is None else max(0.0, held.valid_until - self._monotonic())

    def fence(self, name: str) -> Fence | None:
        with self._lock:
            held = self._held.get(name)
        return held.fence if held is not None and held.valid_until > self._monotonic() else None

    def grant(self, name: str) -> Grant | None:
        with self._lock:
            held = self._held.get(name)
        return held.grant if held is not None else None

    def held(self) -> set[str]:
        now = self._monotonic()
        with self._lock:
            return {name for name, h in self._held.items() if h.valid_until > now}


class LeaseView:
    """One poller's view of its lease: ``None`` leases means a single exporter, which runs every poller."""

    def __init__(self, leases: Leases | None, name: str) -> None:
        self.leases = leases
        self.name = name
        self._generation: int | None = None

    def usable_for(self, seconds: float) -> bool:
        """True when a request that may take ``seconds`` ends before the lease could move."""
        return self.leases is None or self.leases.remaining(self.name) > seconds

    def fence(self) -> Fence | None:
        if self.leases is None:
            return None
        fence = self.leases.fence(self.name)
        if fence is None:
            raise LeaseLost(f"lease {self.name} is not held")
        return fence

    def newly_taken(self) -> Grant | None:
        """The grant, once, when this replica took the lease (again) since the last call: the poller then
        reloads what its predecessor stored."""
        if self.leases is None:
            return None
        grant = self.leases.grant(self.name)
        if grant is None or grant.generation == self._generation:
            return None
        self._generation = grant.generation
        return grant
