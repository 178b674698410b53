"""Injected faults: queued per API, served before anything else about a request is checked."""

from __future__ import annotations

import collections
import http
import re
import threading
from typing import Any

from .wire import (
    APIS,
    CDN_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    MSG_AUTH_FAILED,
    Response,
    cdn_error,
    json_response,
    rate_limited,
)

FAULTS = ("http500", "http503", "http429", "timeout", "malformed", "wrong_types", "empty_page")
CODE0_FAULT_PREFIX = "code0:"
# "failure:<code>[@<http status>]": the API's own failure body saying ``code``, at HTTP ``code`` or at the
# status given (seed 000's Fmgr body {"code": "<httpCode>", "message": ...}, which can also arrive at 200;
# for the CDN APIs, seed 002's {"Code": 0, "Message": ...}). 401 and 403 carry the auth failure message.
FAILURE_FAULT = re.compile(r"failure:([1-5][0-9][0-9])(?:@([1-5][0-9][0-9]))?")
MALFORMED_CDN_BODY = b'{"count": 1, "Code": 1,'
MALFORMED_FMGR_BODY = b'{"id": "x", "code": 3,'


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


def fault_response(api: str, fault: str) -> Response:
    """What ``fault`` answers on ``api`` (all but "timeout", which only delays the normal answer)."""
    result = f"fault:{fault}"
    cdn = api != "fmgr"
    if fault == "http500":
        return Response(500, b"Internal Server Error", {"Content-Type": "text/plain"}, result)
    if fault == "http503":
        return Response(503, b"Service Unavailable", {"Content-Type": "text/plain", "Retry-After": "2"}, result)
    if fault == "http429":
        return rate_limited(api, result, "1")
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


def _phrase(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return f"error {code}"
