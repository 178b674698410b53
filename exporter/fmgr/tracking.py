"""Fmgr task tracking: the lifecycle rules applied to what the vendor says, the group commit of
notifications, and the registration API's view of tracked tasks.

A task's code only moves forward: a notification reports the *notification* status at top level, never the
task code, and is older news than a poll that already saw the notification phase. When it is polled next
(or that it is final) is the ``fmgr.Lifecycle``'s call.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from exporter.fmgr import wire as fmgrwire
from exporter.metrics import catalogue as m
from exporter.storage.aggregates import Work, fmgr_item_deltas, fmgr_task_deltas
from exporter.storage.model import FmgrApiRow, FmgrItemRow, StateFilter
from exporter.storage.repository import Repository

DEFAULT_LIFECYCLE = fmgrwire.Lifecycle()


def processed(code: int | None) -> bool:
    """Processing is over (3 and the notification phase after it): the task is no longer pending."""
    return code is not None and code in fmgrwire.PROCESSED_TASK_CODES


def item_phase(code: int | None) -> int:
    """How far an item's code is along its lifecycle (0/1, then 2/3, then 4/18, then 5/6/19/20)."""
    if code in (2, 3):
        return 1
    if code in (4, 18):
        return 2
    if code in (5, 6, 19, 20):
        return 3
    return 0


def register(work: Work, ids: Sequence[str], source: str, now: float) -> int:
    """Start tracking ids; returns how many were new. Known ids are left as they are."""
    added = 0
    for task_id in ids:
        if work.tx.fmgr_register(task_id, now, source):
            added += 1
            work.pending += 1
            work.fmgr.extend(fmgr_task_deltas(now, None, +1))
    return added


def apply_status(work: Work, status: fmgrwire.FmgrStatus, *, source: str, polled: bool,
                 lifecycle: fmgrwire.Lifecycle, now: float) -> None:
    """Record what the vendor said about a task (from a poll or a verified notification)."""
    tx = work.tx
    row = tx.fmgr_get(status.id)
    new_task = row is None
    if row is None:
        first_seen, final_seen, old_code, confirmed, abandoned, next_poll, last_polled = (
            now, None, None, False, False, now, None)
    else:
        first_seen, final_seen, old_code, confirmed, abandoned, next_poll, last_polled = row
    new_code = old_code
    if polled:
        new_code = status.code
    elif (status.items and all(fmgrwire.item_outcome(i.code) is not None for i in status.items)
          and old_code in (None, 0, 1)):  # never back from notifying/notified to completed
        # A notification is only sent once processing is over: the task is at least "completed".
        new_code = 3
    if new_task:
        work.fmgr.extend(fmgr_task_deltas(first_seen, new_code, +1))
    elif new_code != old_code:
        work.fmgr.extend(fmgr_task_deltas(first_seen, old_code, -1))
        work.fmgr.extend(fmgr_task_deltas(first_seen, new_code, +1))
    if fmgrwire.notify_failed(new_code, item=False) and not fmgrwire.notify_failed(old_code, item=False):
        work.inc(m.FMGR_NOTIFY_FAILURES.store_key, {"scope": "task"})
    new_final_seen = final_seen if final_seen is not None else (now if processed(new_code) else None)
    if new_final_seen is None and new_task:
        work.pending += 1
    elif final_seen is None and new_final_seen is not None and not abandoned and not new_task:
        work.pending -= 1
    if polled:
        # A task that was notified has a notifyURL, so its 3 is not final whatever the grace period.
        due = lifecycle.after_poll(new_code, now, processed_since=new_final_seen,
                                   notified=tx.fmgr_was_notified(status.id))
        confirmed, next_poll = (True, now) if due is None else (False, due)
    else:
        # Of a task still being polled: its last poll bounds how long the confirming poll may put polling off.
        due = lifecycle.after_notification(new_code, now,
                                           last_polled=None if confirmed or abandoned else last_polled)
        if due is not None:
            confirmed, next_poll = False, due
    last_polled = now if polled else None  # a notification is no poll: the last poll stays as it was
    if new_task:
        tx.fmgr_insert(status.id, now, source, new_code, new_final_seen, confirmed, now, last_polled, next_poll)
        old_items: dict[int, FmgrItemRow] = {}
    else:
        tx.fmgr_update(status.id, new_code, new_final_seen, confirmed, now, last_polled, next_poll)
        old_items = tx.fmgr_items(status.id)
    for idx, item in enumerate(status.items):
        old = old_items.get(idx)
        if old is not None and old.code == item.code and old.fsize == item.fsize:
            continue
        if not polled and old is not None and item_phase(item.code) < item_phase(old.code):
            continue  # a notification is older news than a poll that saw the notification phase
        tx.fmgr_put_item(status.id, idx, FmgrItemRow(item.op, item.code, item.fsize))
        if old is not None:
            work.fmgr.extend(fmgr_item_deltas(first_seen, old.op, old.code, -1))
        work.fmgr.extend(fmgr_item_deltas(first_seen, item.op, item.code, +1))
        if fmgrwire.notify_failed(item.code, item=True) and not (
                old is not None and fmgrwire.notify_failed(old.code, item=True)):
            work.inc(m.FMGR_NOTIFY_FAILURES.store_key, {"scope": "item"})
        # Counted once: when an item is first seen final (an item's outcome never changes once it has one).
        outcome = fmgrwire.item_outcome(item.code)
        if outcome is not None and (old is None or fmgrwire.item_outcome(old.code) is None):
            work.inc(m.FMGR_ITEMS_FINISHED.store_key, {"op": item.op, "outcome": outcome})
        # Counted once: when an item is first seen succeeded with a size (the size may come later).
        counted = old is not None and fmgrwire.item_outcome(old.code) == "succeeded" and bool(old.fsize)
        if fmgrwire.item_outcome(item.code) == "succeeded" and item.fsize and not counted:
            work.inc(m.FMGR_PROCESSED_BYTES.store_key, {"op": item.op}, float(item.fsize))


