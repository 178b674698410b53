"""The storage interface: every operation the exporter needs from a database, and nothing else.

The rules (which task finished, what a notification means for a task's code, what a window counts) live
above this line, in ``store.py``, ``aggregates.py`` and ``fmgr_tracking.py``; a backend only stores rows and
answers range queries. A backend is one module implementing ``Repository`` and ``Transaction``:
``sqlite_repo.py`` (the reference implementation) and ``postgres_repo.py``; ``open_repository`` picks one.

Timestamps are unix seconds (float). Counter label sets arrive already encoded as a string key.

Operations, by concern:

* lifecycle: ``close``, ``ping``, ``write_health``;
* rebuilding the in-memory aggregates after a start: ``load`` (one consistent snapshot);
* replicas: ``lease_acquire``, ``lease_release`` (exporter/leases.py), ``changes_since``, ``prune_changes``;
* poller state: ``get_state`` (written in a transaction);
* CDN reads for scrapes and planning: ``cdn_edge_rows``, ``cdn_oldest_unfinished``, ``cdn_range_count``,
  ``cdn_unfinished``, ``cdn_rows``, ``cdn_task_count``, ``cdn_counts_by_status``; ``prune_cdn``;
* Fmgr reads: ``fmgr_edge_task_rows``, ``fmgr_edge_item_rows``, ``fmgr_due``, ``fmgr_next_due``,
  ``fmgr_count_pending``, ``fmgr_oldest_pending``, ``fmgr_task_rows_for_api``; ``abandon_old_fmgr``,
  ``prune_fmgr``;
* ``transaction()``: one atomic unit of writes (``Transaction``: fence check, counters, poller state, CDN
  upserts and re-check marks, Fmgr tasks, items, notifications and failed polls, the change log), committed
  when the block ends normally and rolled back when it raises.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from .leases import Fence, Grant

# The CDN statuses a stored task can have; ``unknown`` is what a sweep could not place.
CDN_UNFINISHED = ("wait", "run", "unknown")


@dataclass(frozen=True)
class CdnTask:
    """One row of ``resultDetail``, times as unix seconds."""

    url: str
    create_ts: float
    status: str
    begin_ts: float | None = None
    finish_ts: float | None = None
    rate: float | None = None  # 0..100 as the vendor sends it

    @property
    def final(self) -> bool:
        return self.status in ("success", "failure")


class FmgrTaskRow(NamedTuple):
    first_seen: float
    final_seen: float | None
    code: int | None
    confirmed: bool
    abandoned: bool
    next_poll: float
    last_polled: float | None


class FmgrItemRow(NamedTuple):
    op: str
    code: int | None
    fsize: int | None


class FmgrApiRow(NamedTuple):
    """What the registration API shows of one tracked task."""

    id: str
    first_seen: float
    final_seen: float | None
    code: int | None
    source: str
    last_polled: float | None
    confirmed: bool
    abandoned: bool
    errors: int
    last_error: str | None


@dataclass(frozen=True)
class StateFilter:
    """Which tracked Fmgr tasks the registration API lists: ``abandoned`` ones, or not abandoned ones whose
    code is ``None`` (``codes_in == ()`` and ``unknown``), in ``codes_in``, or not in ``codes_not_in``; and
    ``pending`` ones (or not)."""

    abandoned: bool | None = None
    unknown: bool = False
    codes_in: tuple[int, ...] | None = None
    codes_not_in: tuple[int, ...] | None = None
    nothing: bool = False  # a state no task can be in
    # Pending as cdnetworks_fmgr_pending_tasks counts it (processing not known to be over, not abandoned), or not.
    pending: bool | None = None


class Transaction(Protocol):
    """Writes inside one atomic unit. Reads here see the unit's own writes."""

    def check_fence(self, fence: Fence) -> None:
        """Raise ``LeaseLost`` unless ``fence`` is still the current holder and generation of its lease; the
        lease stays put until the unit ends (a rival cannot take it over meanwhile)."""
        ...

    def add_counters(self, increments: Iterable[tuple[str, str, float]]) -> None: ...
    def set_state(self, key: str, value: Any) -> None: ...
    def log_change(self, origin: str, payload: str) -> None:
        """Only for a ``shared`` repository: the unit's in-memory changes, for the other replicas."""
        ...

    # CDN
    def cdn_get(self, account: str, kind: str, url: str, create_ts: float) -> tuple[str, float | None] | None: ...
    def cdn_touch(self, account: str, kind: str, url: str, create_ts: float, ts: float) -> None: ...
    def cdn_put(self, account: str, kind: str, task: CdnTask, ts: float) -> None: ...
    def cdn_mark_checked(self, account: str, kind: str, start: float, end: float, ts: float,
                         url: str | None) -> None: ...

    # Fmgr
    def fmgr_register(self, task_id: str, ts: float, source: str) -> bool: ...
    def fmgr_get(self, task_id: str) -> FmgrTaskRow | None: ...
    def fmgr_was_notified(self, task_id: str) -> bool: ...
    def fmgr_insert(self, task_id: str, first_seen: float, source: str, code: int | None,
                    final_seen: float | None, confirmed: bool, ts: float, last_polled: float | None,
                    next_poll: float) -> None: ...
    def fmgr_update(self, task_id: str, code: int | None, final_seen: float | None, confirmed: bool, ts: float,
                    last_polled: float | None, next_poll: float) -> None: ...
    def fmgr_items(self, task_id: str) -> dict[int, FmgrItemRow]: ...
    def fmgr_put_item(self, task_id: str, idx: int, item: FmgrItemRow) -> None: ...
    def notification_add(self, dedup_key: str, task_id: str, ts: float) -> bool: ...
    def fmgr_poll_failed(self, task_id: str, error: str, next_poll: float, give_up: bool, ts: float) -> bool:
        """Record a failed poll; True when this gave up a task that was pending."""
        ...


