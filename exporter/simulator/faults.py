"""Injected faults: queued per API, served before anything else about a request is checked."""

from __future__ import annotations

import collections
import http
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

from exporter.simulator.wire import (
    APIS,
    CDN_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    MSG_AUTH_FAILED,
    Response,
    cdn_error,
    compact_json,
    json_response,
    rate_limited,
)

# The normal answer, paced: "trickle" sends the status line and headers, then the body a byte a second;
# "stall" sends the status line and headers, then nothing; "trickle_headers" sends the status line and the
# headers a byte a second (then the body the same way). Each goes on until the client hangs up or the
# simulator stops (a trickle also ends with its last byte: a long, bounded time).
PACED = ("trickle", "stall", "trickle_headers")
# A valid-looking 200 answer of ``huge_fault_bytes`` (a CDN page or an Fmgr status with that many bytes of
# rows or items), made while it is written: "huge" declares its Content-Length, "huge_chunked" is chunked.
HUGE = ("huge", "huge_chunked")
# "http404" is a bare 404 (plain text, no failure body): what a wrong endpoint or path answers, not the API.
FAULTS = ("http500", "http503", "http429", "http404", "timeout", "malformed", "wrong_types", "empty_page", *PACED,
          *HUGE)
CODE0_FAULT_PREFIX = "code0:"
# "failure:<code>[@<http status>]": the API's own failure body saying ``code``, at HTTP ``code`` or at the
# status given (seed 000's Fmgr body {"code": "<httpCode>", "message": ...}, which can also arrive at 200;
# for the CDN APIs, seed 002's {"Code": 0, "Message": ...}). 401 and 403 carry the auth failure message.
FAILURE_FAULT = re.compile(r"failure:([1-5][0-9][0-9])(?:@([1-5][0-9][0-9]))?")
MALFORMED_CDN_BODY = b'{"count": 1, "Code": 1,'
MALFORMED_FMGR_BODY = b'{"id": "x", "code": 3,'
MALFORMED_QUOTA_BODY = b'{"code": 0, "prefetchQuota": 20000,'