# ---------------------------------------------------------------------- notifications: group commit
@dataclass
class _Note:
    """A notification waiting for the group commit, and what became of it."""

    status: fmgrwire.FmgrStatus
    dedup_key: str
    ts: float
    lifecycle: fmgrwire.Lifecycle
    done: bool = False
    result: bool = False
    error: BaseException | None = None
    # Held until the notification is committed (or failed): its sender blocks on it, so the writer wakes each
    # sender whose notification a batch committed and no other (a Condition's notify_all also woke those
    # queued for the next batch, who went back to sleep; benchmarks/README.md, "Notifications").
    pending: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.pending.acquire()

    def finish(self) -> None:
        self.done = True
        self.pending.release()

    def outcome(self) -> bool:
        if self.error is not None:
            raise self.error
        return self.result


class NotificationWriter:
    """Stores verified notifications once each, many per transaction.

    Concurrent callers queue their notification and the first of them writes the whole queue in one
    transaction, so a burst costs one commit instead of one per notification. Every caller returns only once
    its own notification is committed (or raises if it could not be)."""

    def __init__(self, transaction: Callable[[], AbstractContextManager[Work]], clock: Callable[[], float]) -> None:
        self._transaction = transaction
        self._clock = clock
        self._notes: list[_Note] = []
        self._lock = threading.Lock()
        self._writing = False

    def record(self, status: fmgrwire.FmgrStatus, dedup_key: str, received_ts: float,
               lifecycle: fmgrwire.Lifecycle) -> bool:
        """False when this exact delivery was already stored."""
        note = _Note(status, dedup_key, received_ts, lifecycle)
        with self._lock:
            self._notes.append(note)
            follower = self._writing
            self._writing = True
        if follower:
            with note.pending:  # until the writer has committed it
                return note.outcome()
        batch: list[_Note] = []
        try:
            while True:
                with self._lock:
                    batch, self._notes = self._notes, []
                    if not batch:
                        self._writing = False
                        break
                self._write(batch)
                for n in batch:
                    n.finish()
        except BaseException:
            with self._lock:  # never leave followers waiting for a writer that is gone
                self._writing = False
                for n in [*batch, *self._notes, note]:
                    if not n.done:
                        n.error = RuntimeError("notification writer stopped")
                        n.finish()
                self._notes = []
            raise
        return note.outcome()

    def _write(self, batch: list[_Note]) -> None:
        """One transaction for the batch; if it fails, each notification alone, so one bad entry fails only
        its own sender (who gets a 5xx and retries) and a broken store fails them all."""
        try:
            self._transact(batch)
        except Exception:
            if len(batch) == 1:
                batch[0].error = sys.exc_info()[1]
                return
            for n in batch:
                self._write([n])

    def _transact(self, batch: list[_Note]) -> None:
        with self._transaction() as work:
            now = self._clock()
            for n in batch:
                n.result = work.tx.notification_add(n.dedup_key, n.status.id, n.ts)
                if n.result:
                    apply_status(work, n.status, source="notify", polled=False, lifecycle=n.lifecycle, now=now)
                work.inc(m.FMGR_NOTIFICATIONS.store_key, {"result": "accepted" if n.result else "duplicate"})


