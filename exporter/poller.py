"""Background polling: one worker per (account, CDN task kind) and one for Fmgr.

Each worker makes vendor requests only when its rate budget allows (a CDN worker one per step), so the
vendor's published limits are never exceeded, even across restarts and reloads (the budget's recent
request times, any Retry-After block and the backoff are persisted, and a reload waits for a request in
flight). A sync *plan* (chunks of <= 1 day, page by page) survives failures and budget waits:
the next slot resumes it instead of starting over. Incremental: a finished task never changes, so each
plan starts at the oldest task still unfinished (or the last synced point minus an overlap), never at
the start of the largest window.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .cdn import ApiError, CdnClient, chunk_range, clamp_start
from .config import Account, Config, FmgrConfig, RateLimit, TaskKindConfig
from .fmgr import FmgrApiError, FmgrClient, Lifecycle
from .health import ApiHealth
from .store import Store

log = logging.getLogger(__name__)

AUTH_BACKOFF = 600.0  # a wrong key will not fix itself: wait long, say so
MAX_BACKOFF = 900.0
BASE_BACKOFF = 5.0
# This many different Fmgr ids answering "not found" in a row, with no success between, is an outage.
NOT_FOUND_OUTAGE = 10


class RateBudget:
    """At most ``requests`` calls in any sliding ``per`` seconds; ``block_until`` honours Retry-After."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float], saved: list | dict | None = None) -> None:
        """``saved`` is what ``state()`` returned before a restart (a bare list of send times is accepted too)."""
        self.limit = limit
        self.clock = clock
        if isinstance(saved, dict):
            history, self.blocked_until = saved.get("sent") or [], float(saved.get("blocked_until") or 0.0)
        else:
            history, self.blocked_until = saved or [], 0.0
        self.sent: deque[float] = deque(sorted(history)[-limit.requests:], maxlen=limit.requests)

    def wait_time(self) -> float:
        now = self.clock()
        wait = max(0.0, self.blocked_until - now)
        if len(self.sent) >= self.limit.requests:
            wait = max(wait, self.sent[0] + self.limit.per - now)
        return wait

    def record(self) -> None:
        self.sent.append(self.clock())

    def block_until(self, ts: float) -> None:
        self.blocked_until = max(self.blocked_until, ts)

    def history(self) -> list[float]:
        return list(self.sent)

    def state(self) -> dict[str, object]:
        """What must survive a restart or reload so that neither can burst past the vendor's limits."""
        return {"sent": list(self.sent), "blocked_until": self.blocked_until}


def backoff_delay(failures: int, rng: random.Random, base: float = BASE_BACKOFF, cap: float = MAX_BACKOFF) -> float:
    """Exponential backoff with full jitter in its upper half: never a hot loop, no thundering herd."""
    ceiling = min(cap, base * (2 ** max(0, failures - 1)))
    return ceiling / 2 + rng.random() * ceiling / 2


@dataclass
class Plan:
    """The ranges still to read in this cycle, newest first, and where paging stands in the current one."""

    chunks: list[tuple[float, float]]
    start: float  # nothing created before this needs reading in this cycle
    end: float  # when all chunks are read, everything created up to here is in sync
    page_no: int = 1
    requests: int = 0