class Faults:
    """The faults waiting for the next requests to each API, in order."""

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._queued: dict[str, collections.deque[str]] = {api: collections.deque() for api in APIS}

    def inject(self, api: str, fault: str, count: int) -> None:
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, not {api!r}")
        if fault not in FAULTS and not fault.startswith(CODE0_FAULT_PREFIX) and not FAILURE_FAULT.fullmatch(fault):
            raise ValueError(f"fault must be one of {FAULTS}, 'code0:<message>' or 'failure:<code>[@<status>]',"
                             f" not {fault!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._queued[api].extend([fault] * count)

    def take(self, api: str) -> str | None:
        """The fault for this request to ``api``, if one is queued."""
        with self._lock:
            queued = self._queued[api]
            return queued.popleft() if queued else None


def fault_response(api: str, fault: str, *, query: str = "", huge_bytes: int = 400 * 2**20) -> Response:
    """What ``fault`` answers on ``api`` (all but "timeout" and the PACED ones, which delay or pace the normal
    answer). ``query`` is the request's query string (an Fmgr answer names the id asked for)."""
    result = f"fault:{fault}"
    if api.endswith("_quota") and fault not in HUGE and fault not in ("http500", "http503", "http429", "http404"):
        return quota_fault_response(fault, result)
    cdn = api != "fmgr"
    if fault in HUGE:
        return huge_response(api, fault == "huge_chunked", huge_bytes, query, result)
    if fault == "http500":
        return Response(500, b"Internal Server Error", {"Content-Type": "text/plain"}, result)
    if fault == "http503":
        return Response(503, b"Service Unavailable", {"Content-Type": "text/plain", "Retry-After": "2"}, result)
    if fault == "http429":
        return rate_limited(api, result, "1")
    if fault == "http404":
        return Response(404, b"404 page not found\n", {"Content-Type": "text/plain; charset=utf-8"}, result)
    if fault == "malformed":
        body = MALFORMED_CDN_BODY if cdn else MALFORMED_FMGR_BODY
        return Response(200, body, {"Content-Type": CDN_CONTENT_TYPE if cdn else JSON_CONTENT_TYPE}, result)
    if fault == "wrong_types":
        if cdn:
            payload: dict[str, Any] = {"count": 1, "Code": 1, "message": "success", "pageNo": 1,
                                       "pageSize": 20, "resultDetail": "unavailable"}
            return json_response(200, payload, result, CDN_CONTENT_TYPE)
        payload = {"id": "x", "code": 3, "desc": "fileOperateSucceed", "separate": 0, "items": "unavailable"}
        return json_response(200, payload, result)
    if fault == "empty_page" and cdn:
        # A glitch seen from paged APIs: success, a large count, and no rows.
        payload = {"count": 10**6, "Code": 1, "message": "success", "pageNo": 1, "pageSize": 20,
                   "resultDetail": []}
        return json_response(200, payload, result, CDN_CONTENT_TYPE)
    failure = FAILURE_FAULT.fullmatch(fault)
    if failure is not None:
        code = int(failure.group(1))
        status = int(failure.group(2) or code)
        text = MSG_AUTH_FAILED if code in (401, 403) else _phrase(code)
        if cdn:
            return cdn_error(text, result, status)
        return json_response(status, {"code": str(code), "message": text}, result)
    message = fault[len(CODE0_FAULT_PREFIX):]
    if cdn:
        return cdn_error(message, result)
    return json_response(200, {"code": 0, "message": message}, result)


def quota_fault_response(fault: str, result: str) -> Response:
    """A quota query's faults in its own shape (a lowercase ``code``, 0 for success): "malformed" is cut-off JSON,
    "wrong_types" a success whose figures are lists, "empty_page" a success without any figure,
    "code0:<message>" a refusal at HTTP 200 (``code`` 1, as the SDK documents failure), "failure:<code>[@<status>]"
    that code in the body at that status."""
    if fault == "malformed":
        return Response(200, MALFORMED_QUOTA_BODY, {"Content-Type": JSON_CONTENT_TYPE}, result)
    if fault == "wrong_types":
        return json_response(200, {"code": 0, "message": "success", "prefetchQuota": [20000],
                                   "remainingPrefetchQuota": [1], "urlQuota": [5000], "remainingUrlQuota": [1]}, result)
    if fault == "empty_page":
        return json_response(200, {"code": 0, "message": "success"}, result)
    failure = FAILURE_FAULT.fullmatch(fault)
    if failure is not None:
        code = int(failure.group(1))
        text = MSG_AUTH_FAILED if code in (401, 403) else _phrase(code)
        return json_response(int(failure.group(2) or code), {"code": code, "message": text}, result)
    return json_response(200, {"code": 1, "message": fault[len(CODE0_FAULT_PREFIX):]}, result)


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return f"error {code}"


# One row or item of a huge answer, and the JSON around them.
_HUGE_CDN_ROW = (b'{"url":"https://dl.example.com/huge/0123456789abcdef.jpg","status":"success","rate":"100",'
                 b'"createTime":"2026-11-22 16:00:00","beginTime":"2026-11-22 16:00:05",'
                 b'"finishTime":"2026-11-22 16:01:00"}')
_HUGE_FMGR_ITEM = (b'{"cmd":"fetch/aHR0cDovL29yaWdpbi5leGFtcGxlLmNvbS9odWdl/bucket/c2ltLWJ1Y2tldA==","code":3,'
                   b'"desc":"fileOperateSucceed","error":null,"hash":"","fsize":1048576,"key":"huge/0.mp4",'
                   b'"url":"http://sim-bucket.example.com/huge/0.mp4"}')
_HUGE_PIECE = 64 * 1024  # about this much is written at a time


def huge_response(api: str, chunked: bool, size: int, query: str, result: str) -> Response:
    """A 200 answer of at least ``size`` bytes in the API's own shape, generated piece by piece."""
    if api == "fmgr":
        pid = (parse_qs(query).get("persistentId") or ["huge"])[0]
        head = b'{"id":' + compact_json(pid) + b',"code":3,"desc":"fileOperateSucceed","separate":0,"items":['
        row, content_type = _HUGE_FMGR_ITEM, JSON_CONTENT_TYPE
    else:
        head = b'{"Code":1,"Message":"success","count":1000,"pageNo":1,"pageSize":1000,"resultDetail":['
        row, content_type = _HUGE_CDN_ROW, CDN_CONTENT_TYPE
    tail = b"]}"
    block = b",".join([row] * max(1, _HUGE_PIECE // (len(row) + 1)))
    blocks = max(1, -(-(size - len(head) - len(tail)) // (len(block) + 1)))
    length = len(head) + blocks * len(block) + (blocks - 1) + len(tail)

    def pieces() -> Iterator[bytes]:
        yield head + block
        for _ in range(blocks - 1):
            yield b"," + block
        yield tail

    def framed() -> Iterator[bytes]:
        for piece in pieces():
            yield b"%x\r\n%s\r\n" % (len(piece), piece)
        yield b"0\r\n\r\n"

    headers = {"Content-Type": content_type}
    headers.update({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(length)})
    return Response(200, b"", headers, result, stream=framed if chunked else pieces)
