"""Store: upserts, exactly-once counting, exact windows, restart, pruning, Fmgr state. Every test runs on each
storage backend: SQLite, and PostgreSQL (a throwaway cluster, see conftest.py)."""

import pytest
from conftest import Clock

from exporter.fmgr.wire import FmgrItem, FmgrStatus, Lifecycle
from exporter.metrics.windows import window_start
from exporter.storage.repository import open_repository
from exporter.storage.store import CdnTask, Store

T0 = 1795334400.0  # on a minute boundary


@pytest.fixture
def clock():
    return Clock(T0)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def target(request, tmp_path):
    """Where a store keeps its rows: an SQLite file, or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "db.sqlite")
    return request.getfixturevalue("postgres_url")


def open_store(target, clock):
    return Store(target, clock=clock, repository=open_repository(target))


@pytest.fixture
def store(target, clock):
    s = open_store(target, clock)
    yield s
    s.close()


def tasks(n, start, status="success", step=10.0, rate=100.0):
    return [CdnTask(url=f"http://x/{start}/{i}", create_ts=start + i * step, status=status,
                    finish_ts=start + i * step + 30 if status in ("success", "failure") else None,
                    rate=rate if status in ("success", "failure") else None) for i in range(n)]


def test_upsert_counts_each_finish_once(store):
    running = [CdnTask("http://x/1", T0 - 100, "run")]
    assert store.upsert_cdn_tasks("a", "prefetch", running).new == 1
    done = [CdnTask("http://x/1", T0 - 100, "success", finish_ts=T0 - 40, rate=100.0)]
    r = store.upsert_cdn_tasks("a", "prefetch", done)
    assert (r.new, r.changed, r.newly_finished) == (0, 1, 1)
    r = store.upsert_cdn_tasks("a", "prefetch", done)  # the overlap re-reads it: no double count
    assert (r.new, r.changed, r.newly_finished) == (0, 0, 0)
    counts = dict(((lab["account"], lab["status"]), v) for lab, v in store.counters("prefetch_tasks_finished_total"))
    assert counts == {("a", "success"): 1.0}
    h = store.histogram("prefetch_duration_seconds", {"account": "a"}, (30.0, 60.0, 120.0))
    assert h.count == 1 and h.total == 60.0
    assert [c for _, c in h.buckets] == [0.0, 1.0, 1.0, 1.0]


def test_windows_move_tasks_between_statuses(store, clock):
    store.upsert_cdn_tasks("a", "prefetch", tasks(5, T0 - 3000, "wait"))
    (w1h,) = store.cdn_window_counts("a", "prefetch", clock(), [3600])
    assert w1h[("status", "wait")] == 5
    store.upsert_cdn_tasks("a", "prefetch", tasks(3, T0 - 3000, "failure", rate=40.0))
    (w1h,) = store.cdn_window_counts("a", "prefetch", clock(), [3600])
    assert w1h[("status", "wait")] == 2 and w1h[("status", "failure")] == 3
    assert w1h[("rate_sum",)] == 120.0 and w1h[("rate_n",)] == 3


def test_window_sums_equal_exact_sql_counts_to_the_second(store, clock):
    # A task every 7 s over the last 2 h (whole seconds, as the API speaks), mixed statuses; every window at a
    # clock off the minute must equal an exact SQL count of (now - W, now].
    batch = []
    for i in range(1030):
        st = ("success", "failure", "wait", "run")[i % 4]
        batch.append(CdnTask(f"u{i}", T0 - 7200 + i * 7, st, rate=90.0 if st in ("success", "failure") else None))
    store.upsert_cdn_tasks("a", "prefetch", batch)
    for now in (T0 + 42.5, T0 - 1, T0 - 3599, T0 + 7):
        clock.t = now
        windows = [60, 900, 3600, 5400]
        sums = store.cdn_window_counts("a", "prefetch", clock(), windows)
        for w, got in zip(windows, sums, strict=True):
            exact = store.cdn_counts_by_status("a", "prefetch", window_start(now, w), now)
            assert {k[1]: v for k, v in got.items() if k[0] == "status"} == exact, (now, w)
            assert sum(exact.values()) > 0


def test_windows_slide_with_the_clock(store, clock):
    store.upsert_cdn_tasks("a", "prefetch", tasks(1, T0, "success"))
    assert store.cdn_window_counts("a", "prefetch", clock(), [900])[0][("status", "success")] == 1
    clock.t = T0 + 960
    assert store.cdn_window_counts("a", "prefetch", clock(), [900])[0][("status", "success")] == 0


def test_restart_keeps_history_counters_and_state(target, clock):
    s = open_store(target, clock)
    s.upsert_cdn_tasks("a", "prefetch", tasks(4, T0 - 600, "success") + tasks(2, T0 - 300, "wait"))
    s.set_state("cdn:a:prefetch", {"synced_until": T0})
    s.register_fmgr_ids(["id-1", "id-2"], "api")
    s.count_notification("bad_signature")
    before = s.cdn_window_counts("a", "prefetch", clock(), [3600])
    s.close()
    s2 = open_store(target, clock)
    assert s2.cdn_window_counts("a", "prefetch", clock(), [3600]) == before
    assert s2.get_state("cdn:a:prefetch") == {"synced_until": T0}
    assert s2.fmgr_pending()[0] == 2
    assert dict((lab["result"], v) for lab, v in s2.counters("fmgr_notifications_total")) == {"bad_signature": 1.0}
    assert dict(((lab["status"]), v) for lab, v in s2.counters("prefetch_tasks_finished_total")) == {"success": 4.0}
    assert s2.cdn_oldest_unfinished("a", "prefetch") == T0 - 300
    s2.close()


def test_prune_drops_old_tasks_and_buckets(store, clock):
    store.upsert_cdn_tasks("a", "prefetch", tasks(3, T0 - 5 * 86400, "success") + tasks(2, T0 - 60, "success"))
    assert store.prune_cdn(T0 - 4 * 86400) == 3
    assert store.cdn_task_count("a") == 2
    (w,) = store.cdn_window_counts("a", "prefetch", clock(), [7 * 86400])
    assert w[("status", "success")] == 2


def status(task_id, code, items):
    return FmgrStatus(id=task_id, code=code, separate=0,
                      items=tuple(FmgrItem(op=op, code=c, fsize=fs, error=None) for op, c, fs in items))


def test_fmgr_notification_dedup_and_bytes_once(store):
    st = status("t1", 3, [("fetch", 3, 100), ("copy", 2, None)])
    assert store.record_notification(st, "k1", T0) is True
    assert store.record_notification(st, "k1", T0) is False  # vendor retry of the same delivery
    notes = dict((lab["result"], v) for lab, v in store.counters("fmgr_notifications_total"))
    assert notes == {"accepted": 1.0, "duplicate": 1.0}
    assert dict((lab["op"], v) for lab, v in store.counters("fmgr_processed_bytes_total")) == {"fetch": 100.0}
    # A confirming poll with the notified codes does not count the bytes again.
    store.apply_fmgr_status(status("t1", 6, [("fetch", 6, 100), ("copy", 20, None)]), source="poll", polled=True)
    assert dict((lab["op"], v) for lab, v in store.counters("fmgr_processed_bytes_total")) == {"fetch": 100.0}
    task = store.fmgr_task("t1")
    assert task["state"] == "notified" and task["confirmed"] is True


def test_fmgr_notification_top_level_code_is_not_task_code(store):
    # Top-level code 1 in a notification means "notified separately", not "processing".
    store.record_notification(status("t2", 1, [("fetch", 3, 5)]), "k2", T0)
    task = store.fmgr_task("t2")
    assert task["code"] == 3 and task["confirmed"] is False
    # One confirming poll, once the vendor has had time to record the delivery (Lifecycle.confirm_delay).
    assert store.fmgr_due(T0 + 29, 10) == []
    assert store.fmgr_due(T0 + 30, 10) == ["t2"]


def test_fmgr_pending_and_polling_until_final(store, clock):
    store.register_fmgr_ids(["a", "b", "a"], "api")
    assert store.fmgr_pending() == (2, T0)
    store.apply_fmgr_status(status("a", 1, [("fetch", 1, None)]), source="poll", polled=True,
                            lifecycle=Lifecycle(poll_interval=60.0))
    assert store.fmgr_due(T0, 10) == ["b"]
    store.apply_fmgr_status(status("b", 3, [("fetch", 3, 7)]), source="poll", polled=True)
    assert store.fmgr_pending()[0] == 1
    clock.t = T0 + 61
    assert set(store.fmgr_due(clock(), 10)) == {"a", "b"}  # b: completed, its notification phase may follow
    groups = store.fmgr_window_counts(clock(), [3600])
    assert groups["tasks"][0] == {1: 1, 3: 1}
    assert groups["outcomes"][0] == {"succeeded": 1}


def test_fmgr_abandon_after_max_age(store, clock):
    store.register_fmgr_ids(["old"], "config")
    clock.t = T0 + 10 * 86400
    assert store.abandon_old_fmgr(clock() - 7 * 86400) == 1
    assert store.fmgr_pending()[0] == 0
    assert store.fmgr_due(clock(), 10) == []
    assert store.list_fmgr_tasks("abandoned", 10)[0]["persistentId"] == "old"


def test_fmgr_unknown_ids_are_counted_until_found_or_given_up(store, clock):
    store.register_fmgr_ids(["u1", "u2", "u3", "k1"], "api")
    for task_id in ("u1", "u2", "u3"):
        store.fmgr_poll_failed(task_id, "not_found: HTTP 404, code 404: persistentId not found", T0 + 300)
    store.fmgr_poll_failed("k1", "server_error: HTTP 500", T0 + 10)  # a failed poll is not an unknown id
    assert store.fmgr_unknown() == 3
    store.apply_fmgr_status(status("u1", 1, [("fetch", 1, None)]), source="poll", polled=True)  # found
    store.fmgr_poll_failed("u2", "not_found: HTTP 404, code 404: persistentId not found", T0 + 600, give_up=True)
    assert store.fmgr_unknown() == 1
    assert store.fmgr_task("u2")["state"] == "abandoned"
    assert store.fmgr_pending()[0] == 3


def test_list_fmgr_tasks_filters_by_state_and_limits(store, clock):
    store.register_fmgr_ids(["u1", "u2"], "api")
    store.apply_fmgr_status(status("p1", 1, [("fetch", 1, None)]), source="poll", polled=True)
    store.apply_fmgr_status(status("d1", 6, [("fetch", 6, 1)]), source="poll", polled=True)
    store.apply_fmgr_status(status("x1", 42, []), source="poll", polled=True)
    assert {t["persistentId"] for t in store.list_fmgr_tasks("unknown", 10)} == {"u1", "u2"}
    assert [t["persistentId"] for t in store.list_fmgr_tasks("processing", 10)] == ["p1"]
    assert [t["persistentId"] for t in store.list_fmgr_tasks("notified", 10)] == ["d1"]
    assert [t["persistentId"] for t in store.list_fmgr_tasks("other", 10)] == ["x1"]
    assert store.list_fmgr_tasks("no-such-state", 10) == []
    assert len(store.list_fmgr_tasks(None, 3)) == 3
    # Pending as cdnetworks_fmgr_pending_tasks counts it: no code 3 or later seen yet (unknown, processing, other).
    assert {t["persistentId"] for t in store.list_fmgr_tasks(None, 10, pending=True)} == {"u1", "u2", "p1", "x1"}
    assert {t["persistentId"] for t in store.list_fmgr_tasks(None, 10, pending=False)} == {"d1"}
    assert [t["persistentId"] for t in store.list_fmgr_tasks("unknown", 10, pending=False)] == []
    assert store.fmgr_pending()[0] == 4
    for t in store.list_fmgr_tasks(None, 10):  # the state shown is the state filtered on
        assert t["persistentId"] in {x["persistentId"] for x in store.list_fmgr_tasks(t["state"], 10)}


def test_concurrent_notifications_are_group_committed_each_once(store):
    import threading

    results: dict[str, list[bool]] = {}
    lock = threading.Lock()

    def send(i: int) -> None:
        key = f"k{i % 150}"  # every key arrives twice: one accepted, one duplicate
        ok = store.record_notification(status(f"n{i % 150}", 3, [("fetch", 3, 10)]), key, T0)
        with lock:
            results.setdefault(key, []).append(ok)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert all(sorted(v) == [False, True] for v in results.values()) and len(results) == 150
    notes = dict((lab["result"], v) for lab, v in store.counters("fmgr_notifications_total"))
    assert notes == {"accepted": 150.0, "duplicate": 150.0}
    assert dict((lab["op"], v) for lab, v in store.counters("fmgr_processed_bytes_total")) == {"fetch": 1500.0}
    assert store.fmgr_window_counts(T0, [3600])["tasks"][0] == {3: 150}


def test_a_bad_notification_in_a_batch_fails_alone(store):
    import threading

    bad = status("bad", 3, [("fetch", 3, 1)])
    bad = FmgrStatus(id=bad.id, code=3, separate=0, items=(FmgrItem(op=None, code=3, fsize=1, error=None),))
    errors: list[BaseException] = []
    oks: list[bool] = []
    gate = threading.Barrier(9)

    def send(st, key):
        gate.wait()
        try:
            oks.append(store.record_notification(st, key, T0))
        except Exception as exc:  # the failure must reach its own sender
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(status(f"g{i}", 3, [("copy", 3, 5)]), f"g{i}")) for i in range(8)]
    threads.append(threading.Thread(target=send, args=(bad, "bad")))
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(errors) == 1 and oks == [True] * 8
    assert store.fmgr_task("bad") is None
    assert {t["persistentId"] for t in store.list_fmgr_tasks(None, 100)} == {f"g{i}" for i in range(8)}
    notes = dict((lab["result"], v) for lab, v in store.counters("fmgr_notifications_total"))
    assert notes == {"accepted": 8.0}


def test_max_task_age_abandons_only_unfinished_tasks(store, clock):
    store.register_fmgr_ids(["never-seen"], "api")
    store.record_notification(status("notified", 3, [("fetch", 3, 1)]), "kn", T0)  # final, never confirmed
    clock.t = T0 + 8 * 86400
    assert store.abandon_old_fmgr(clock() - 7 * 86400) == 1
    assert store.fmgr_task("never-seen")["state"] == "abandoned"
    done = store.fmgr_task("notified")
    assert done["state"] == "completed" and done["confirmed"] is True  # stops waiting for a poll, stays completed
    assert store.fmgr_due(clock(), 10) == []


def test_bytes_counted_once_even_when_the_size_arrives_later(store):
    store.apply_fmgr_status(status("late", 3, [("fetch", 3, None)]), source="poll", polled=True)
    store.apply_fmgr_status(status("late", 6, [("fetch", 6, 700)]), source="poll", polled=True)
    store.apply_fmgr_status(status("late", 6, [("fetch", 6, 700)]), source="poll", polled=True)
    assert dict((lab["op"], v) for lab, v in store.counters("fmgr_processed_bytes_total")) == {"fetch": 700.0}


def test_a_late_notification_does_not_move_a_task_back_from_notifying(store):
    store.apply_fmgr_status(status("t4", 4, [("fetch", 4, 1)]), source="poll", polled=True)
    store.record_notification(status("t4", 3, [("fetch", 3, 1)]), "k4", T0)
    assert store.fmgr_task("t4")["code"] == 4


LIFE = Lifecycle(poll_interval=30.0, notify_grace=300.0, confirm_delay=20.0)


def poll(store, task_id, code, items):
    store.apply_fmgr_status(status(task_id, code, items), source="poll", polled=True, lifecycle=LIFE)


def test_code_3_keeps_the_task_polled_until_the_grace_period_ends(store, clock):
    store.register_fmgr_ids(["plain"], "api")
    poll(store, "plain", 3, [("fetch", 3, 10)])
    assert store.fmgr_pending()[0] == 0  # processing is over ...
    assert store.fmgr_task("plain")["confirmed"] is False  # ... the notification phase may still come
    assert store.fmgr_due(T0 + 29, 10) == [] and store.fmgr_due(T0 + 30, 10) == ["plain"]
    clock.t = T0 + 300
    poll(store, "plain", 3, [("fetch", 3, 10)])
    task = store.fmgr_task("plain")
    assert (task["state"], task["confirmed"]) == ("completed", True)  # no notifyURL: 3 is final now
    assert store.fmgr_due(T0 + 10 * 86400, 10) == []


def test_a_notification_after_3_was_taken_as_final_asks_for_a_confirming_poll(store, clock):
    poll(store, "late", 3, [("fetch", 3, 10)])
    clock.t = T0 + 300
    poll(store, "late", 3, [("fetch", 3, 10)])
    assert store.fmgr_task("late")["confirmed"] is True
    clock.t = T0 + 400
    assert store.record_notification(status("late", 3, [("fetch", 3, 10)]), "kl", clock(), lifecycle=LIFE)
    assert store.fmgr_task("late")["confirmed"] is False
    assert store.fmgr_due(T0 + 419, 10) == [] and store.fmgr_due(T0 + 420, 10) == ["late"]
    clock.t = T0 + 420
    poll(store, "late", 4, [("fetch", 4, 10)])  # not recorded yet: polled again
    assert store.fmgr_due(T0 + 450, 10) == ["late"]
    clock.t = T0 + 450
    poll(store, "late", 6, [("fetch", 6, 10)])
    assert store.fmgr_task("late")["confirmed"] is True and store.fmgr_task("late")["code"] == 6


def test_a_notification_never_puts_a_poll_off_by_more_than_a_poll_interval(store, clock):
    fast = Lifecycle(poll_interval=5.0, notify_grace=300.0, confirm_delay=30.0)
    # Polled at 4 (next poll at T0 + 5), notified at T0 + 3: polled again at T0 + 8, not at T0 + 33.
    store.apply_fmgr_status(status("hook", 4, [("fetch", 4, 10)]), source="poll", polled=True, lifecycle=fast)
    clock.t = T0 + 3
    assert store.record_notification(status("hook", 3, [("fetch", 3, 10)]), "k-hook", clock(), lifecycle=fast)
    # Known from its notification only: confirmed a poll interval later too.
    assert store.record_notification(status("only", 3, [("fetch", 3, 10)]), "k-only", clock(), lifecycle=fast)
    assert store.fmgr_due(T0 + 7.9, 10) == []
    assert sorted(store.fmgr_due(T0 + 8, 10)) == ["hook", "only"]
    # Notification after notification (separate notifications, one per item): polled again no later than
    # two poll intervals after the last poll, not one interval after the latest notification.
    for n, ts in enumerate((T0 + 6, T0 + 9)):
        clock.t = ts
        assert store.record_notification(status("hook", 3, [("fetch", 3, 10 + n)]), f"k-hook-{n}", clock(),
                                         lifecycle=fast)
    assert "hook" not in store.fmgr_due(T0 + 9.9, 10) and "hook" in store.fmgr_due(T0 + 10, 10)


def test_a_notified_task_at_3_is_polled_past_the_grace_period(store, clock):
    store.record_notification(status("n", 3, [("fetch", 3, 10)]), "kn", T0)
    clock.t = T0 + 3600
    poll(store, "n", 3, [("fetch", 3, 10)])
    assert store.fmgr_task("n")["confirmed"] is False


def test_notify_failures_are_counted_once_per_task_and_item(store, clock):
    poll(store, "f", 4, [("fetch", 4, 10), ("copy", 18, None), ("move", 4, 5)])
    poll(store, "f", 5, [("fetch", 5, 10), ("copy", 19, None), ("move", 5, 5)])
    poll(store, "f", 5, [("fetch", 5, 10), ("copy", 19, None), ("move", 5, 5)])
    poll(store, "ok", 6, [("fetch", 6, 10)])
    counted = {lab["scope"]: v for lab, v in store.counters("fmgr_notify_failures_total")}
    assert counted == {"task": 1.0, "item": 3.0}
    assert store.fmgr_task("f")["confirmed"] is True


def test_a_notification_never_moves_items_back_from_the_notification_phase(store, clock):
    poll(store, "t", 6, [("fetch", 6, 10), ("copy", 20, None)])
    # A notification with other bytes (separate notifications, say) arriving after the vendor said 6.
    store.record_notification(status("t", 3, [("fetch", 3, 10), ("copy", 2, None)]), "k-other", T0)
    groups = store.fmgr_window_counts(clock(), [3600])
    assert groups["items"][0] == {("fetch", 6): 1, ("copy", 20): 1}
    assert store.fmgr_task("t")["confirmed"] is True  # a task at 6 needs no confirming poll


def test_a_snapshot_shows_every_transaction_whole(store, clock):
    """Scrapes read counters while commits land: a histogram's +Inf bucket always equals its _count and the
    finished counter moves with them, because a transaction's counters reach memory all at once."""
    import threading

    stop = threading.Event()
    errors: list[str] = []

    def write() -> None:
        i = 0
        while not stop.is_set():
            store.upsert_cdn_tasks("a", "prefetch", tasks(5, T0 - 3000 + i * 50, step=1.0))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(300):
            snap = store.snapshot()
            h = snap.histogram("prefetch_duration_seconds", {"account": "a"}, [60.0])
            finished = sum(v for _, v in snap.counters("prefetch_tasks_finished_total"))
            if not (h.buckets[-1][1] == h.count == finished):
                errors.append(f"+Inf {h.buckets[-1][1]}, _count {h.count}, finished {finished}")
    finally:
        stop.set()
        writer.join()
    assert not errors, errors[:3]
    assert store.snapshot().histogram("prefetch_duration_seconds", {"account": "a"}, [60.0]).count > 0


