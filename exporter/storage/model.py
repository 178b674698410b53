"""The rows the exporter reads from the vendor and keeps in its store: the one module both sides import.

The wire modules (``vendor/cdn.py``) produce them, the store layer (``store.py``, ``fmgr/tracking.py``,
``aggregates.py``) and the repositories (``sql_repo.py`` and its backends) store and return them. This module
imports nothing of the exporter's, so neither side depends on the other through it.

Timestamps are unix seconds (float).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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
    error: str | None = None  # the vendor's reason for a failed item
    key: str | None = None  # the object the item wrote, when it names one


class BrowseRow(NamedTuple):
    """One stored CDN task as the task browser shows it."""

    account: str
    kind: str
    create_ts: float
    url: str
    status: str
    begin_ts: float | None
    finish_ts: float | None
    rate: float | None
    updated_ts: float  # when the exporter last read (or re-checked) it


# A bounded read for the task browser: the rows (at most the limit asked for) and, when the read stopped at its
# scan limit before finding that many, the sort key of the last row it looked at, where the next read goes on
# (None: nothing was cut short).
ScannedTo = tuple[float, str] | None



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


class Loaded(NamedTuple):
    """Everything the in-memory aggregates are rebuilt from, read in one consistent snapshot, and the last
    change (``Transaction.log_change``) that snapshot includes."""

    counters: list[tuple[str, str, float]]
    cdn: list[tuple[str, str, float, str, float | None]]
    fmgr_tasks: list[tuple[float, int | None]]
    fmgr_items: list[tuple[float, str, int | None]]
    pending: int
    change_seq: int
