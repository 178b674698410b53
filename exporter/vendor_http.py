"""The one HTTP layer under both vendor clients (CDN task status, Fmgr status).

Everything a vendor call has in common lives here, once: the error type, the classification of HTTP statuses
and vendor messages into result kinds (the ``result`` label of ``cdnetworks_api_requests_total``), the
``Retry-After`` parser, the mapping of transport failures, and the request instrumentation
(:meth:`ApiHealth.observe_request`). The clients in ``cdn.py`` and ``fmgr.py`` are thin mappings on top: they
build the request, read the vendor's documents and decide only what differs per API.

Result kinds of a failed call (``health.RESULTS`` minus ``ok``):

==============  ==================================================================================
kind            meaning
==============  ==================================================================================
auth            HTTP 401/403 (both APIs), or a CDN ``Code: 0`` message about credentials
not_found       Fmgr only: the vendor's failure body says 404, the persistentId is unknown
bad_request     any other 4xx; CDN: also HTTP 404 (the CDN query names no id that could be unknown)
                and the seed-002 validation messages
rate_limited    HTTP 429, or a vendor message about limits
server_error    HTTP 5xx
timeout         no answer within the request timeout
connection      the endpoint cannot be reached
malformed       an answer that is not a documented one: a non-JSON or wrongly shaped body, a status
                outside 2xx/4xx/5xx, and for Fmgr an HTTP 404 without the vendor's failure body (a
                wrong endpoint, not an unknown id)
unknown         a vendor message nobody documented, or an unexpected exception in the client
==============  ==================================================================================
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3.exceptions

from .health import ApiHealth

AUTH_STATUSES = frozenset({401, 403})


class VendorError(Exception):
    """A failed vendor call, classified. ``kind`` is one of ``health.RESULTS`` (never ``"ok"``).

    ``status`` is the HTTP status, or the code of the vendor's failure body when that is the more specific
    statement (Fmgr can say 404 inside an HTTP 200); None when no answer came. ``retry_after`` is the
    vendor's ``Retry-After`` in seconds, None when it sent none (or none that parses).
    """

    def __init__(self, kind: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after

    # The two CDN validation messages (seed 002) the CDN poller reacts to by more than a backoff.
    @property
    def page_size_error(self) -> bool:
        return self.message.strip().lower() == "page size error"

    @property
    def too_old(self) -> bool:
        return "before 3 days" in self.message or "before 7 days" in self.message


# ---------------------------------------------------------------------------------------- classification
def classify_status(status: int) -> str:
    """The result kind of an HTTP status, or of a status code carried in a vendor failure body.

    The API-neutral reading; a client maps ``not_found`` on to what a 404 means for its API.
    """
    if status in AUTH_STATUSES:
        return "auth"
    if status == 404:
        return "not_found"
    if status == 429:
        return "rate_limited"
    if 400 <= status < 500:
        return "bad_request"
    if 500 <= status < 600:
        return "server_error"
    return "malformed"


_AUTH_WORDS = ("auth", "signature", "unauthori", "forbidden", "permission", "username", "apikey", "api key",
               "access key")
_RATE_WORDS = ("rate limit", "too many", "frequen", "limit exceeded", "throttl")


def classify_message(message: str, known: Mapping[str, str] | None = None) -> str:
    """The result kind of a vendor's failure message (a CDN ``Code: 0`` answer arrives at HTTP 200).

    ``known`` maps the documented messages (compared case-insensitively, trimmed) to their kinds; any other
    message is read by its words (credentials, then limits), and is ``unknown`` when they say nothing.
    """
    low = message.strip().lower()
    for text, kind in (known or {}).items():
        if low == text.strip().lower():
            return kind
    if any(w in low for w in _AUTH_WORDS):
        return "auth"
    if any(w in low for w in _RATE_WORDS):
        return "rate_limited"
    return "unknown"


_DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from ``now`` (default: the wall clock).

    Both forms of RFC 9110: delay-seconds (a fraction is tolerated) and an HTTP-date (a date in the past is
    0). None when the header is absent, negative, not finite or neither form.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELAY_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # an obsolete date form without a zone: HTTP dates are GMT
        when = when.replace(tzinfo=timezone.utc)
    try:
        at = when.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    return max(0.0, at - (time.time() if now is None else now))


def http_date_in(seconds: float, now: float | None = None) -> str:
    """The HTTP-date ``seconds`` from ``now`` (what a vendor would send as ``Retry-After``)."""
    at = datetime.fromtimestamp((time.time() if now is None else now) + seconds, timezone.utc)
    return at.strftime("%a, %d %b %Y %H:%M:%S GMT")


# ---------------------------------------------------------------------------------------- transport
def _is_read_timeout(exc: requests.ConnectionError) -> bool:
    # requests reports a read timeout while fetching the body as a ConnectionError wrapping urllib3's.
    return bool(exc.args) and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError)


def send(session: requests.Session, method: str, url: str, *, timeout: float, what: str,
         **kwargs: Any) -> requests.Response:
    """One HTTP request; a transport failure becomes a ``timeout`` or ``connection`` VendorError.

    ``what`` names the API in messages. Any HTTP answer is returned as is: reading it is the client's job.
    """
    try:
        return session.request(method, url, timeout=timeout, **kwargs)
    except requests.Timeout as exc:
        raise VendorError("timeout", f"{what}: no answer within {timeout:g}s") from exc
    except requests.ConnectionError as exc:
        if _is_read_timeout(exc):
            raise VendorError("timeout", f"{what}: no answer within {timeout:g}s") from exc
        raise VendorError("connection", f"cannot reach the {what} endpoint: {type(exc).__name__}: {exc}") from exc
    except requests.RequestException as exc:
        raise VendorError("connection", f"{what}: request failed: {type(exc).__name__}: {exc}") from exc


def http_error(response: requests.Response, kind: str, message: str) -> VendorError:
    """A VendorError for an HTTP failure answer, with its status and ``Retry-After``."""
    return VendorError(kind, message, status=response.status_code,
                       retry_after=parse_retry_after(response.headers.get("Retry-After")))


# ---------------------------------------------------------------------------------------- instrumentation
@contextmanager
def observed(health: ApiHealth | None, api: str, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
    """Count one vendor call and its duration under ``api``: ``ok`` when the block returns, the error's kind
    when it raises a VendorError, ``unknown`` for any other exception (never counted as ok)."""
    started = clock()
    result = "unknown"
    try:
        yield
        result = "ok"
    except VendorError as exc:
        result = exc.kind
        raise
    finally:
        if health is not None:
            health.observe_request(api, result, clock() - started)
