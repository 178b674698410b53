"""The CDN task kinds the exporter polls, as data: adding a kind is one entry here plus its docs.

Each kind is a top-level config section of the same name, a vendor query path, and a metric prefix
(``cdnetworks_<name>_...``). The poller, the collector, the config model, the rules generator and the
docs test all read this table; nothing else names a kind.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskKind:
    name: str  # config section, metric prefix, ``api`` label value
    path: str  # the vendor's POST query endpoint (seed: ItemIdQuery)
    enabled: bool  # enabled when its config section says nothing
    budget_requests: int  # default rate_limit: this many requests ...
    budget_seconds: float  # ... per this many seconds (the vendor's published budget)
    noun: str  # how help texts and docs name one task of this kind


KINDS: tuple[TaskKind, ...] = (
    # Published budget: about one query per 5 minutes per user.
    TaskKind("prefetch", "/ccm/fetch/ItemIdQuery", True, 1, 300.0, "prefetch"),
    # The purge query has a looser budget; disabled by default because most accounts prefetch only.
    TaskKind("purge", "/ccm/purge/ItemIdQuery", False, 10, 300.0, "purge"),
)

BY_NAME: dict[str, TaskKind] = {k.name: k for k in KINDS}
NAMES: tuple[str, ...] = tuple(k.name for k in KINDS)
