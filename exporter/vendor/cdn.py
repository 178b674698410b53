"""CDN task-status client (``POST`` to each task kind's ``ItemIdQuery`` path in ``kinds.KINDS``, seed 002).

Pure helpers (time formatting, chunking, response parsing) are separate from the client so they are
tested without a network. The HTTP side (errors, classification, Retry-After, request metrics) is the
shared vendor layer (``vendor_http``); this module maps the CDN API on to it. The client never retries by
itself: the poller owns scheduling, budgets and backoff.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any
from urllib.parse import urlsplit

import requests

from exporter.config import Account
from exporter.kinds import BY_NAME
from exporter.metrics.health import ApiHealth
from exporter.storage.model import CdnTask
from exporter.vendor import http as vendor_http
from exporter.vendor import signing
from exporter.vendor.http import VendorError, classify_status, observed, parse_retry_after, send
from exporter.vendor.log import logged

log = logging.getLogger(__name__)

MAX_SPAN = 86400.0  # one query spans at most one day
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
STATUSES = frozenset({"success", "failure", "wait", "run"})

# Seed 002's Code-0 messages (all arrive at HTTP 200) and what they mean for us.
BAD_REQUEST_MESSAGES = {
    "parse json error",
    "startTime or endTime must not be empty",
    "query create time should not before 3 days",
    "query time error",
    "endTime should not before startTime",
    "page size error",
    "page no error",
    "task status error,eg: init wait run success failure",
}
AUTH_MESSAGES = {"username is invalid"}


# What each documented message means (compared case-insensitively); others are read by their words.
MESSAGE_KINDS: Mapping[str, str] = {**dict.fromkeys(BAD_REQUEST_MESSAGES, "bad_request"),
                                    **dict.fromkeys(AUTH_MESSAGES, "auth")}

# The CDN client's failures are the shared vendor error (kind, message, status, retry_after).
ApiError = VendorError


@dataclass(frozen=True)
class QueryPage:
    count: int
    # The answer's pageNo: the seed's example echoes the page asked for, the vendor's SDK documents the total
    # number of pages. Kept for diagnostics only: paging follows the request's own page number and ``count``.
    page_no: int
    page_size: int
    tasks: list[CdnTask]
    rows: int = -1  # rows the vendor sent (tasks plus any unusable row that was skipped)

    def __post_init__(self) -> None:
        if self.rows < 0:
            object.__setattr__(self, "rows", len(self.tasks))


# ---------------------------------------------------------------------- pure helpers
def format_api_time(ts: float, tz: tzinfo) -> str:
    """Unix seconds -> ``YYYY-MM-DD HH:MM:SS`` in the zone the API speaks."""
    return datetime.fromtimestamp(int(ts), tz).strftime(TIME_FORMAT)


def parse_api_time(text: Any, tz: tzinfo) -> float | None:
    """``YYYY-MM-DD HH:MM:SS`` in the API zone -> unix seconds; ``""``/None -> None; junk -> ValueError."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if not isinstance(text, str):
        raise ValueError(f"time is not a string: {text!r}")
    return datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=tz).timestamp()


def chunk_range(start: float, end: float, max_span: float = MAX_SPAN) -> list[tuple[float, float]]:
    """Split [start, end] into consecutive whole-second pieces of at most ``max_span`` seconds."""
    start, end = float(int(start)), float(int(end))
    out = []
    while start <= end:
        stop = min(end, start + max_span)
        out.append((start, stop))
        if stop >= end:
            break
        start = stop
    return out


def clamp_start(start: float, now: float, max_age: float, margin: float = 120.0) -> float:
    """Never ask for what the API refuses: start no earlier than ``now - max_age`` (plus a clock-skew margin)."""
    return max(start, now - max_age + margin)


def classify_message(message: str) -> str:
    """Map a ``Code: 0`` message to a result kind."""
    return vendor_http.classify_message(message, MESSAGE_KINDS)


