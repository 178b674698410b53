"""The CDN polling path end to end over real HTTP against the simulator, with a shared fake clock."""

from __future__ import annotations

import logging
import random

import pytest
from conftest import T0, assert_counts_match_what_was_served, make_config

from exporter.config import RateLimit
from exporter.metrics.health import ApiHealth
from exporter.metrics.windows import window_start
from exporter.polling.budget import RateBudget, backoff_delay
from exporter.polling.cdn_poller import CdnPoller
from exporter.polling.planner import RECHECK_MAX, SWEEP_STATES
from exporter.storage.store import Store
from exporter.vendor.cdn import CdnClient

DAY = 86400.0


def build(sim, clock, tmp_path, account=0, kind="prefetch", store=None, **overrides):
    cfg = make_config(sim.url, str(tmp_path / "db.sqlite"), **overrides)
    store = store or Store(cfg.storage.path, clock=clock)
    health = ApiHealth()
    acct = cfg.accounts[account]
    kcfg = cfg.kinds[kind]
    client = CdnClient(acct, clock=clock, timeout=kcfg.request_timeout, health=health)
    return CdnPoller(acct, kind, kcfg, store, client, health, clock=clock, rng=random.Random(7)), store, health


def run_cycle(poller, clock, max_steps=5000):
    """Advance the fake clock as the poller asks and step until it has nothing left to read; the requests."""
    before = poller.requests_sent
    for _ in range(max_steps):
        if poller.idle():
            return poller.requests_sent - before
        nr = poller.next_run()
        if nr > clock():
            clock.t = nr
        poller.step()
    raise AssertionError("the poller never caught up")


def run_for(poller, clock, seconds):
    """Step as the budget allows for ``seconds`` of fake time; the lag seen after each request."""
    lags, end = [], clock() + seconds
    while True:
        nr = poller.next_run()
        if nr > end:
            clock.t = end
            return lags
        clock.t = max(clock(), nr)
        before = poller.requests_sent
        poller.step()
        if poller.requests_sent > before:
            lags.append(poller.planner.lag(clock()))


def assert_windows_match_truth(sim, store, clock, user, kind="prefetch", windows=(900, 3600, DAY)):
    """Every window holds every task the vendor serves for it, each as it was last served (or learnt)."""
    sums = store.cdn_window_counts(user, kind, clock(), list(windows))
    for w, got in zip(windows, sums, strict=True):
        shown = {s: got.get(("status", s), 0) for s in ("wait", "run", "success", "failure")}
        assert sum(shown.values()) > 0
        assert_counts_match_what_was_served(sim, shown, user, kind, window_start(clock(), w), clock(), f"window {w}")


@pytest.mark.parametrize("account", [0, 1], ids=["basic", "aksk"])
def test_backfill_then_windows_equal_simulator_truth(sim_factory, clock, tmp_path, account):
    sim = sim_factory()
    user = ("acme", "globex")[account]
    sim.add_cdn_stream(user, "prefetch", per_hour=400, failure_ratio=0.1, start_ts=T0 - 2 * DAY)
    poller, store, health = build(sim, clock, tmp_path, account=account)
    run_cycle(poller, clock)
    assert_windows_match_truth(sim, store, clock, user)
    assert health.up()[(user, "prefetch")] == 1
    # Later cycles keep matching as tasks finish and new ones arrive.
    for _ in range(3):
        clock.advance(300)
        run_cycle(poller, clock)
        assert_windows_match_truth(sim, store, clock, user)


