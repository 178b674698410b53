"""The worker thread every poller (and the retention job) runs on: ``step()`` whenever ``next_run()`` allows,
until stopped; a failing step never ends polling for good and never loops hot."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from exporter.polling.leases import MARGIN, LeaseLost, LeaseView

log = logging.getLogger(__name__)


# While the store keeps failing, a worker says so again at most this often (seconds).
STORE_REMINDER = 600.0


def store_failure(exc: BaseException) -> str | None:
    """``exc`` as one line when it is the database failing (SQLite's or PostgreSQL's errors, a file that is
    gone), else None: an outage to report, not a bug to show a traceback for."""
    for cls in type(exc).__mro__:
        module = cls.__module__
        if module == "sqlite3" or module == "psycopg" or module.startswith("psycopg."):
            text = " ".join(str(exc).split())[:300]
            return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return None


class Worker:
    """Base: a thread that calls ``step()`` when ``next_run()`` allows, until stopped."""

    name = "worker"

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._store_failing_since: float | None = None  # monotonic time of the first of the current failures
        self._store_reminded = 0.0
        self._store_failures = 0

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
            except LeaseLost as exc:
                # Another replica runs this worker now; nothing was written. Wait for the lease to come back.
                log.warning("%s: %s; another replica polls now", self.name, exc)
                self._stop.wait(1.0)
            except Exception as exc:
                # A bug or a store failure must not kill polling for good: retried after a backoff, and never
                # in a hot loop even if next_run() itself keeps failing. A store that cannot be read or
                # written is an outage, not a bug: one line when it starts, a reminder now and then, and one
                # when it is over (below); anything else is logged with its traceback.
                self._failed(exc)
                self.on_unexpected()
                self._stop.wait(1.0)
            else:
                self._store_recovered()

    def _failed(self, exc: Exception) -> None:
        what = store_failure(exc)
        if what is None:
            log.exception("%s: unexpected error", self.name)
            return
        now = time.monotonic()
        self._store_failures += 1
        if self._store_failing_since is None:
            self._store_failing_since = self._store_reminded = now
            log.error("%s: the store failed (%s); polling is retried, and this is logged again when it "
                      "recovers", self.name, what)
        elif now - self._store_reminded >= STORE_REMINDER:
            self._store_reminded = now
            log.error("%s: the store is still failing after %.0fs and %d attempts (%s)", self.name,
                      now - self._store_failing_since, self._store_failures, what)
        else:
            log.debug("%s: the store failed again (%s)", self.name, what)

    def _store_recovered(self) -> None:
        if self._store_failing_since is None:
            return
        log.warning("%s: the store works again, after %.0fs and %d failed attempts", self.name,
                    time.monotonic() - self._store_failing_since, self._store_failures)
        self._store_failing_since = None
        self._store_failures = 0

    def may_send(self, lease: LeaseView, request_timeout: float, restore: Callable[[], None]) -> bool:
        """Whether a step of a poller on ``lease`` may send a request now: the lease outlasts one, and, when this
        replica has just taken it (again), what the previous holder stored is reloaded first (``restore``) and
        must still say the next request is due."""
        if not lease.usable_for(request_timeout + MARGIN):
            return False
        if lease.newly_taken() is not None:
            restore()  # what the previous holder stored is the truth now
            return self.next_run() <= self.clock()
        return True

    def next_run(self) -> float:
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    def on_unexpected(self) -> None:
        raise NotImplementedError
