"""Failure events as logs (``--log.task-failures``): one structured line per CDN task and per Fmgr item that ended
in failure, so that Loki or any log pipeline has the list of failing URLs and objects that metrics cannot carry.

Each failure is written to the store's ``failure_log`` table by the very transaction that records it (the one
that counts the task in ``cdnetworks_*_tasks_finished_total``, exactly once), and ``FailureLog`` takes it out
again with a transaction of its own and logs it. So:

* a failure is logged once: the store hands each row to exactly one taker, and a restart finds only the rows
  not taken yet (those committed while the process was down or before it could log them), never one taken;
* with several replicas on one PostgreSQL store, every replica runs a ``FailureLog`` and the store's write lock
  decides which one takes each row, so each failure is logged by one replica, whichever wrote it. No lease is
  needed, and a replica that stops leaves its untaken rows to the others;
* the only way to lose a line is a crash in the instant between the taking transaction's commit and the write
  of its lines to stderr (a line logged twice would need the opposite order, and a pipeline cannot tell a
  repeated failure from a replayed one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from exporter.storage.store import Store

log = logging.getLogger(__name__)
events = logging.getLogger("exporter.failures")  # the lines themselves: a logger of their own to route or filter

INTERVAL = 1.0  # seconds between two looks at the store
BATCH = 500  # failures taken by one transaction


def rfc3339(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fields_of(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The message and the fields of one failure's line."""
    if event.get("event") == "cdn_task_failed":
        return "CDN task failed", {
            "account": event["account"], "kind": event["kind"], "url": event["url"],
            "createTime": rfc3339(event["create_ts"]), "finishTime": rfc3339(event.get("finish_ts")),
            "rate": event.get("rate")}
    return "Fmgr item failed", {
        "id": event.get("id"), "item": event.get("item"), "op": event.get("op"), "code": event.get("code"),
        "error": event.get("error"), "key": event.get("key")}


class FailureLog:
    """Takes the failures the store holds and logs them, on a thread (``start``) or one batch at a call
    (``drain``). ``store`` is asked again each time: a reload may open another one."""

    def __init__(self, store: Callable[[], Store], *, interval: float = INTERVAL) -> None:
        self._store = store
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        self.logged = 0  # lines this instance wrote

    def drain(self) -> int:
        """Log every failure the store holds now; how many."""
        logged = 0
        while True:
            taken = self._store().take_failures(BATCH)
            for event in taken:
                message, fields = fields_of(event)
                events.info(message, extra={"fields": fields})
            logged += len(taken)
            self.logged += len(taken)
            if len(taken) < BATCH:
                return logged

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="failure-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, then log what is left (the failures of the pollers' last writes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        try:
            self.drain()
        except Exception as exc:  # left in the store: logged by the next start, or by another replica
            log.warning("cannot take the last failures to log from the store: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.drain()
            except Exception as exc:  # the store is away: the rows wait there, taken at the next round
                if not self._failing:
                    log.error("cannot take failures to log from the store: %s", exc)
                self._failing = True
            else:
                self._failing = False