def test_incremental_polling_needs_far_fewer_requests_than_a_full_refetch(sim_factory, clock, tmp_path):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=600, start_ts=T0 - 2 * DAY)
    poller, store, _ = build(sim, clock, tmp_path)
    backfill = run_cycle(poller, clock)
    clock.advance(300)
    sim.reset_counters()
    incremental = run_cycle(poller, clock)
    assert sim.requests[("prefetch", "acme")] == incremental
    # What a naive poller would need: every page of the whole 24h window.
    full = sim.cdn_truth("acme", "prefetch", clock() - DAY, clock())["total"]
    naive = -(-full // poller.page_size)
    assert backfill >= naive * 0.9
    assert incremental * 10 <= naive, (incremental, naive)
    assert_windows_match_truth(sim, store, clock, "acme")


def test_rate_budget_is_never_exceeded(sim_factory, clock, tmp_path):
    sim = sim_factory(rate_limits={"prefetch": (3, 60.0)})
    sim.add_cdn_stream("acme", "prefetch", per_hour=120, start_ts=T0 - DAY)
    poller, _, _ = build(sim, clock, tmp_path, prefetch={"rate_limit": {"requests": 3, "per": "1m"},
                                                              "page_size": 50})
    start = clock()
    run_cycle(poller, clock)
    clock.advance(300)
    run_cycle(poller, clock)
    assert sim.rate_limit_violations == 0
    sent = sorted(r["ts"] for r in sim.request_log if r["api"] == "prefetch")
    assert len(sent) > 10  # the plan needed many slots and resumed across them
    for i in range(3, len(sent)):
        assert sent[i] - sent[i - 3] >= 60.0
    assert clock() - start >= (len(sent) // 3 - 1) * 60


def test_budget_survives_restart(sim_factory, clock, tmp_path):
    sim = sim_factory(rate_limits={"prefetch": (1, 300.0)})
    sim.add_cdn_stream("acme", "prefetch", per_hour=60, start_ts=T0 - DAY)
    limit = {"rate_limit": {"requests": 1, "per": "5m"}}
    poller, store, _ = build(sim, clock, tmp_path, prefetch=limit)
    poller.step()
    store.close()
    clock.advance(10)
    poller2, store2, _ = build(sim, clock, tmp_path, prefetch=limit)
    assert poller2.next_run() >= T0 + 300  # the restarted poller still waits for the slot
    store2.close()


def test_page_size_error_halves_and_remembers(sim_factory, clock, tmp_path):
    sim = sim_factory(max_page_size=40)
    sim.add_cdn_stream("acme", "prefetch", per_hour=100, start_ts=T0 - DAY)
    poller, store, health = build(sim, clock, tmp_path, prefetch={"page_size": 300})
    run_cycle(poller, clock)
    assert poller.page_size <= 40
    assert health.requests()[("prefetch", "bad_request")] >= 1
    assert_windows_match_truth(sim, store, clock, "acme")
    store.close()
    poller2, _, _ = build(sim, clock, tmp_path, prefetch={"page_size": 300})
    assert poller2.page_size == poller.page_size


def test_never_asks_for_more_than_a_day_or_older_than_three_days(sim_factory, clock, tmp_path):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=60, start_ts=T0 - 5 * DAY)
    poller, _, health = build(sim, clock, tmp_path, prefetch={"lookback": "3d"})
    run_cycle(poller, clock)
    clock.advance(3600)
    run_cycle(poller, clock)
    assert all(r["result"] == "ok" for r in sim.request_log), {r["result"] for r in sim.request_log}
    assert health.requests()[("prefetch", "bad_request")] == 0
    assert len({(r["body"]["startTime"], r["body"]["endTime"]) for r in sim.request_log}) >= 3


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("http500", "server_error"),
        ("http503", "server_error"),
        ("http429", "rate_limited"),
        ("timeout", "timeout"),
        ("malformed", "malformed"),
        ("wrong_types", "malformed"),
        ("empty_page", "malformed"),  # success with rows missing is never read as "no tasks"
        ("code0:username is invalid", "auth"),
        ("code0:query time error", "bad_request"),
        ("code0:rate limit exceeded", "rate_limited"),
        ("code0:a brand new error", "unknown"),
    ],
)
def test_each_error_class_is_counted_backs_off_and_keeps_data(sim_factory, clock, tmp_path, fault, kind):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=100, start_ts=T0 - DAY)
    poller, store, health = build(sim, clock, tmp_path, prefetch={"request_timeout": "500ms", "page_size": 500})
    run_cycle(poller, clock)
    stored = store.cdn_task_count("acme", "prefetch")
    clock.advance(300)
    sim.inject("prefetch", fault, 1)
    poller.step()  # plans and makes the faulty request
    assert health.requests()[("prefetch", kind)] == 1
    assert health.up()[("acme", "prefetch")] == 0
    assert store.cdn_task_count("acme", "prefetch") == stored  # nothing lost or wiped
    assert poller.next_run() > clock()  # no hot loop
    run_cycle(poller, clock)  # recovers by itself (may first finish the interrupted plan)
    run_cycle(poller, clock)
    assert health.up()[("acme", "prefetch")] == 1
    assert_windows_match_truth(sim, store, clock, "acme")


