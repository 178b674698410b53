"""The daily quota queries on the wire (``POST /ccm/prefetch/quota``, ``POST /ccm/purge/quota``; exporter/quotas.py).

Signed like the status queries (``cdn.signed_headers``). Their answers differ from the status query's: a lowercase
``code`` where **0 means success** (the status query's ``Code`` is 1 for success), and flat integer fields for
each unit's limit and remaining amount. ``parse_quota`` reads an answer as a pure function: anything but a
complete, well-typed success is a classified ``VendorError``, so that a gauge is never set from an answer that
was not verified. The HTTP side (deadline, size cap, status classification, request counters by result) is the
shared vendor layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from exporter.config import Account
from exporter.metrics.health import ApiHealth
from exporter.quotas import QuotaKind
from exporter.vendor import http as vendor_http
from exporter.vendor.cdn import classify_http, signed_headers
from exporter.vendor.http import VendorError, observed, parse_retry_after, send
from exporter.vendor.log import logged

log = logging.getLogger(__name__)

# An answer is a handful of integers: a few hundred bytes. Anything near this is not a quota answer.
MAX_RESPONSE_BYTES = 64 * 1024
# The SDK sends no parameters: an empty JSON object is what is signed and posted.
BODY = b"{}"


@dataclass(frozen=True)
class QuotaReading:
    """One verified answer: unit -> (the day's limit, what is left of it), in units (bytes for a volume)."""

    kind: str
    units: Mapping[str, tuple[int, int]]


def _field(data: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        if name in data:
            return data[name]
    return None


def _count(data: Mapping[str, Any], name: str) -> int:
    """A non-negative integer field; numbers may arrive as strings ("20000")."""
    if name not in data:
        raise VendorError("malformed", f"the answer has no {name}")
    value = data[name]
    if isinstance(value, bool):
        raise VendorError("malformed", f"{name} is not a count: {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value < 0:
        raise VendorError("malformed", f"{name} is not a count: {value!r}"[:200])
    return value


def parse_quota(data: Any, kind: QuotaKind, volume_unit: int) -> QuotaReading:
    """A decoded answer to ``kind``'s query as a reading, or a classified VendorError.

    ``code`` 0 is success (a string "0" too); any other code is the vendor refusing, classified by its message
    (credentials, limits, else ``unknown``), never read as figures. A success must carry every field of every unit
    as a non-negative integer; volumes are multiplied by ``volume_unit`` (bytes per unit of the answer)."""
    if not isinstance(data, dict):
        raise VendorError("malformed", f"the answer is a {type(data).__name__}, not an object")
    code = _field(data, "code", "Code")
    message = str(_field(data, "message", "Message") or "")
    if code is None:
        raise VendorError("malformed", "the answer has no code")
    try:
        failed = isinstance(code, bool) or int(str(code).strip()) != 0
    except ValueError:
        raise VendorError("malformed", f"code is not a number: {code!r}"[:200]) from None
    if failed:
        raise VendorError(vendor_http.classify_message(message), message or f"code {code}")
    units = {}
    for unit in kind.units:
        limit, remaining = _count(data, unit.limit_field), _count(data, unit.remaining_field)
        scale = volume_unit if unit.volume else 1
        units[unit.unit] = (limit * scale, remaining * scale)
    return QuotaReading(kind.name, units)


class QuotaClient:
    """One account's quota queries. It never retries by itself: the poller owns budgets and backoff."""

    def __init__(self, account: Account, *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time, timeout: float = 30.0, health: ApiHealth | None = None,
                 volume_unit: int = 10**9) -> None:
        self.account = account
        self.session = session or requests.Session()
        self.clock = clock  # signs requests; the request's deadline runs on the real monotonic clock
        self.timeout = timeout
        self.health = health or ApiHealth()
        self.volume_unit = volume_unit

    def query(self, kind: QuotaKind) -> QuotaReading:
        """One signed request, counted under ``kind.api``. Raises VendorError (classified) on any failure."""
        with logged(log, kind.api, account=self.account.name) as answer, observed(self.health, kind.api):
            resp = send(self.session, "POST", self.account.endpoint + kind.path, timeout=self.timeout,
                        what="quota", max_bytes=MAX_RESPONSE_BYTES, data=BODY,
                        headers=signed_headers(self.account, kind.path, BODY, self.clock()))
            if resp.status_code != 200:
                raise VendorError(classify_http(resp.status_code),
                                  f"HTTP {resp.status_code}: {resp.text[:200].strip()}", status=resp.status_code,
                                  retry_after=parse_retry_after(resp.headers.get("Retry-After")))
            try:
                data = resp.json()
            except (ValueError, RecursionError) as exc:
                raise VendorError("malformed", f"the answer is not JSON: {resp.text[:100]!r}") from exc
            reading = parse_quota(data, kind, self.volume_unit)
            answer.update({f"{unit}": f"{left}/{limit}" for unit, (limit, left) in reading.units.items()})
        return reading