class Loaded(NamedTuple):
    """Everything the in-memory aggregates are rebuilt from, read in one consistent snapshot, and the last
    change (``Transaction.log_change``) that snapshot includes."""

    counters: list[tuple[str, str, float]]
    cdn: list[tuple[str, str, float, str, float | None]]
    fmgr_tasks: list[tuple[float, int | None]]
    fmgr_items: list[tuple[float, str, int | None]]
    pending: int
    change_seq: int


class Repository(Protocol):
    path: str
    # Several exporters may share this database: leases decide which one runs each poller, and every replica
    # follows the others' in-memory changes through ``changes_since``.
    shared: bool

    def close(self) -> None: ...
    def ping(self) -> bool: ...
    def write_health(self) -> tuple[bool, str]: ...
    def transaction(self) -> AbstractContextManager[Transaction]: ...

    def get_state(self, key: str) -> Any: ...

    def load(self) -> Loaded: ...
    def changes_since(self, seq: int) -> tuple[list[tuple[int, str, str]], bool]:
        """(seq, origin, payload) of the changes after ``seq``, oldest first, and False when some of those were
        pruned already (the reader must rebuild from ``load``)."""
        ...
    def prune_changes(self, before: float) -> None: ...

    def lease_acquire(self, name: str, holder: str, ttl: float) -> Grant | None: ...
    def lease_release(self, name: str, holder: str) -> None: ...

    def cdn_edge_rows(self, account: str, kind: str, after: float, until: float
                      ) -> list[tuple[float, str, float | None]]: ...
    def cdn_oldest_unfinished(self, account: str, kind: str, since: float | None) -> float | None: ...
    def cdn_range_count(self, account: str, kind: str, start: float, end: float) -> int: ...
    def cdn_unfinished(self, account: str, kind: str, start: float, end: float
                       ) -> list[tuple[float, str, float, str]]: ...
    def cdn_rows(self, account: str, kind: str, start: float, end: float) -> list[tuple[float, str, str]]: ...
    def cdn_task_count(self, account: str | None, kind: str | None) -> int: ...
    def cdn_counts_by_status(self, account: str, kind: str, start: float, end: float) -> dict[str, int]: ...
    def prune_cdn(self, before: float) -> int: ...

    def fmgr_edge_task_rows(self, after: float, until: float) -> list[tuple[float, int | None]]: ...
    def fmgr_edge_item_rows(self, after: float, until: float) -> list[tuple[float, str, int | None]]: ...
    def fmgr_due(self, now: float, limit: int) -> list[str]: ...
    def fmgr_next_due(self) -> float | None: ...
    def fmgr_count_pending(self) -> int: ...
    def fmgr_oldest_pending(self) -> float | None: ...
    def fmgr_count_unknown(self) -> int:
        """Tracked ids still polled whose last poll the vendor answered 'not found'."""
        ...
    def abandon_old_fmgr(self, before: float) -> int: ...
    def fmgr_task_rows_for_api(self, where: StateFilter, limit: int, task_id: str | None) -> list[FmgrApiRow]: ...
    def prune_fmgr(self, before: float, keep: Sequence[str]) -> int: ...


def open_repository(target: str | os.PathLike[str], *, password: str | None = None) -> Repository:
    """The repository a storage target names: a ``postgresql://`` (or ``postgres://``) URL opens
    ``postgres_repo.PostgresRepository``, anything else is the path of an SQLite database.

    ``password`` (``storage.password``) completes a URL that does not carry one. The backends are imported
    here, not at the top: SQLite users never import psycopg."""
    text = os.fspath(target)
    if urlsplit(text).scheme.lower() in ("postgresql", "postgres"):
        from .postgres_repo import PostgresRepository

        return PostgresRepository(text, password=password)
    from .sqlite_repo import SqliteRepository

    return SqliteRepository(text)
