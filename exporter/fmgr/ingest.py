"""What Fmgr's endpoints write to: the store, plus a nudge to the poller."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from exporter.fmgr.wire import FmgrStatus, Lifecycle
from exporter.storage.store import Store


class FmgrIngest:
    """What the notify receiver and the registration API write to: the store, plus a nudge to the poller
    so that a freshly registered or notified id is polled (confirmed) without waiting for the next tick."""

    def __init__(self, store: Store, wake: Callable[[], None], lifecycle: Lifecycle) -> None:
        self.store = store
        self.wake = wake
        self.lifecycle = lifecycle  # when a notified task gets its confirming poll

    def record_notification(self, status: FmgrStatus, dedup_key: str, received_ts: float) -> bool:
        new = self.store.record_notification(status, dedup_key, received_ts, lifecycle=self.lifecycle)
        if new:
            self.wake()
        return new

    def count_notification(self, result: str) -> None:
        self.store.count_notification(result)

    def register_ids(self, ids: Sequence[str], source: str) -> int:
        added = self.store.register_fmgr_ids(ids, source)
        if added:
            self.wake()
        return added

    def list_tasks(self, state: str | None, limit: int, pending: bool | None = None) -> list[dict[str, Any]]:
        return self.store.list_fmgr_tasks(state, limit, pending=pending)
