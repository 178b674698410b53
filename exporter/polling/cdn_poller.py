"""The CDN poller: one worker per (account, CDN task kind).

Each worker makes vendor requests only when its rate budget allows, so the vendor's published limits
are never exceeded, even across restarts and reloads (the budget's recent request times, any Retry-After
block and the backoff are persisted, and a reload waits for a request in flight). A CDN worker sends,
one at a time, the read its ``planner.Planner`` chooses (newest tasks first, then holes, re-checks of
unfinished tasks, probes and back-fill); the planner's state is persisted too, so a read that needs
several pages resumes after a failure, a budget wait or a restart instead of starting over.

Replicas sharing a store run each worker on the replica holding its lease (exporter/polling/leases.py): a worker
sends only while its lease outlasts the request, writes with its lease as a fence, and reloads what its
predecessor stored whenever it takes the lease (again). A request in flight is marked in the stored budget
before it is sent, so whoever runs the worker next (a successor, or this exporter after kill -9) counts it
as sent: the vendor may have received it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from exporter.config import Account, TaskKindConfig
from exporter.metrics.health import ApiHealth
from exporter.polling.budget import RateBudget, after_failure, backoff_delay
from exporter.polling.leases import MARGIN, LeaseView, cdn_lease
from exporter.polling.pagesize import PageSize
from exporter.polling.planner import Planner
from exporter.polling.worker import Worker
from exporter.storage.store import CdnTask, Store
from exporter.vendor.cdn import ApiError, CdnClient

log = logging.getLogger(__name__)

AUTH_BACKOFF = 600.0  # a wrong key will not fix itself: wait long, say so


class _TaskView:
    """The store as the planner sees it: one account's tasks of one kind."""

    def __init__(self, store: Store, account: str, kind: str) -> None:
        self.store, self.account, self.kind = store, account, kind

    def range_count(self, start: float, end: float) -> int:
        return self.store.cdn_range_count(self.account, self.kind, start, end)

    def unfinished(self, start: float, end: float) -> list[tuple[float, str, float, str]]:
        return self.store.cdn_unfinished(self.account, self.kind, start, end)