def test_retry_after_is_honoured(sim_factory, clock, tmp_path):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=60, start_ts=T0 - DAY)
    poller, _, _ = build(sim, clock, tmp_path)
    sim.inject("prefetch", "http503", 1)  # Retry-After: 2
    poller.step()
    assert poller.next_run() >= clock() + 2


def test_restart_resumes_incrementally(sim_factory, clock, tmp_path):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=600, start_ts=T0 - 2 * DAY)
    poller, store, _ = build(sim, clock, tmp_path)
    backfill = run_cycle(poller, clock)
    store.close()
    clock.advance(300)
    poller2, store2, _ = build(sim, clock, tmp_path)
    assert run_cycle(poller2, clock) * 10 < backfill
    assert_windows_match_truth(sim, store2, clock, "acme")


def test_rate_budget_unit():
    t = [0.0]
    b = RateBudget(RateLimit(2, 10.0), lambda: t[0])
    assert b.wait_time() == 0
    b.record()
    b.record()
    assert b.wait_time() == 10.0
    t[0] = 4.0
    assert b.wait_time() == 6.0
    b.block_until(20.0)
    assert b.wait_time() == 16.0


def test_backoff_grows_is_jittered_and_capped():
    rng = random.Random(1)
    delays = [backoff_delay(n, rng) for n in range(1, 15)]
    assert delays[0] <= 5.0 and delays[3] > delays[0]
    assert max(delays) <= 900.0
    assert len({round(d, 6) for d in delays}) == len(delays)


def test_a_first_start_reads_the_shortest_window_first_and_reports_the_backfill(sim_factory, clock, tmp_path):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=200, start_ts=T0 - DAY)
    poller, store, health = build(sim, clock, tmp_path, prefetch={"rate_limit": {"requests": 1, "per": "1m"},
                                                                  "page_size": 100})
    start = clock()
    # One request: the part of the 15m window that reads of the newest tasks at the next two poll intervals
    # cannot give (its last 5 minutes), before any history.
    poller.step()
    assert health.lag()[("acme", "prefetch")] <= 60
    assert health.backfill()[("acme", "prefetch")] >= DAY - 300 - 60
    truth = sim.cdn_truth("acme", "prefetch", start - 299, start)
    assert sum(store.cdn_counts_by_status("acme", "prefetch", start - 299, start).values()) == truth["total"]
    assert store.cdn_task_count("acme", "prefetch") == truth["total"]
    run_cycle(poller, clock)
    assert health.backfill()[("acme", "prefetch")] == 0
    assert health.lag()[("acme", "prefetch")] < 600
    head = poller.planner.head  # every task created up to here is stored (statuses as of their last read)
    assert store.cdn_task_count("acme", "prefetch") == sim.cdn_truth("acme", "prefetch", T0 - DAY + 1, head)["total"]
    clock.advance(1800)  # nothing polled for 30 minutes: 1,800 s of tasks do not fit one page of 100
    poller.step()
    assert health.lag()[("acme", "prefetch")] >= 1800 - 100 * 3600 / 200  # one page read at most: still behind
    run_cycle(poller, clock)
    assert health.lag()[("acme", "prefetch")] <= 2 * 300 + 60  # caught up: within two poll intervals and a slot


def test_a_silently_capped_page_size_is_adopted_without_skipping_rows(sim_factory, clock, tmp_path):
    sim = sim_factory(silent_page_cap=30)
    sim.add_cdn_stream("acme", "prefetch", per_hour=200, start_ts=T0 - DAY)
    poller, store, _ = build(sim, clock, tmp_path, prefetch={"page_size": 100})
    run_cycle(poller, clock)
    assert poller.page_size == 30
    assert_windows_match_truth(sim, store, clock, "acme")
    assert store.cdn_task_count("acme", "prefetch") == sim.cdn_truth("acme", "prefetch", T0 - DAY, T0)["total"]


