"""Signed Fmgr notifications: delivery passes, retries with back-off, give-ups, duplicates and forgeries.

A pass POSTs every due notification to its task's notify URL (seed 001's body and signature); the vendor's
misbehaviour is drawn per (task, attempt) from the seed, so a run repeats exactly.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests as requests_lib

from exporter.simulator.draws import hash_uniform
from exporter.simulator.fmgr import FmgrModel, FmgrTask
from exporter.simulator.settings import Settings
from exporter.simulator.wire import compact_json
from exporter.vendor import signing

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NotifySettings:
    duplicate_ratio: float = 0.0
    forged_ratio: float = 0.0
    max_attempts: int = 4


class Notifier:
    """Delivers the Fmgr model's due notifications, on demand or from a background thread."""

    def __init__(self, fmgr: FmgrModel, settings: Settings, clock: Callable[[], float],
                 lock: threading.RLock) -> None:
        self._fmgr = fmgr
        self._settings = settings
        self._clock = clock
        self._lock = lock
        self._notify_settings = NotifySettings()
        self._deliver_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.log: list[dict[str, Any]] = []

    def configure(self, *, duplicate_ratio: float, forged_ratio: float, max_attempts: int) -> None:
        if not 0 <= duplicate_ratio <= 1 or not 0 <= forged_ratio <= 1 or max_attempts < 1:
            raise ValueError("ratios must be within 0..1 and max_attempts >= 1")
        with self._lock:
            self._notify_settings = NotifySettings(duplicate_ratio, forged_ratio, max_attempts)

    def start(self, interval: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,),
                                        name="vendor-simulator-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._settings.notify_timeout * 2)
            self._thread = None

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.deliver_due()
            except Exception:  # keep notifying; a bug here must not end the demo silently
                logger.exception("simulator: notification pass failed")

    def deliver_due(self) -> int:
        """One delivery pass at the current clock; returns the number of POSTs sent."""
        with self._deliver_lock:
            with self._lock:
                now = self._clock()
                due = self._fmgr.due_notifications(now)
                settings = self._notify_settings
            return sum(self._deliver(task, settings) for task in due)

    def _deliver(self, task: FmgrTask, settings: NotifySettings) -> int:
        assert task.notify_url is not None
        url = task.notify_url
        seed = self._settings.seed
        # In a notification the top-level code is the notification status: 3 = one-time, delivered.
        payload = self._fmgr.render(task, 3)
        body = base64.urlsafe_b64encode(compact_json(payload))
        headers = {"Content-Type": "text/plain; charset=UTF-8"}
        if task.notify_key is not None:
            access_key, secret_key = task.notify_key
            headers["Authorization"] = signing.fmgr_notify_authorization(access_key, secret_key, url, body)
        with self._lock:
            attempt = self._fmgr.notification(task.id).attempts + 1
        sent = 0
        if task.notify_key is not None and not task.notify_fails and hash_uniform(
                seed, "forged", task.id, attempt) < settings.forged_ratio:
            access_key, secret_key = task.notify_key
            forged = {**headers, "Authorization": signing.fmgr_notify_authorization(
                access_key, secret_key + "-forged", url, body)}
            self._post(task.id, attempt, url, body, forged, forged=True, duplicate=False)
            sent += 1
        if task.notify_fails:
            # The notifyURL cannot be reached from the vendor: the attempt never arrives.
            status = None
            with self._lock:
                self.log.append({"id": task.id, "attempt": attempt, "status_code": None, "forged": False,
                                 "duplicate": False, "ts": self._clock(), "lost": True})
        else:
            status = self._post(task.id, attempt, url, body, headers, forged=False, duplicate=False)
            sent += 1
        with self._lock:
            state = self._fmgr.notification(task.id)
            state.attempts = attempt
            now = self._clock()
            if status == 200:
                state.delivered_at = now
            elif attempt >= settings.max_attempts:
                state.failed_at = now
                logger.info("simulator: notification of %s failed after %d attempts", task.id, attempt)
            else:
                state.next_at = now + 0.5 * attempt
            if state.final:
                self._fmgr.notification_settled(task.id)
        if status == 200 and hash_uniform(seed, "duplicate", task.id, attempt) < settings.duplicate_ratio:
            # The vendor's retry logic sometimes repeats a delivered notification byte for byte.
            self._post(task.id, attempt, url, body, headers, forged=False, duplicate=True)
            sent += 1
        return sent

    def _post(self, pid: str, attempt: int, url: str, body: bytes, headers: dict[str, str], *, forged: bool,
              duplicate: bool) -> int | None:
        status: int | None
        try:
            response = requests_lib.post(url, data=body, headers=headers, timeout=self._settings.notify_timeout)
            status = response.status_code
            response.close()
        except requests_lib.RequestException as exc:
            # Recorded in the log (status_code None); the give-up is logged at info.
            logger.debug("simulator: notification of %s to %s failed: %s", pid, url, exc)
            status = None
        with self._lock:
            self.log.append({"id": pid, "attempt": attempt, "status_code": status,
                             "forged": forged, "duplicate": duplicate, "ts": self._clock(), "lost": False})
        return status