class CdnPoller(Worker):
    """One (account, task kind): sends the request the planner picks whenever the budget allows."""

    def __init__(self, account: Account, kind: str, cfg: TaskKindConfig, store: Store, client: CdnClient,
                 health: ApiHealth, *, clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 shortest_window: float | None = None, longest_window: float | None = None,
                 lease: LeaseView | None = None):
        super().__init__(clock)
        self.account, self.kind, self.cfg = account, kind, cfg
        self.store, self.client, self.health = store, client, health
        self.name = f"poll-{kind}-{account.name}"
        self.rng = rng or random.Random()
        self._key = cdn_lease(account.name, kind)
        self.lease = lease or LeaseView(None, self._key)
        self.view = _TaskView(store, account.name, kind)
        self.stop_timeout = cfg.request_timeout + 5.0
        windows = [w.seconds for w in cfg.windows] or [cfg.poll_interval]
        self._windows = (shortest_window or min(windows), longest_window or max(windows))
        self.requests_sent = 0  # since start (tests and benchmarks count cycles with it)
        self.rows_read = 0
        self._restore()
        health.declare(account.name, kind)

    def _restore(self) -> None:
        """Load the plan, page size and budget stored by whoever ran this worker last."""
        cfg = self.cfg
        saved = self.store.get_state(self._key + ":budget")
        self.budget = RateBudget(cfg.rate_limit, self.clock, saved)
        if isinstance(saved, dict) and saved.get("in_flight") is not None:
            # Sent, and never recorded as answered: it may have reached the vendor, no later than its timeout.
            self.budget.record(float(saved["in_flight"]) + cfg.request_timeout)
        st = self.store.get_state(self._key) or {}
        # The vendor's largest page size is undocumented: found by ``PageSize`` and remembered.
        pages = PageSize.restore(st, cfg.page_size, cfg.max_page_size)
        self.page_size = pages.size
        self.planner = Planner(
            poll_interval=cfg.poll_interval, overlap=cfg.overlap, lookback=cfg.lookback,
            shortest_window=self._windows[0], longest_window=self._windows[1],
            max_query_age=cfg.max_query_age, page_size=pages.size, pages=pages)
        self.planner.restore(st.get("plan"))
        self.planner.slot = self.slot
        if self.planner.head is None and st.get("synced_until") is not None:
            # A store written before range planning: everything up to its watermark was read.
            self.planner.head = int(st["synced_until"])
        self.failures = 0
        self.not_before = float(saved.get("not_before") or 0.0) if isinstance(saved, dict) else 0.0
        self.last_ok = float(st.get("last_ok") or 0.0)
        if self.last_ok:
            self.health.restore_last_ok(self.account.name, self.kind, self.last_ok)

    # -------------------------------------------------------------- scheduling
    @property
    def slot(self) -> float:
        """Seconds between two requests at the budget's steady pace."""
        return self.budget.spacing

    def next_run(self) -> float:
        now = self.clock()
        if not self.lease.usable_for(self.cfg.request_timeout + MARGIN):
            return now + 1.0  # another replica runs this worker, or the lease is being renewed
        at = max(self.not_before, now + self.budget.wait_time())
        if self.planner.head is not None and self.planner.current is None:
            at = max(at, self.planner.next_due(now, self.view))
        return at

    def idle(self) -> bool:
        """Nothing to read until the next poll interval (or re-check, or probe) comes due."""
        now = self.clock()
        return self.planner.head is not None and self.planner.current is None and \
            self.planner.next_due(now, self.view) > now

    def on_unexpected(self) -> None:
        self.failures += 1
        self.not_before = self.clock() + backoff_delay(self.failures, self.rng)

    @property
    def pages(self) -> PageSize:
        """The page-size search, owned by the planner."""
        assert self.planner.pages is not None
        return self.planner.pages

    def _save(self) -> None:
        self.store.set_state(self._key, {
            "plan": self.planner.state(), "page": self.pages.state(), "last_ok": self.last_ok,
        }, fence=self.lease.fence())

    def _report(self, now: float) -> None:
        self.health.set_lag(self.account.name, self.kind, self.planner.lag(now))
        if self.planner.head is not None:
            seen = [s for _, _, s, _ in self.view.unfinished(self.planner.reach(now), self.planner.head)]
            self.health.set_oldest_read(self.account.name, self.kind, min(seen, default=None))
        self.health.set_backfill(self.account.name, self.kind, self.planner.backfill_remaining())

    # -------------------------------------------------------------- one request
    def step(self) -> None:
        if not self.may_send(self.lease, self.cfg.request_timeout, self._restore):
            return
        now = self.clock()
        self.page_size = self.planner.sync_page_size()
        read = self.planner.next_read(now, self.view, self.slot)
        self._report(now)
        if read is None:
            self._save()
            self.not_before = now + 1.0  # nothing due: next_run() says when, never a hot loop
            return
        size = 1 if read.count_only else self.page_size
        if log.isEnabledFor(logging.DEBUG):
            plan = self.planner
            log.debug("%s: plan %s %s..%s page %d size %d%s%s (lag %.0fs, back-fill %.0fs, re-read spacing %s)",
                      self.name, read.purpose, read.start, read.end, read.page_no, size,
                      f" url={read.url}" if read.url else "", f" status={read.status}" if read.status else "",
                      plan.lag(now), plan.backfill_remaining(),
                      "by age" if plan.spacing is None else f"{plan.spacing:.3f} of age")
        self._save_budget(in_flight=now)
        try:
            try:
                page = self.client.query(self.kind, read.start, read.end, page_no=read.page_no, page_size=size,
                                         url=read.url, status=read.status)
            finally:
                self._spend_slot()  # whatever happened, the request may have reached the vendor
        except ApiError as exc:
            self._on_error(exc)
            self._save()
            self._save_budget()  # Retry-After and backoff hold across a reload or restart too
            return
        self.failures = 0
        self.requests_sent += 1
        self.rows_read += page.rows
        done_at = self.clock()
        fence = self.lease.fence()
        self.store.upsert_cdn_tasks(self.account.name, self.kind, page.tasks, fence=fence)  # a probe's row too
        self.health.poll_result(self.account.name, self.kind, True, done_at)
        self.last_ok = done_at
        # Rows this page must hold if the vendor serves our page size (the client refuses empty ones).
        expected = min(size, page.count - (read.page_no - 1) * size)
        if not read.count_only and not self.planner.page_served(size, page.rows, expected, done_at):
            # A short page: the vendor caps the page size without saying so; the range is read again from its
            # first page with the vendor's size.
            log.warning("%s: vendor returned %d rows for page size %d; using %d", self.name, page.rows,
                        size, page.rows)
            self._save()
            return
        outcome = self.planner.on_answer(done_at, read, page.count)
        if outcome == "done" and not read.count_only and read.status is None:
            # Every unfinished task of the range was in the answer, or is no longer there to be read.
            self.store.cdn_mark_checked(self.account.name, self.kind, read.start, read.end, done_at, url=read.url,
                                        fence=fence)
        if outcome == "done" and read.purpose == "sweep":
            succeeded = self.planner.sweep_done(self.view)
            if succeeded:
                # In no state but success: stored as succeeded, without the finish time and rate that only a
                # read of the task itself gives (the duration histogram and rate_ratio leave them out).
                self.store.upsert_cdn_tasks(self.account.name, self.kind, [
                    CdnTask(url=url, create_ts=create, status="success") for create, url in succeeded], fence=fence)
        if read.purpose == "head" and self.planner.grow_pages():
            log.info("%s: about %.0f new tasks per %.0fs do not fit a page of %d; asking for pages of %d",
                     self.name, self.planner.rate * self.cfg.poll_interval, self.cfg.poll_interval, self.page_size,
                     self.pages.want)
        self._report(done_at)
        self._save()

    def _spend_slot(self) -> None:
        # Recorded when the answer is in: the vendor counts arrivals, and an arrival is never later than
        # our completion, so spacing completions by the budget spaces the vendor's arrivals too.
        self.budget.record()
        self._save_budget()

    def _save_budget(self, in_flight: float | None = None) -> None:
        self.store.set_state(self._key + ":budget", {
            **self.budget.state(), "not_before": self.not_before, "in_flight": in_flight,
        }, fence=self.lease.fence())

    def _on_error(self, exc: ApiError) -> None:
        now = self.clock()
        self.health.poll_result(self.account.name, self.kind, False, now)
        self.failures += 1
        if exc.kind == "bad_request" and exc.page_size_error and self.page_size > 1:
            # The maximum page size is undocumented: the planner searches for it and restarts the range.
            refused = self.page_size
            self.planner.page_refused(now)
            self.page_size = self.planner.page_size
            log.info("%s: vendor refused page size %d (its maximum is undocumented); trying %d", self.name,
                     refused, self.page_size)
            return
        if exc.kind == "bad_request" and exc.too_old:
            log.warning("%s: vendor says the range is too old (%s); re-planning", self.name, exc.message)
            self.planner.abandon()
            self.not_before = now + backoff_delay(self.failures, self.rng)
            return
        if exc.kind == "auth":
            self.not_before = now + AUTH_BACKOFF
            log.error("%s: authentication failed (%s): check username/api key or AK/SK of account %r; "
                      "retrying in %.0fs", self.name, exc.message, self.account.name, AUTH_BACKOFF)
            return
        if exc.kind == "bad_request":
            # Never read as "no tasks": the range stays unread, the read is planned again after a backoff,
            # and the API stays down (up=0) so the alert fires if the vendor keeps refusing.
            log.error("%s: vendor refused the query (%s); re-planning", self.name, exc.message)
            self.planner.abandon()
            self.not_before = now + backoff_delay(self.failures, self.rng)
            return
        retry = after_failure(self.name, exc.kind, exc.message, exc.retry_after, budget=self.budget,
                              per=self.cfg.rate_limit.per, failures=self.failures, rng=self.rng, now=now, log=log)
        if retry is not None:
            self.not_before = retry