def test_scrape_reads_do_not_wait_for_a_write_transaction(store, clock):
    """A scrape's reads (window edges, oldest unfinished, oldest pending) use their own connection: a long
    write transaction does not hold them up."""
    import threading
    import time

    store.upsert_cdn_tasks("a", "prefetch", tasks(3, T0 - 95, status="run"))
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.repo.transaction():
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert entered.wait(5)
        started = time.monotonic()
        counts = store.cdn_window_counts("a", "prefetch", T0 + 0.5, [90.0])
        oldest = store.cdn_oldest_unfinished("a", "prefetch")
        store.fmgr_pending()
        took = time.monotonic() - started
    finally:
        release.set()
        holder.join()
    assert took < 2.0, f"scrape reads waited {took:.1f} s behind the write transaction"
    assert oldest == T0 - 95
    assert counts[0][("status", "run")] == 2  # created in (T0 - 89.5, T0 + 0.5]: T0 - 95 is not


def test_a_poll_failure_gives_up_a_pending_task_once(store):
    def failed(task_id, error, next_poll, give_up, ts):
        with store.repo.transaction() as tx:
            return tx.fmgr_poll_failed(task_id, error, next_poll, give_up, ts)

    store.register_fmgr_ids(["p", "done"], "api")
    poll(store, "done", 6, [("fetch", 6, 1)])
    assert store.fmgr_pending()[0] == 1
    assert failed("p", "timeout", T0 + 60, False, T0) is False  # a retry, not giving up
    assert store.fmgr_task("p")["errors"] == 1 and store.fmgr_due(T0 + 59, 10) == []
    assert failed("done", "gone", T0 + 60, True, T0) is False  # final: was not pending
    assert failed("p", "gone", T0 + 60, True, T0) is True
    assert failed("p", "gone", T0 + 60, True, T0) is False  # already given up
    assert failed("no-such-id", "gone", T0 + 60, True, T0) is False
    task = store.fmgr_task("p")
    assert (task["state"], task["errors"], task["lastError"]) == ("abandoned", 3, "gone")
    assert store.repo.fmgr_count_pending() == 0


