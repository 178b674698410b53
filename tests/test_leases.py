"""Leases on a real PostgreSQL store: one holder at a time, takeover only after expiry, fenced writes.

Two ``Leases`` (two replicas' holders) on one database. The monotonic clock each replica measures its own
time left with is a test clock here, so that a "stalled" replica can be made to believe in a lease the
database has already given away: the fence must stop its writes anyway.
"""

from __future__ import annotations

import time

import pytest
from conftest import Clock

from exporter.polling.leases import Fence, LeaseLost, Leases, LeaseView
from exporter.storage.model import CdnTask
from exporter.storage.repository import open_repository
from exporter.storage.store import Store

pytestmark = pytest.mark.postgres

TTL = 2.0


@pytest.fixture
def store(postgres_url):
    s = Store("", repository=open_repository(postgres_url))
    yield s
    s.close()


def test_one_holder_at_a_time_and_a_takeover_only_after_expiry(store):
    a, b = Leases(store.repo, ["cdn:acme:prefetch"], ttl=TTL), Leases(store.repo, ["cdn:acme:prefetch"], ttl=TTL)
    a.refresh()
    b.refresh()
    assert a.held() == {"cdn:acme:prefetch"} and b.held() == set()
    first = a.fence("cdn:acme:prefetch")
    assert first is not None
    a.refresh()  # a renewal keeps the generation
    assert a.fence("cdn:acme:prefetch") == first
    time.sleep(TTL + 0.3)  # a stops renewing: its lease runs out on the database's clock
    b.refresh()
    taken = b.fence("cdn:acme:prefetch")
    assert taken is not None and taken.generation == first.generation + 1
    a.refresh()  # a is back: the lease is b's now
    assert a.held() == set() and a.remaining("cdn:acme:prefetch") == 0.0


def test_a_released_lease_is_taken_at_once(store):
    a, b = Leases(store.repo, ["fmgr"], ttl=60.0), Leases(store.repo, ["fmgr"], ttl=60.0)
    a.refresh()
    b.refresh()
    assert b.held() == set()
    a.stop(release=True)
    b.refresh()
    assert b.held() == {"fmgr"}


def test_a_stalled_holder_cannot_write_over_its_successor(store):
    """The replica stalled past its lease (its own clock says it still holds it): its writes are refused."""
    mono = Clock(0.0)
    a = Leases(store.repo, ["cdn:acme:prefetch"], ttl=TTL, monotonic=mono)
    b = Leases(store.repo, ["cdn:acme:prefetch"], ttl=TTL)
    a.refresh()
    stale = LeaseView(a, "cdn:acme:prefetch").fence()
    assert stale is not None
    time.sleep(TTL + 0.3)
    b.refresh()
    fresh = b.fence("cdn:acme:prefetch")
    assert fresh is not None and fresh.generation > stale.generation
    assert a.remaining("cdn:acme:prefetch") > 0  # a's clock stood still: it would go on
    task = CdnTask("http://x/1", 1000.0, "success", finish_ts=1030.0, rate=100.0)
    with pytest.raises(LeaseLost):
        store.upsert_cdn_tasks("acme", "prefetch", [task], fence=stale)
    with pytest.raises(LeaseLost):
        store.set_state("cdn:acme:prefetch", {"plan": "stale"}, fence=stale)
    assert store.cdn_task_count() == 0 and store.get_state("cdn:acme:prefetch") is None
    assert sum(v for _, v in store.counters("prefetch_tasks_finished_total")) == 0
    store.upsert_cdn_tasks("acme", "prefetch", [task], fence=fresh)
    store.set_state("cdn:acme:prefetch", {"plan": "fresh"}, fence=fresh)
    assert store.cdn_task_count() == 1 and store.get_state("cdn:acme:prefetch") == {"plan": "fresh"}
    with pytest.raises(LeaseLost):  # a fence of a lease nobody ever took
        store.set_state("x", 1, fence=Fence("cdn:nobody:prefetch", "h", 1))


def test_a_holder_stops_sending_before_its_lease_could_move(store):
    """A request is sent only while the lease outlasts its timeout, measured from when the renewal was sent."""
    mono = Clock(0.0)
    a = Leases(store.repo, ["fmgr"], ttl=60.0, monotonic=mono)
    a.refresh()
    view = LeaseView(a, "fmgr")
    assert view.usable_for(30.0)
    mono.advance(28.0)  # 59 s of the lease were certain (60 less a second of margin): 31 s left
    assert view.usable_for(30.0) and not view.usable_for(31.0)
    mono.advance(30.0)
    assert not view.usable_for(1.5)
    mono.advance(5.0)
    with pytest.raises(LeaseLost):
        view.fence()