# ---------------------------------------------------------------------- the registration API's view
# Every state ``api_view`` shows, in lifecycle order: ``unknown`` (tracked, no status seen yet: registered, not
# polled or notified), the vendor's task states, ``other`` (a code outside the vendor's table) and ``abandoned``
# (given up after fmgr.max_task_age). The same names as the ``state`` label of cdnetworks_fmgr_tasks.
API_STATES = ("unknown", *fmgrwire.TASK_STATES.values(), "other", "abandoned")


def state_filter(state: str | None, pending: bool | None = None) -> StateFilter:
    """Which tasks are in a state name, the inverse of the state ``api_view`` shows; ``pending`` as the
    ``pending`` field of ``api_view`` (None: either)."""
    if pending is not None:
        return replace(state_filter(state), pending=pending)
    if state is None:
        return StateFilter()
    if state == "abandoned":
        return StateFilter(abandoned=True)
    if state == "unknown":
        return StateFilter(abandoned=False, unknown=True)
    if state == "other":
        return StateFilter(abandoned=False, codes_not_in=tuple(sorted(fmgrwire.TASK_STATES)))
    codes = tuple(c for c, name in fmgrwire.TASK_STATES.items() if name == state)
    if not codes:
        return StateFilter(nothing=True)
    return StateFilter(abandoned=False, codes_in=codes)


def api_view(row: FmgrApiRow) -> dict[str, Any]:
    """A tracked task as the registration API shows it. ``pending`` is what cdnetworks_fmgr_pending_tasks
    counts: processing not known to be over (no code 3 or later seen yet) and not abandoned, so the states
    ``unknown``, ``pending`` and ``processing`` (and ``other`` before any 3)."""
    return {
        "persistentId": row.id, "code": row.code, "firstSeen": row.first_seen, "finalSeen": row.final_seen,
        "source": row.source,
        "state": "abandoned" if row.abandoned else ("unknown" if row.code is None else fmgrwire.task_state(row.code)),
        "pending": row.final_seen is None and not row.abandoned,
        "lastPolled": row.last_polled, "confirmed": row.confirmed, "errors": row.errors, "lastError": row.last_error,
    }


def list_tasks(repo: Repository, state: str | None, limit: int, task_id: str | None = None,
               pending: bool | None = None) -> list[dict[str, Any]]:
    """Tracked tasks, newest first, optionally only those in ``state`` and only those ``pending`` (or not),
    filtered and limited by the database."""
    return [api_view(r) for r in repo.fmgr_task_rows_for_api(state_filter(state, pending), limit, task_id)]