def _field(data: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in data:
            return data[n]
    return None


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ApiError("malformed", f"{what} is not a number: {value!r}")
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise ApiError("malformed", f"{what} is not a number: {value!r}") from None


def _as_rate(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        rate = float(str(value).strip().rstrip("%"))
    except ValueError:
        raise ApiError("malformed", f"rate is not a number: {value!r}") from None
    return min(100.0, max(0.0, rate))


def parse_response(data: Any, tz: tzinfo) -> QueryPage:
    """Turn a decoded response body into a page, or raise a classified ApiError."""
    if not isinstance(data, dict):
        raise ApiError("malformed", f"response is a {type(data).__name__}, not an object")
    code = _field(data, "Code", "code")
    message = str(_field(data, "Message", "message") or "")
    if code is None:
        raise ApiError("malformed", "response has no Code")
    if _as_int(code, "Code") != 1:
        raise ApiError(classify_message(message), message or f"Code {code}")
    count = _as_int(_field(data, "count", "Count") or 0, "count")
    page_no = _as_int(_field(data, "pageNo", "PageNo") or 1, "pageNo")
    page_size = _as_int(_field(data, "pageSize", "PageSize") or 0, "pageSize")
    details = _field(data, "resultDetail", "ResultDetail")
    if details is None:
        details = []
    if not isinstance(details, list):
        raise ApiError("malformed", "resultDetail is not a list")
    tasks = []
    for i, row in enumerate(details):
        try:
            tasks.append(_parse_row(row, tz))
        except ApiError as exc:
            if len(details) == 1:
                raise
            # One unusable row must not stall every later cycle on the same page: skip it, say so.
            log.warning("skipping resultDetail[%d]: %s", i, exc.message)
    if details and not tasks:
        raise ApiError("malformed", "no usable row in resultDetail")
    return QueryPage(count=count, page_no=page_no, page_size=page_size, tasks=tasks, rows=len(details))


def _parse_row(row: Any, tz: tzinfo) -> CdnTask:
    if not isinstance(row, dict):
        raise ApiError("malformed", "row is not an object")
    url = row.get("url")
    if not isinstance(url, str) or not url:
        raise ApiError("malformed", "url is missing")
    try:
        create_ts = parse_api_time(row.get("createTime"), tz)
        begin_ts = parse_api_time(row.get("beginTime"), tz)
        finish_ts = parse_api_time(row.get("finishTime"), tz)
    except ValueError as exc:
        raise ApiError("malformed", f"bad time: {exc}") from None
    if create_ts is None:
        raise ApiError("malformed", "createTime is missing")
    status = str(row.get("status") or "").strip().lower()
    return CdnTask(url=url, create_ts=create_ts, status=status if status in STATUSES else "unknown",
                   begin_ts=begin_ts, finish_ts=finish_ts, rate=_as_rate(row.get("rate")))


retry_after_seconds = parse_retry_after


def classify_http(status: int) -> str:
    """The result kind of a non-200 HTTP answer of the CDN API.

    As the shared classifier, except that 404 is ``bad_request``: a CDN query names no id that could be
    unknown, so a 404 is the vendor refusing the request (a wrong endpoint path), never "nothing to report".
    """
    kind = classify_status(status)
    return "bad_request" if kind == "not_found" else kind


def signed_headers(acct: Account, path: str, body: bytes, now: float) -> dict[str, str]:
    """The headers of a signed JSON POST of ``body`` to ``path`` at ``now``, in the account's scheme: every CDN API
    (the status queries, the quota queries) is signed the same way."""
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if acct.auth == "aksk":
        ts = str(int(now))
        host = urlsplit(acct.endpoint).netloc
        sig = signing.aksk_signature(acct.secret_key, method="POST", path=path, query="", host=host,
                                     content_type=headers["Content-Type"], body=body, timestamp=ts)
        headers.update({
            "x-cnc-accessKey": acct.access_key, "x-cnc-timestamp": ts, "x-cnc-auth-method": "AKSK",
            "Authorization": signing.aksk_authorization(acct.access_key, sig), "Host": host,
        })
    else:
        date = signing.http_date(now)
        headers["Date"] = date
        headers["Authorization"] = signing.basic_authorization(acct.username, acct.api_key, date)
    return headers


# ---------------------------------------------------------------------- client
class CdnClient:
    def __init__(self, account: Account, *, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.time, timeout: float = 30.0,
                 health: ApiHealth | None = None,
                 max_response_bytes: int = vendor_http.DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.account = account
        self.session = session or requests.Session()
        self.clock = clock  # signs requests; the request's deadline runs on the real monotonic clock
        self.timeout = timeout
        self.health = health or ApiHealth()
        self.max_response_bytes = max_response_bytes

    def _headers(self, path: str, body: bytes) -> dict[str, str]:
        return signed_headers(self.account, path, body, self.clock())

    def query(self, kind: str, start: float, end: float, *, page_no: int = 1, page_size: int = 100,
              status: str | None = None, url: str | None = None) -> QueryPage:
        """One signed request. Raises ApiError (classified, counted) on any failure."""
        path = BY_NAME[kind].path
        payload: dict[str, Any] = {
            "startTime": format_api_time(start, self.account.tz),
            "endTime": format_api_time(end, self.account.tz),
            "pageNo": page_no,
            "pageSize": page_size,
        }
        if status:
            payload["status"] = status
        if url:
            payload["url"] = url  # one URL per query (seed 002): a re-check of one task costs one row
        body = json.dumps(payload, separators=(",", ":")).encode()
        with (
            logged(log, kind, account=self.account.name, range=f"{payload['startTime']}..{payload['endTime']}",
                   page=page_no, page_size=page_size, **({"url": url} if url else {})) as answer,
            observed(self.health, kind),
        ):
            resp = send(self.session, "POST", self.account.endpoint + path, timeout=self.timeout, what="CDN",
                        max_bytes=self.max_response_bytes, data=body, headers=self._headers(path, body))
            if resp.status_code != 200:
                detail = resp.text[:200].strip()
                raise ApiError(classify_http(resp.status_code), f"HTTP {resp.status_code}: {detail}",
                               retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                               status=resp.status_code)
            try:
                data = resp.json()
            except (ValueError, RecursionError) as exc:
                raise ApiError("malformed", f"response is not JSON: {resp.text[:100]!r}") from exc
            page = parse_response(data, self.account.tz)
            answer.update(count=page.count, rows=page.rows)
            if page.rows == 0 and page.count > (page_no - 1) * page_size:
                # Success with the rows missing is never "no tasks": paging on would skip them for good.
                raise ApiError("malformed", f"page {page_no} is empty but count says {page.count} tasks")
        return page