def test_prune_forgets_final_tasks_in_chunks_and_old_dedup_keys(store, clock):
    # More tasks than one delete chunk, final and abandoned ones, one kept, one still pending.
    ids = [f"f{i}" for i in range(1203)]
    for i, task_id in enumerate(ids):
        store.record_notification(status(task_id, 3, [("fetch", 3, 1)]), f"k{i}", T0)
    store.register_fmgr_ids(["pending", "given-up"], "api")
    store.fmgr_poll_failed("given-up", "gone", T0 + 60, give_up=True)
    clock.t = T0 + 86400
    store.register_fmgr_ids(["recent"], "api")
    store.apply_fmgr_status(status("recent", 6, [("copy", 6, 1)]), source="poll", polled=True)
    assert store.prune_fmgr(T0 + 3600, keep=["f7"]) == 1203  # 1202 notified ones and "given-up"
    left = {t["persistentId"] for t in store.list_fmgr_tasks(None, 100)}
    assert left == {"f7", "pending", "recent"}
    assert store.fmgr_window_counts(clock(), [7 * 86400])["items"][0] == {("copy", 6): 1}
    # The dedup keys went with them: the same delivery now counts as new (f7's too: keys age out by time).
    assert store.record_notification(status("f1", 3, [("fetch", 3, 1)]), "k1", clock()) is True
    assert store.record_notification(status("f7", 3, [("fetch", 3, 1)]), "k7", clock()) is True


