"""The storage interface: every operation the exporter needs from a database, and nothing else.

The rules (which task finished, what a notification means for a task's code, what a window counts) live
above this line, in ``store.py``, ``aggregates.py`` and ``fmgr_tracking.py``; a backend only stores rows and
answers range queries. A backend is one module implementing ``Repository`` and ``Transaction``:
``sqlite_repo.py`` (the reference implementation) and ``postgres_repo.py``; ``open_repository`` picks one.

Timestamps are unix seconds (float). Counter label sets arrive already encoded as a string key.

Operations, by concern:

* lifecycle: ``close``, ``ping``, ``write_health``;
* key/value poller state: ``get_state``, ``set_state``;
* rebuilding the in-memory aggregates after a start: ``counter_rows``, ``cdn_rows``, ``fmgr_task_rows``,
  ``fmgr_item_rows``;
* CDN reads for scrapes and planning: ``cdn_edge_rows``, ``cdn_oldest_unfinished``, ``cdn_range_count``,
  ``cdn_unfinished``, ``cdn_task_count``, ``cdn_counts_by_status``; writes outside a transaction:
  ``cdn_mark_checked``, ``prune_cdn``;
* Fmgr reads: ``fmgr_edge_task_rows``, ``fmgr_edge_item_rows``, ``fmgr_due``, ``fmgr_next_due``,
  ``fmgr_count_pending``, ``fmgr_oldest_pending``, ``fmgr_task_rows_for_api``; writes outside a
  transaction: ``fmgr_poll_failed``, ``abandon_old_fmgr``, ``prune_fmgr``;
* ``transaction()``: one atomic unit of writes (``Transaction``), committed when the block ends normally
  and rolled back when it raises.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

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
    code is ``None`` (``codes_in == ()`` and ``unknown``), in ``codes_in``, or not in ``codes_not_in``."""

    abandoned: bool | None = None
    unknown: bool = False
    codes_in: tuple[int, ...] | None = None
    codes_not_in: tuple[int, ...] | None = None
    nothing: bool = False  # a state no task can be in


class Transaction(Protocol):
    """Writes inside one atomic unit. Reads here see the unit's own writes."""

    def add_counters(self, increments: Iterable[tuple[str, str, float]]) -> None: ...

    # CDN
    def cdn_get(self, account: str, kind: str, url: str, create_ts: float) -> tuple[str, float | None] | None: ...
    def cdn_touch(self, account: str, kind: str, url: str, create_ts: float, ts: float) -> None: ...
    def cdn_put(self, account: str, kind: str, task: CdnTask, ts: float) -> None: ...

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


class Repository(Protocol):
    path: str

    def close(self) -> None: ...
    def ping(self) -> bool: ...
    def write_health(self) -> tuple[bool, str]: ...
    def transaction(self) -> AbstractContextManager[Transaction]: ...

    def get_state(self, key: str) -> Any: ...
    def set_state(self, key: str, value: Any) -> None: ...

    def counter_rows(self) -> Iterable[tuple[str, str, float]]: ...
    def cdn_rows(self) -> Iterable[tuple[str, str, float, str, float | None]]: ...
    def fmgr_task_rows(self) -> Iterable[tuple[float, int | None]]: ...
    def fmgr_item_rows(self) -> Iterable[tuple[float, str, int | None]]: ...

    def cdn_edge_rows(self, account: str, kind: str, after: float, until: float
                      ) -> list[tuple[float, str, float | None]]: ...
    def cdn_oldest_unfinished(self, account: str, kind: str, since: float | None) -> float | None: ...
    def cdn_range_count(self, account: str, kind: str, start: float, end: float) -> int: ...
    def cdn_unfinished(self, account: str, kind: str, start: float, end: float
                       ) -> list[tuple[float, str, float, str]]: ...
    def cdn_mark_checked(self, account: str, kind: str, start: float, end: float, ts: float,
                         url: str | None) -> None: ...
    def cdn_task_count(self, account: str | None, kind: str | None) -> int: ...
    def cdn_counts_by_status(self, account: str, kind: str, start: float, end: float) -> dict[str, int]: ...
    def prune_cdn(self, before: float) -> int: ...

    def fmgr_edge_task_rows(self, after: float, until: float) -> list[tuple[float, int | None]]: ...
    def fmgr_edge_item_rows(self, after: float, until: float) -> list[tuple[float, str, int | None]]: ...
    def fmgr_due(self, now: float, limit: int) -> list[str]: ...
    def fmgr_next_due(self) -> float | None: ...
    def fmgr_count_pending(self) -> int: ...
    def fmgr_oldest_pending(self) -> float | None: ...
    def fmgr_poll_failed(self, task_id: str, error: str, next_poll: float, give_up: bool, ts: float) -> bool: ...
    def abandon_old_fmgr(self, before: float) -> int: ...
    def fmgr_task_rows_for_api(self, where: StateFilter, limit: int, task_id: str | None) -> list[FmgrApiRow]: ...
    def prune_fmgr(self, before: float, keep: Sequence[str]) -> int: ...


def open_repository(target: str | os.PathLike[str]) -> Repository:
    """The repository a storage target names: a ``postgresql://`` (or ``postgres://``) URL opens
    ``postgres_repo.PostgresRepository``, anything else is the path of an SQLite database.

    The backends are imported here, not at the top: SQLite users never import psycopg."""
    text = os.fspath(target)
    if urlsplit(text).scheme.lower() in ("postgresql", "postgres"):
        from .postgres_repo import PostgresRepository

        return PostgresRepository(text)
    from .sqlite_repo import SqliteRepository

    return SqliteRepository(text)