def test_page_numbers_are_the_pollers_own_whatever_the_answer_says(sim_factory, clock, tmp_path):
    # The vendor's SDK documents the answer's pageNo as the total number of pages, the seed's example as the page
    # asked for: with the total in every answer (5 here, for ranges of about 2 pages of 100 paged through), a
    # client that took it for its position would skip or repeat pages. Every task must be read once.
    sim = sim_factory(max_page_size=100)
    sim.page_no_total = True
    sim.add_cdn_stream("acme", "prefetch", per_hour=400, start_ts=T0 - DAY)
    poller, store, _ = build(sim, clock, tmp_path, prefetch={"page_size": 100})
    run_cycle(poller, clock)
    paged = [e for e in sim.request_log if int(e["body"].get("pageNo", 1)) > 1]
    assert paged, "no range was paged through: the test proves nothing"
    assert_windows_match_truth(sim, store, clock, "acme")
    assert store.cdn_task_count("acme", "prefetch") == sim.cdn_truth("acme", "prefetch", T0 - DAY, T0)["total"]


PUBLISHED = {"rate_limit": {"requests": 1, "per": "5m"}, "lookback": "1h"}


def test_page_size_grows_until_the_published_budget_keeps_up(sim_factory, clock, tmp_path):
    # 3,000 tasks an hour need 3 pages of 100 every 5 minutes; the vendor allows 1 request per 5 minutes.
    sim = sim_factory(rate_limits={"prefetch": (1, 300.0)}, max_page_size=1000)
    sim.add_cdn_stream("acme", "prefetch", per_hour=3000, start_ts=T0 - DAY)
    poller, store, _ = build(sim, clock, tmp_path, prefetch=PUBLISHED)
    lags = run_for(poller, clock, 3 * 3600)
    assert sim.rate_limit_violations == 0
    assert 100 < poller.page_size <= 1000
    assert max(lags[-12:]) <= 600  # caught up: bounded, not growing cycle after cycle
    # Complete up to the head (statuses there may have moved on since they were read).
    start, end = poller.planner.head - 3600, poller.planner.head
    assert sum(store.cdn_counts_by_status("acme", "prefetch", start, end).values()) == \
        sim.cdn_truth("acme", "prefetch", start, end)["total"]


def test_page_size_finds_the_vendors_cap_and_stays_there(sim_factory, clock, tmp_path):
    # 250 new tasks per 5 minutes do not fit pages of 100 or 200: the page size grows, 400 is refused, and the
    # search between 200 (served) and 400 (refused) finds the vendor's real cap, 300, then stays there.
    sim = sim_factory(rate_limits={"prefetch": (1, 300.0)}, max_page_size=300)
    sim.add_cdn_stream("acme", "prefetch", per_hour=3000, start_ts=T0 - DAY)
    poller, store, health = build(sim, clock, tmp_path, prefetch={**PUBLISHED, "page_size": 100})
    run_for(poller, clock, 2 * 3600)
    assert poller.page_size == 300
    refused = health.requests()[("prefetch", "bad_request")]
    assert refused == 2  # 400, then 350 (a gap of 50 could grow a page by no more than a quarter: stop)
    run_for(poller, clock, 3600)
    assert health.requests()[("prefetch", "bad_request")] == refused  # remembered: no new refusal within hours
    store.close()
    restarted, _, _ = build(sim, clock, tmp_path, prefetch={**PUBLISHED, "page_size": 100})
    assert (restarted.pages.served, restarted.pages.refused) == (300, 350)
    assert restarted.page_size == poller.page_size == 300


def test_a_failing_worker_keeps_running_without_a_hot_loop(caplog):
    import time as _time

    from exporter.polling.worker import Worker

    class Flaky(Worker):
        name = "flaky"

        def __init__(self):
            super().__init__(_time.time)
            self.calls = 0
            self.steps = 0

        def next_run(self):
            self.calls += 1
            if self.calls <= 2:
                raise RuntimeError("store went away")
            return 0.0  # due now

        def step(self):
            self.steps += 1
            self._stop.set()

        def on_unexpected(self):
            pass

    w = Flaky()
    started = _time.monotonic()
    w.start()
    w._thread.join(10)
    assert w.steps == 1 and w.calls == 3  # survived two failures, then worked
    assert _time.monotonic() - started >= 1.9  # waited between failures instead of spinning
    assert sum("unexpected error" in r.getMessage() for r in caplog.records) == 2