def test_text_with_a_nul_character_is_stored_and_found_again(store):
    """The vendor's text may hold characters a database does not store as they are (PostgreSQL text has no
    NUL): the same task is still found again, not counted twice, and its failures are recorded."""
    running = [CdnTask("http://x/a\x00b", T0 - 100, "run")]
    assert store.upsert_cdn_tasks("a", "prefetch", running).new == 1
    assert store.upsert_cdn_tasks("a", "prefetch", running).new == 0
    store.cdn_mark_checked("a", "prefetch", T0 - 200, T0, T0 + 5, url="http://x/a\x00b")
    assert [seen for _, _, seen, _ in store.cdn_unfinished("a", "prefetch", T0 - 200, T0)] == [T0 + 5]
    done = [CdnTask("http://x/a\x00b", T0 - 100, "success", finish_ts=T0, rate=100.0)]
    assert store.upsert_cdn_tasks("a", "prefetch", done).newly_finished == 1
    assert store.cdn_task_count("a") == 1
    poll(store, "e", 1, [("fetch\x00", 1, None)])
    store.fmgr_poll_failed("e", "reset by peer\x00", T0 + 60)
    assert store.fmgr_task("e")["errors"] == 1


def test_a_failed_poll_that_gives_up_lowers_the_pending_count(store):
    store.register_fmgr_ids(["p", "q"], "api")
    store.fmgr_poll_failed("p", "gone", T0 + 60, give_up=True)
    store.fmgr_poll_failed("q", "timeout", T0 + 60)
    assert store.fmgr_pending()[0] == 1 == store.repo.fmgr_count_pending()