class Worker:
    """Base: a thread that calls ``step()`` when ``next_run()`` allows, until stopped."""

    name = "worker"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    stop_timeout = 5.0

    def stop(self, timeout: float | None = None) -> None:
        """Stop and wait for a request in flight, so a successor (after a reload) sees its budget slot."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.stop_timeout if timeout is None else timeout)
            if self._thread.is_alive():
                log.warning("%s: still busy after %.0fs; stopping without waiting further", self.name,
                            self.stop_timeout if timeout is None else timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self.next_run() - self.clock()
                if delay > 0:
                    self._wake.wait(min(delay, 5.0))
                    self._wake.clear()
                    continue
                self.step()
            except Exception:
                # A bug or a store failure must not kill polling for good: logged with its traceback, retried
                # after a backoff, and never in a hot loop even if next_run() itself keeps failing.
                log.exception("%s: unexpected error", self.name)
                self.on_unexpected()
                self._stop.wait(1.0)

    def next_run(self) -> float:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def on_unexpected(self) -> None:
        raise NotImplementedError


class CdnPoller(Worker):
    def __init__(self, account: Account, kind: str, cfg: TaskKindConfig, store: Store, client: CdnClient,
                 health: ApiHealth, *, clock: Callable[[], float] = time.time, rng: random.Random | None = None):
        super().__init__(clock)
        self.account, self.kind, self.cfg = account, kind, cfg
        self.store, self.client, self.health = store, client, health
        self.name = f"poll-{kind}-{account.name}"
        self.rng = rng or random.Random()
        self._key = f"cdn:{account.name}:{kind}"
        saved = store.get_state(self._key + ":budget")
        self.budget = RateBudget(cfg.rate_limit, clock, saved)
        self.stop_timeout = cfg.request_timeout + 5.0
        st = store.get_state(self._key) or {}
        self.synced_until: float | None = st.get("synced_until")
        # The largest page size the vendor is known to serve (refused or silently capped sizes lower it).
        self.page_ceiling: int = min(int(st.get("page_ceiling") or cfg.max_page_size), cfg.max_page_size)
        self.page_size: int = min(int(st.get("page_size") or cfg.page_size), self.page_ceiling)
        self.last_plan_at: float = float(st.get("last_plan_at") or 0.0)
        self.plan: Plan | None = None
        self.failures = 0
        self.not_before = float(saved.get("not_before") or 0.0) if isinstance(saved, dict) else 0.0
        self.requests_in_last_plan = 0
        health.declare(account.name, kind)

    # -------------------------------------------------------------- scheduling
    def next_run(self) -> float:
        now = self.clock()
        at = max(self.not_before, now + self.budget.wait_time())
        if self.plan is None:
            at = max(at, self.last_plan_at + self.cfg.poll_interval)
        return at

    def on_unexpected(self) -> None:
        self.failures += 1
        self.not_before = self.clock() + backoff_delay(self.failures, self.rng)

    def _save(self) -> None:
        self.store.set_state(self._key, {
            "synced_until": self.synced_until, "page_size": self.page_size, "page_ceiling": self.page_ceiling,
            "last_plan_at": self.last_plan_at,
        })

    def make_plan(self, now: float) -> Plan:
        """The range that can still change: from the oldest unfinished task (or the last synced point
        minus an overlap, for tasks created late) up to now, never older than the API allows."""
        if self.synced_until is None:
            start = clamp_start(now - self.cfg.lookback, now, self.cfg.max_query_age)  # first start: back-fill
        else:
            # Unfinished tasks are re-read as far back as the API reaches (not just the lookback): otherwise a
            # slow task would stay "run" here, and count as unfinished, long after the vendor finished it.
            reach = clamp_start(now - self.cfg.max_query_age, now, self.cfg.max_query_age)
            start = self.synced_until - self.cfg.overlap
            oldest = self.store.cdn_oldest_unfinished(self.account.name, self.kind, since=reach)
            if oldest is not None:
                start = min(start, oldest)
            start = max(start, reach)
        chunks = chunk_range(start, now)
        chunks.reverse()  # newest first: the short windows are right soonest
        return Plan(chunks=chunks, start=start, end=now)

    # -------------------------------------------------------------- one request
    def step(self) -> None:
        now = self.clock()
        if self.plan is None:
            self.plan = self.make_plan(now)
            self.last_plan_at = now
            self._save()
        plan = self.plan
        # Before the first plan completes, everything since the plan's start is unsynced.
        self.health.set_lag(self.account.name, self.kind,
                            now - (self.synced_until if self.synced_until is not None else plan.start))
        if not plan.chunks:
            self._finish_plan()
            return
        start, end = plan.chunks[0]
        # The API refuses starts older than its limit; a plan that waited long may have drifted past it.
        start = clamp_start(start, now, self.cfg.max_query_age)
        if start > end:
            plan.chunks.pop(0)
            plan.page_no = 1
            return
        plan.requests += 1
        try:
            try:
                page = self.client.query(self.kind, start, end, page_no=plan.page_no, page_size=self.page_size)
            finally:
                self._spend_slot()  # whatever happened, the request may have reached the vendor
        except ApiError as exc:
            self._on_error(exc)
            self._save_budget()  # Retry-After and backoff hold across a reload or restart too
            return
        self.failures = 0
        self.store.upsert_cdn_tasks(self.account.name, self.kind, page.tasks)
        self.health.poll_result(self.account.name, self.kind, True, self.clock())
        # Rows this page must hold if the vendor serves our page size (the client refuses empty ones).
        expected = min(self.page_size, page.count - (plan.page_no - 1) * self.page_size)
        if 0 < page.rows < expected:
            # A short page: the vendor caps the page size without saying so. Paging on with our size would
            # skip rows, so adopt its size and read the chunk again from the first page.
            log.warning("%s: vendor returned %d rows for page size %d; using %d", self.name, page.rows,
                        self.page_size, page.rows)
            self.page_size = self.page_ceiling = page.rows
            plan.page_no = 1
            self._save()
            return
        if plan.page_no * self.page_size >= page.count:
            plan.chunks.pop(0)
            plan.page_no = 1
            if not plan.chunks:
                self._finish_plan()
        else:
            plan.page_no += 1

    def _spend_slot(self) -> None:
        # Recorded when the answer is in: the vendor counts arrivals, and an arrival is never later than
        # our completion, so spacing completions by the budget spaces the vendor's arrivals too.
        self.budget.record()
        self._save_budget()

    def _save_budget(self) -> None:
        self.store.set_state(self._key + ":budget", {**self.budget.state(), "not_before": self.not_before})

    def _finish_plan(self) -> None:
        assert self.plan is not None
        self.synced_until = self.plan.end
        self.requests_in_last_plan = self.plan.requests
        self._grow_page_size(self.plan.requests)
        self.plan = None
        self._save()
        self.health.set_lag(self.account.name, self.kind, self.clock() - self.synced_until)

    def _grow_page_size(self, requests_used: int) -> None:
        """A cycle that needed more requests than the budget allows per poll interval falls behind a little
        more each time: fewer, larger pages are the only way to catch up within the vendor's limits."""
        limit = self.cfg.rate_limit
        per_interval = max(1, int(limit.requests * self.cfg.poll_interval / limit.per))
        if requests_used > per_interval and self.page_size < self.page_ceiling:
            grown = min(self.page_size * 2, self.page_ceiling)
            log.info("%s: a cycle took %d requests, the budget allows %d per %.0fs; page size %d -> %d",
                     self.name, requests_used, per_interval, self.cfg.poll_interval, self.page_size, grown)
            self.page_size = grown

    def _on_error(self, exc: ApiError) -> None:
        now = self.clock()
        self.health.poll_result(self.account.name, self.kind, False, now)
        self.failures += 1
        if exc.kind == "bad_request" and exc.page_size_error and self.page_size > 1:
            # The maximum page size is undocumented: halve, restart the chunk (page borders moved), remember.
            # Growth stops at the halved size: probing sizes between it and the refused one would spend the
            # tight budget on refusals.
            self.page_size = self.page_ceiling = max(1, self.page_size // 2)
            log.warning("%s: vendor refused page size; trying %d", self.name, self.page_size)
            if self.plan:
                self.plan.page_no = 1
            self._save()
            return
        if exc.kind == "bad_request" and exc.too_old:
            log.warning("%s: vendor says the range is too old (%s); re-planning", self.name, exc.message)
            self.plan = None
            self.last_plan_at = 0.0
            self.not_before = now + backoff_delay(self.failures, self.rng)
            return
        if exc.kind == "rate_limited":
            wait = exc.retry_after if exc.retry_after is not None else self.cfg.rate_limit.per
            self.budget.block_until(now + wait)
            log.warning("%s: rate limited by the vendor; next request in %.0fs", self.name, wait)
            return
        if exc.kind == "auth":
            self.not_before = now + AUTH_BACKOFF
            log.error("%s: authentication failed (%s): check username/api key or AK/SK of account %r; "
                      "retrying in %.0fs", self.name, exc.message, self.account.name, AUTH_BACKOFF)
            return
        if exc.kind == "bad_request":
            # Never read as "no tasks": keep the watermark, re-plan after a backoff, and stay down (up=0)
            # so the alert fires if the vendor keeps refusing.
            log.error("%s: vendor refused the query (%s); re-planning", self.name, exc.message)
            self.plan = None
            self.last_plan_at = now
            self.not_before = now + backoff_delay(self.failures, self.rng)
            return
        delay = max(backoff_delay(self.failures, self.rng), exc.retry_after or 0.0)
        self.not_before = now + delay
        log.warning("%s: %s (%s); retrying in %.1fs", self.name, exc.kind, exc.message, delay)


def fmgr_lifecycle(cfg: FmgrConfig) -> Lifecycle:
    """The polling policy of a task's lifecycle (README: "Fmgr task lifecycle") from the fmgr config."""
    return Lifecycle(poll_interval=cfg.poll_interval, notify_grace=cfg.notify_grace,
                     confirm_delay=cfg.confirm_delay)


class FmgrPoller(Worker):
    """Polls tracked Fmgr ids that are not final (or final by notification only) within the budget."""

    name = "poll-fmgr"

    def __init__(self, cfg: FmgrConfig, store: Store, client: FmgrClient | None, health: ApiHealth, *,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 maintenance: Callable[[], None] | None = None, maintenance_every: float = 300.0):
        super().__init__(clock)
        self.cfg, self.store, self.client, self.health = cfg, store, client, health
        self.lifecycle = fmgr_lifecycle(cfg)
        self.rng = rng or random.Random()
        self.not_found_run: set[str] = set()  # distinct ids answered "not found" since the last success
        self.budget = RateBudget(cfg.rate_limit, clock, store.get_state("fmgr:budget"))
        self.stop_timeout = cfg.request_timeout + 5.0
        self.failures = 0
        self.not_before = 0.0
        self.maintenance = maintenance
        self.maintenance_every = maintenance_every
        self.last_maintenance = 0.0
        if client is not None:
            health.declare("", "fmgr", up=False)

    def next_run(self) -> float:
        now = self.clock()
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
        now = self.clock()
        if now >= self.last_maintenance + self.maintenance_every:
            self.last_maintenance = now
            n = self.store.abandon_old_fmgr(now - self.cfg.max_task_age)
            if n:
                log.warning("fmgr: stopped polling %d task(s) older than max_task_age", n)
            if self.maintenance is not None:
                self.maintenance()
        if self.client is None or now < self.not_before:
            return
        for task_id in self.store.fmgr_due(now, limit=self.cfg.rate_limit.requests):
            if self.budget.wait_time() > 0 or self._stop.is_set():
                break
            ok = self.poll_one(task_id)
            self.budget.record()  # at completion, as for the CDN budget
            self.store.set_state("fmgr:budget", self.budget.state())
            if not ok:
                break

    def poll_one(self, task_id: str) -> bool:
        """Poll one id; False when the API looks unhealthy and the rest should wait."""
        assert self.client is not None
        started = time.monotonic()
        try:
            status = self.client.status(task_id)
        except FmgrApiError as exc:
            self.health.observe_request("fmgr", exc.kind, time.monotonic() - started)
            now = self.clock()
            if exc.kind == "not_found":
                # The vendor does not know the id (typo, or not indexed yet): not an outage, unless no id at all
                # is found, which points at a wrong fmgr.endpoint rather than at the ids.
                self.not_found_run.add(task_id)
                wrong_endpoint = len(self.not_found_run) >= NOT_FOUND_OUTAGE
                if wrong_endpoint and len(self.not_found_run) == NOT_FOUND_OUTAGE:
                    log.error("fmgr: the last %d different ids all answered 'not found' and none succeeded: "
                              "check fmgr.endpoint", NOT_FOUND_OUTAGE)
                self.health.poll_result("", "fmgr", not wrong_endpoint, now)
                self.store.fmgr_poll_failed(task_id, f"not_found: {exc}", now + self.cfg.poll_interval * 5)
                return True
            self.failures += 1
            self.health.poll_result("", "fmgr", False, now)
            delay = max(backoff_delay(self.failures, self.rng), getattr(exc, "retry_after", None) or 0.0)
            self.store.fmgr_poll_failed(task_id, f"{exc.kind}: {exc}", now + delay)
            if exc.kind == "rate_limited":
                self.budget.block_until(now + delay)
            self.not_before = now + delay
            log.warning("fmgr: %s polling %s (%s); retrying in %.1fs", exc.kind, task_id, exc, delay)
            return False
        self.health.observe_request("fmgr", "ok", time.monotonic() - started)
        now = self.clock()
        self.failures = 0
        self.not_found_run.clear()
        self.health.poll_result("", "fmgr", True, now)
        self.store.apply_fmgr_status(status, source="poll", polled=True, lifecycle=self.lifecycle)
        return True


class PollerGroup:
    """All workers of one configuration, started and stopped together."""

    def __init__(self, config: Config, store: Store, health: ApiHealth, *, clock: Callable[[], float] = time.time,
                 session_factory: Callable[[], object] | None = None) -> None:
        import requests

        make_session = session_factory or requests.Session
        self.workers: list[Worker] = []
        self.cdn: list[CdnPoller] = []
        for account in config.accounts:
            for kind, kcfg in config.task_kinds():
                client = CdnClient(account, session=make_session(), clock=clock, timeout=kcfg.request_timeout,
                                   health=health)
                poller = CdnPoller(account, kind, kcfg, store, client, health, clock=clock)
                self.cdn.append(poller)
                self.workers.append(poller)
        fcfg = config.fmgr
        fclient = None
        if fcfg.enabled and fcfg.endpoint:
            fclient = FmgrClient(fcfg.endpoint, session=make_session(), timeout=fcfg.request_timeout)
        if fcfg.enabled and fcfg.persistent_ids:
            store.register_fmgr_ids(list(fcfg.persistent_ids), "config")
        self.fmgr = FmgrPoller(fcfg, store, fclient, health, clock=clock,
                               maintenance=lambda: self._maintenance(config, store, clock))
        self.workers.append(self.fmgr)

    @staticmethod
    def _maintenance(config: Config, store: Store, clock: Callable[[], float]) -> None:
        now = clock()
        kinds = [c for _, c in config.task_kinds()]
        keep = max([c.max_query_age for c in kinds] + [w.seconds for c in kinds for w in c.windows] + [0.0])
        if kinds:
            n = store.prune_cdn(now - keep - 3600)
            if n:
                log.info("pruned %d CDN task(s) older than every window", n)
        fkeep = max([w.seconds for w in config.fmgr.windows] + [config.fmgr.max_task_age])
        # Ids listed in the config stay known: pruned, they would be registered as new on the next start.
        store.prune_fmgr(now - fkeep - 3600, keep=config.fmgr.persistent_ids)

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def stop(self) -> None:
        for w in self.workers:
            w._stop.set()
            w._wake.set()
        for w in self.workers:
            w.stop()