def test_a_capped_page_that_looks_like_the_last_one_is_still_caught(sim_factory, clock, tmp_path):
    # count (75) fits in one page of 100, but the vendor serves only 50: the first page is not the last.
    sim = sim_factory(silent_page_cap=50)
    for i in range(75):
        sim.add_cdn_task("acme", "prefetch", f"http://x/{i}", T0 - 3000 + i * 10, wait=1, run=1)
    poller, store, _ = build(sim, clock, tmp_path, prefetch={"page_size": 100})
    run_cycle(poller, clock)
    assert store.cdn_task_count("acme", "prefetch") == 75
    assert poller.page_size == 50


def test_a_task_finishing_after_the_lookback_is_still_read_and_counted(sim_factory, clock, tmp_path):
    sim = sim_factory()
    sim.add_cdn_task("acme", "prefetch", "http://slow/1", T0 - 3600, wait=60, run=26 * 3600)
    sim.add_cdn_stream("acme", "prefetch", per_hour=30, start_ts=T0 - DAY)
    poller, store, _ = build(sim, clock, tmp_path, prefetch={"lookback": "2h"})
    run_cycle(poller, clock)
    assert store.cdn_oldest_unfinished("acme", "prefetch") == T0 - 3600
    clock.advance(27 * 3600)  # the vendor finished it 2 hours ago; it is far outside the 2h lookback now
    run_cycle(poller, clock)
    assert store.cdn_counts_by_status("acme", "prefetch", T0 - 3600, T0 - 3600) == {"success": 1}
    finished = {lab["status"]: v for lab, v in store.counters("prefetch_tasks_finished_total")}
    assert finished.get("success", 0) >= 1


@pytest.mark.parametrize("fault", ["http503", "http500"])  # Retry-After block; plain backoff
def test_retry_after_and_backoff_hold_across_a_restart(sim_factory, clock, tmp_path, fault):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=60, start_ts=T0 - DAY)
    poller, store, _ = build(sim, clock, tmp_path)
    sim.inject("prefetch", fault, 1)
    poller.step()
    held_until = poller.next_run()
    assert held_until > clock() + 1
    store.close()
    restarted, _, _ = build(sim, clock, tmp_path)
    assert restarted.next_run() >= held_until - 0.001


def test_a_stuck_task_costs_a_bounded_number_of_requests(sim_factory, clock, tmp_path):
    # Created 20 h ago, still waiting; it finishes 2 hours from now. Before range planning, every cycle re-read
    # everything since it was created: 20 h of tasks, about a hundred pages at this volume. "globex" has the
    # same volume and no stuck task.
    sim = sim_factory()
    for user in ("acme", "globex"):
        sim.add_cdn_stream(user, "prefetch", per_hour=3000, start_ts=T0 - 26 * 3600)
    finishes = T0 + 2 * 3600
    sim.add_cdn_task("acme", "prefetch", "https://stuck.example/x", T0 - 20 * 3600,
                     wait=finishes - 60 - (T0 - 20 * 3600), run=60, final="failure", rate=10)
    stuck, store, _ = build(sim, clock, tmp_path, account=0)
    plain, _, _ = build(sim, clock, tmp_path, account=1, store=store)
    for poller in (stuck, plain):
        run_cycle(poller, clock)  # the first start reads the whole lookback, the stuck task included
    assert store.cdn_oldest_unfinished("acme", "prefetch") == T0 - 20 * 3600
    costs: dict[str, list[int]] = {"acme": [], "globex": []}
    for _ in range(36):  # 3 hours
        clock.advance(300)
        for user, poller in (("acme", stuck), ("globex", plain)):
            costs[user].append(run_cycle(poller, clock))
    # The stuck task is due every 2 hours at most, and a sweep by state covers it with the rest of its day: at
    # most one sweep more per re-check on top.
    sweep = len(SWEEP_STATES) + 1  # its 4 hours hold some 600 failures: two pages
    assert sum(costs["acme"]) <= 1.2 * sum(costs["globex"]) + 2 * sweep, costs
    assert max(costs["acme"]) <= max(costs["globex"]) + sweep, costs
    assert_windows_match_truth(sim, store, clock, "acme")
    second = sim.cdn_truth("acme", "prefetch", T0 - 20 * 3600, T0 - 20 * 3600)
    assert second["failure"] >= 1 and second["wait"] == 0
    assert store.cdn_counts_by_status("acme", "prefetch", T0 - 20 * 3600, T0 - 20 * 3600) == \
        {s: n for s, n in second.items() if n and s != "total"}


