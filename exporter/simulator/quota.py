"""The daily quotas: ``POST /ccm/prefetch/quota`` and ``POST /ccm/purge/quota``, signed like the status query.

A quota is a daily limit per account; what is left of it drops as tasks are submitted (created, in the CDN model)
and starts over at midnight UTC+8, where the vendor's days begin. The answers carry a lowercase ``code`` where 0
means success (the opposite of the status query's ``Code``), and the fields of the vendor's SDK models
(GetPrefetchQuotaResponse, GetPurgeQuotaResponse). Written from those models, not from the exporter's table
(exporter/quotas.py), so that the tests check the exporter against an independent account of the API.

The published limits are the defaults: 20,000 prefetched URLs and 200 GB a day, 5,000 purged URLs and 500
directories a day (regexes and tags: 500, the SDK's figure for regexes). The SDK does not say in which unit the
volume figures come: here in ``quota_volume_unit`` bytes (10**9 by default), rounded down.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from exporter.simulator.cdn import CdnModel
from exporter.simulator.settings import Settings
from exporter.simulator.wire import JSON_CONTENT_TYPE, Response, json_response

QUOTA_APIS = {"prefetch_quota": "prefetch", "purge_quota": "purge"}
DAY_OFFSET = 8 * 3600  # the vendor's days start at midnight UTC+8
DAY = 86400
DEFAULT_LIMITS: dict[str, dict[str, int]] = {
    "prefetch": {"urls": 20_000, "bytes": 200 * 10**9},
    "purge": {"urls": 5_000, "directories": 500, "regexes": 500, "tags": 500},
}
# unit -> (the day's limit, what is left of it), as the SDK models name them.
FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "prefetch": {"urls": ("prefetchQuota", "remainingPrefetchQuota"),
                 "bytes": ("prefetchVolumeQuota", "remainingPrefetchVolumeQuota")},
    "purge": {"urls": ("urlQuota", "remainingUrlQuota"), "directories": ("dirQuota", "remainingDirQuota"),
              "regexes": ("regexQuota", "remainingRegexQuota"), "tags": ("tagQuota", "remainingTagQuota")},
}


def day_start(ts: float) -> float:
    """The midnight (UTC+8) that began the vendor's day holding ``ts``."""
    return ts - (ts + DAY_OFFSET) % DAY


class QuotaModel:
    """Every account's daily limits, and what the tasks it submitted today left of them."""

    def __init__(self, settings: Settings, cdn: CdnModel, clock: Callable[[], float], lock: threading.RLock) -> None:
        self._settings = settings
        self._cdn = cdn
        self._clock = clock
        self._lock = lock
        self._limits: dict[tuple[str, str], dict[str, int]] = {}

    def set_limit(self, username: str, kind: str, unit: str, limit: int) -> None:
        """Change one daily limit of an account (``unit`` in bytes for the prefetch volume)."""
        if unit not in DEFAULT_LIMITS.get(kind, {}):
            raise ValueError(f"no {unit!r} quota for {kind!r}")
        if limit < 0:
            raise ValueError("a limit is not negative")
        with self._lock:
            self._limits.setdefault((username, kind), dict(DEFAULT_LIMITS[kind]))[unit] = limit

    def truth(self, username: str, kind: str, at: float | None = None) -> dict[str, tuple[int, int]]:
        """unit -> (limit, remaining) of the day holding ``at`` (default: now), in units (bytes for the volume)."""
        now = self._clock() if at is None else at
        with self._lock:
            limits = dict(self._limits.get((username, kind), DEFAULT_LIMITS[kind]))
        used = self._cdn.usage(username, kind, day_start(now), now)
        return {unit: (limit, max(0, limit - used.get(unit, 0))) for unit, limit in limits.items()}

    def answer(self, username: str, kind: str, at: float | None = None) -> dict[str, int]:
        """field -> value, as the answer states them: the volume in ``quota_volume_unit``, rounded down."""
        out = {}
        for unit, (limit, remaining) in self.truth(username, kind, at).items():
            scale = self._settings.quota_volume_unit if unit == "bytes" else 1
            limit_field, remaining_field = FIELDS[kind][unit]
            out[limit_field], out[remaining_field] = limit // scale, remaining // scale
        return out

    def respond(self, api: str, user: str, now: float) -> Response:
        """The answer to an authenticated quota query (the request body is not read: the SDK sends none)."""
        fields: dict[str, int | str] = dict(self.answer(user, QUOTA_APIS[api], now))
        if self._settings.string_numbers:
            fields = {k: str(v) for k, v in fields.items()}
        return json_response(200, {"code": 0, "message": "success", **fields}, "ok", JSON_CONTENT_TYPE)
