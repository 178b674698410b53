"""Per-API accounting: the published rate limits (sliding windows) and the log of every request."""

from __future__ import annotations

import collections
import json
import math
import threading
from typing import Any
from urllib.parse import parse_qs

from exporter.simulator.settings import Settings
from exporter.simulator.wire import Response, rate_limited


class RateLimiter:
    """``settings.rate_limits[api] = (requests, per seconds)``, enforced per (api, user)."""

    def __init__(self, settings: Settings, lock: threading.RLock) -> None:
        self._settings = settings
        self._lock = lock
        self._windows: dict[tuple[str, str | None], collections.deque[float]] = (
            collections.defaultdict(collections.deque))
        self.violations = 0

    def check(self, api: str, user: str | None, now: float) -> Response | None:
        """Sliding window per (api, user); refused requests do not take a slot."""
        limit = self._settings.rate_limits.get(api)
        if not limit:
            return None
        allowed, per = limit
        with self._lock:
            window = self._windows[(api, user)]
            while window and window[0] <= now - per:
                window.popleft()
            if len(window) >= allowed:
                self.violations += 1
                retry_after = max(1, math.ceil(window[0] + per - now)) if window else max(1, math.ceil(per))
                return rate_limited(api, "rate_limited", str(retry_after))
            window.append(now)
        return None


class RequestLog:
    """What arrived: a count per (api, claimed user) and one entry per request, in arrival order."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._seq = 0
        self.requests: collections.Counter[tuple[str, str | None]] = collections.Counter()
        self.entries: list[dict[str, Any]] = []

    def arrive(self, api: str, user: str | None) -> int:
        """Counts a request and returns its number (the request id the CDN answers carry)."""
        with self._lock:
            self.requests[(api, user)] += 1
            self._seq += 1
            return self._seq

    def record(self, arrived: float, api: str, user: str | None, query: str, body: bytes, result: str,
               fault: str | None) -> dict[str, Any]:
        """The entry of one request; the server adds ``ended`` (on the same clock as ``ts``) once its answer is
        out or the client has left."""
        entry = {"ts": arrived, "api": api, "user": user, "body": _loggable_body(api, query, body),
                 "result": result, "fault": fault}
        with self._lock:
            self.entries.append(entry)
        return entry

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.entries.clear()


def _loggable_body(api: str, query: str, body: bytes) -> Any:
    if api == "fmgr":
        return {k: v[0] if len(v) == 1 else v for k, v in parse_qs(query, keep_blank_values=True).items()}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", errors="replace")