def test_at_the_published_budget_a_task_stuck_since_the_start_is_seen_finishing(sim_factory, clock, tmp_path):
    sim = sim_factory(rate_limits={"prefetch": (1, 300.0)})
    sim.add_cdn_stream("acme", "prefetch", per_hour=400, start_ts=T0 - 26 * 3600)
    finishes = T0 + 2 * 3600
    sim.add_cdn_task("acme", "prefetch", "https://stuck.example/x", T0 - 100, wait=finishes - 60 - (T0 - 100),
                     run=60, final="failure", rate=10)
    poller, store, _ = build(sim, clock, tmp_path, prefetch={"rate_limit": {"requests": 1, "per": "5m"}})
    run_for(poller, clock, 2 * 3600)
    assert store.cdn_counts_by_status("acme", "prefetch", T0 - 100, T0 - 100) == {"wait": 1}
    run_for(poller, clock, RECHECK_MAX)  # re-read at least this often while unfinished
    assert store.cdn_counts_by_status("acme", "prefetch", T0 - 100, T0 - 100) == {"failure": 1}
    assert sim.rate_limit_violations == 0


def test_whoever_runs_the_poller_next_counts_a_request_in_flight_and_goes_on_from_the_last_success(
        sim_factory, clock, tmp_path):
    """A restart after kill -9, or a replica taking the lease over: the request its predecessor had sent but not
    seen answered may have reached the vendor, so it counts against the budget; and the last success is the
    predecessor's, not an absent or older one of this process."""
    sim = sim_factory(rate_limits={"prefetch": (1, 300.0)})
    sim.add_cdn_stream("acme", "prefetch", per_hour=60, start_ts=T0 - DAY)
    limit = {"rate_limit": {"requests": 1, "per": "5m"}, "request_timeout": "30s"}
    poller, store, health = build(sim, clock, tmp_path, prefetch=limit)
    poller.step()
    assert health.last_ok()[("acme", "prefetch")] == T0
    # Killed while the next request was in flight: what it stored just before sending.
    clock.advance(300)
    poller._save_budget(in_flight=clock())
    store.close()
    clock.advance(5)
    poller2, store2, health2 = build(sim, clock, tmp_path, prefetch=limit)
    assert health2.last_ok()[("acme", "prefetch")] == T0
    # The request sent at T0 + 300 arrived by T0 + 330 at the latest: the next may go one slot after that.
    assert poller2.next_run() >= T0 + 330 + 300
    store2.close()


def test_a_request_recorded_late_keeps_the_budget_in_time_order():
    clock = [1000.0]
    budget = RateBudget(RateLimit(requests=2, per=60.0), lambda: clock[0])
    budget.record()  # 1000
    budget.record(at=1030.0)  # an arrival no later than 1030, known of afterwards
    budget.record(at=990.0)  # older than both: it expires first and makes no slot wait longer
    assert budget.history() == [1000.0, 1030.0]
    assert budget.wait_time() == 60.0  # the window holds 1000 and 1030: the next slot opens at 1060


def test_each_plan_decision_is_logged_at_debug(sim_factory, clock, tmp_path, caplog):
    sim = sim_factory()
    sim.add_cdn_stream("acme", "prefetch", per_hour=200, start_ts=T0 - DAY)
    poller, store, _ = build(sim, clock, tmp_path, prefetch={"rate_limit": {"requests": 25, "per": "1m"},
                                                             "poll_interval": "10s"})
    with caplog.at_level(logging.DEBUG, logger="exporter.polling.cdn_poller"):
        run_for(poller, clock, 60)
    plans = [r.getMessage() for r in caplog.records if ": plan " in r.getMessage()]
    assert len(plans) == poller.requests_sent >= 10
    assert any(" plan recent " in p for p in plans) and any(" plan history " in p for p in plans)
    assert all("re-read spacing" in p and "lag" in p for p in plans)
    store.close()
