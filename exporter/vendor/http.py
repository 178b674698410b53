"""The one HTTP layer under both vendor clients (CDN task status, Fmgr status).

Everything a vendor call has in common lives here, once: the error type, the classification of HTTP statuses
and vendor messages into result kinds (the ``result`` label of ``cdnetworks_api_requests_total``), the
``Retry-After`` parser, the mapping of transport failures, and the request instrumentation
(:meth:`ApiHealth.observe_request`). The clients in ``vendor/cdn.py`` and ``fmgr/wire.py`` are thin mappings on
top: they build the request, read the vendor's documents and decide only what differs per API.

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
timeout         no complete answer (connected, headers and the whole body) within the request timeout
too_large       an answer larger than the configured cap (``max_response_bytes``), declared or read
connection      the endpoint cannot be reached
malformed       an answer that is not a documented one: a non-JSON or wrongly shaped body, a status
                outside 2xx/4xx/5xx, and for Fmgr an HTTP 404 without the vendor's failure body (a
                wrong endpoint, not an unknown id)
unknown         a vendor message nobody documented, or an unexpected exception in the client
==============  ==================================================================================
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions

from exporter.metrics.health import ApiHealth

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
# What a vendor answer may take, whatever the API: ``request_timeout`` for the whole exchange (connect,
# status line and headers, body) and a cap on the body's size. requests' own ``timeout`` bounds each socket
# operation only: a vendor that sends a byte a second never trips it. So every request gets a Deadline on the
# real monotonic clock (never a poller's clock, which tests drive by hand), and a watchdog thread shuts the
# request's socket down when it passes: whatever read is blocked then returns at once.

# The body is read in pieces of this size; at most ``max_bytes`` plus one piece is ever held.
READ_CHUNK = 64 * 1024
# Default cap on one answer. A simulator answer at max_page_size (1000 rows) is 171 KB, about 170 bytes a row
# with 56-character URLs (measured: 171,272 bytes prefetch, 168,819 purge); real URLs run to a few KB, so a
# 1000-row page of 2 KB URLs is about 2.1 MB. 8 MiB is four times that page (48 times the measured one), and
# a status answer of Fmgr (752 bytes for three items) fits thousands of items.
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024

_local = threading.local()  # the Deadline of the request this thread is sending, if any
_OWNERS = threading.Lock()  # who may cut which connection: attach, fire and close agree under it


def _cut(sock: object) -> None:
    """Shut a socket down both ways: a recv blocked on it (headers, body) returns at once."""
    # TLS through a TLS proxy wraps the socket in an SSLTransport, which keeps the real one as ``.socket``.
    raw = sock if isinstance(sock, socket.socket) else getattr(sock, "socket", None)
    if isinstance(raw, socket.socket):
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(raw, socket.SHUT_RDWR)  # the fd itself, not SSLSocket's unwrap


class Deadline:
    """The end of one request, on the real monotonic clock, and the connections it may cut then.

    A connection belongs to the request that used it last: a deadline that passes after its request has
    ended (and its connection went back to the pool, maybe to another request) cuts nothing.
    """

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.fired = False
        self.closed = False
        self._conns: list[_Watched] = []

    def attach(self, conn: _Watched) -> None:
        with _OWNERS:
            if self.closed:
                return
            conn.deadline = self
            self._conns.append(conn)
            if self.fired:  # connected only after the deadline passed
                _cut(conn.sock)

    def fire(self) -> None:
        with _OWNERS:
            if self.closed:
                return
            self.fired = True
            for conn in self._conns:
                if conn.deadline is self:
                    _cut(conn.sock)

    def close(self) -> None:
        with _OWNERS:
            self.closed = True
            for conn in self._conns:
                if conn.deadline is self:
                    conn.deadline = None
            self._conns.clear()


class _Watchdog:
    """One thread for every deadline of the process; it ends after a minute without any."""

    IDLE = 60.0

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vendor-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _next_due(self) -> Deadline | None:
        """The next deadline that passes while its request is open; None once idle for IDLE seconds."""
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].closed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    if not self._cond.wait(self.IDLE) and not self._heap:
                        self._thread = None
                        return None
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._heap)[2]
                self._cond.wait(wait)

    def _run(self) -> None:
        while (due := self._next_due()) is not None:
            due.fire()


_WATCHDOG = _Watchdog()


class _Watched(urllib3.connection.HTTPConnection):
    """A connection that puts itself under the deadline of the request being sent on this thread."""

    deadline: Deadline | None = None

    def _watch(self) -> None:
        current: Deadline | None = getattr(_local, "deadline", None)
        if current is not None and self.sock is not None:
            current.attach(self)

    def connect(self) -> None:
        super().connect()
        self._watch()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._watch()  # a kept-alive connection is connected already
        super().request(*args, **kwargs)


class _WatchedHTTPS(_Watched, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Watched


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPS


def _watch_pools(manager: urllib3.PoolManager) -> None:
    # A SOCKS proxy manager brings pools of its own; those keep the per-read timeout only.
    if manager.pool_classes_by_scheme.get("http") is urllib3.HTTPConnectionPool:
        manager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class BoundedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with connections that a request's Deadline can cut (proxies included)."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _watch_pools(manager)
        return manager


def _bound(session: requests.Session, url: str) -> None:
    """Make ``session`` send to ``url``'s origin through a BoundedAdapter (once; the caller's session keeps its
    proxies, TLS settings and, copied over, the pool sizes and retries of the adapter it had)."""
    adapter = session.get_adapter(url)
    if isinstance(adapter, BoundedAdapter):
        return
    parts = urlsplit(url)
    settings: dict[str, Any] = {}
    if isinstance(adapter, requests.adapters.HTTPAdapter):
        settings = {key: getattr(adapter, f"_{key}") for key in ("pool_connections", "pool_maxsize", "pool_block")
                    if hasattr(adapter, f"_{key}")}
        settings["max_retries"] = adapter.max_retries
    session.mount(f"{parts.scheme}://{parts.netloc}/", BoundedAdapter(**settings))


def _is_read_timeout(exc: requests.ConnectionError) -> bool:
    # requests reports a read timeout while fetching the body as a ConnectionError wrapping urllib3's.
    return bool(exc.args) and isinstance(exc.args[0], urllib3.exceptions.ReadTimeoutError)


def _read_body(response: requests.Response, max_bytes: int | None, what: str) -> None:
    """Read the body into ``response.content``, refusing it past ``max_bytes`` (a declared Content-Length
    first, unread, then the bytes as they come: never more than the cap and one piece in memory)."""
    declared = (response.headers.get("Content-Length") or "").strip()
    if max_bytes is not None and declared.isdigit() and int(declared) > max_bytes:
        raise VendorError("too_large", f"{what}: the answer declares {int(declared)} bytes, more than the "
                          f"{max_bytes} allowed", status=response.status_code)
    body = bytearray()
    for piece in response.iter_content(READ_CHUNK):
        body += piece
        if max_bytes is not None and len(body) > max_bytes:
            raise VendorError("too_large", f"{what}: the answer is larger than the {max_bytes} bytes allowed",
                              status=response.status_code)
    response._content = bytes(body)


def send(session: requests.Session, method: str, url: str, *, timeout: float, what: str,
         max_bytes: int | None = DEFAULT_MAX_RESPONSE_BYTES, **kwargs: Any) -> requests.Response:
    """One HTTP request, bounded: the whole answer within ``timeout`` seconds and ``max_bytes`` bytes.

    A transport failure becomes a ``timeout`` or ``connection`` VendorError, a body over the cap
    ``too_large``. ``what`` names the API in messages. Any HTTP answer is returned as is, its body read:
    reading it is the client's job.
    """
    _bound(session, url)
    deadline = Deadline(timeout)
    outer: Deadline | None = getattr(_local, "deadline", None)
    _local.deadline = deadline
    _WATCHDOG.add(deadline)
    too_slow = f"{what}: no complete answer within {timeout:g}s"
    try:
        response = session.request(method, url, timeout=timeout, stream=True, **kwargs)
        try:
            _read_body(response, max_bytes, what)
        finally:
            response.close()  # a body left unread (too large, too slow) closes its connection
        if deadline.fired:  # a cut socket reads as the end of a body sent without a length
            raise VendorError("timeout", too_slow)
        return response
    except requests.Timeout as exc:
        raise VendorError("timeout", too_slow) from exc
    except requests.RequestException as exc:
        if deadline.fired or (isinstance(exc, requests.ConnectionError) and _is_read_timeout(exc)):
            raise VendorError("timeout", too_slow) from exc
        if isinstance(exc, requests.ConnectionError):
            raise VendorError("connection", f"cannot reach the {what} endpoint: {type(exc).__name__}: {exc}") \
                from exc
        raise VendorError("connection", f"{what}: request failed: {type(exc).__name__}: {exc}") from exc
    finally:
        deadline.close()
        _local.deadline = outer


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
