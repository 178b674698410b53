"""What the simulated vendor answers with: paths, content types, seed 002's messages and response shapes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

CDN_PATHS = {"/ccm/fetch/ItemIdQuery": "prefetch", "/ccm/purge/ItemIdQuery": "purge"}
# The daily quota queries: signed like the status queries, answered with a lowercase "code" (0: success).
QUOTA_PATHS = {"/ccm/prefetch/quota": "prefetch_quota", "/ccm/purge/quota": "purge_quota"}
FMGR_PATH = "/fmgr/status"
APIS = ("prefetch", "purge", "fmgr", "prefetch_quota", "purge_quota")
# Seed 002's answer carries this odd header verbatim; clients must not rely on the content type.
CDN_CONTENT_TYPE = "charset=utf-8; charset=UTF-8"
JSON_CONTENT_TYPE = "application/json"

# Seed 002 error messages, verbatim (all are HTTP 200 with Code 0).
MSG_PARSE_JSON = "parse json error"
MSG_USERNAME_INVALID = "username is invalid"
MSG_TIME_EMPTY = "startTime or endTime must not be empty"
MSG_TOO_OLD = "query create time should not before 3 days"
MSG_TIME_ERROR = "query time error"
MSG_END_BEFORE_START = "endTime should not before startTime"
MSG_PAGE_SIZE = "page size error"
MSG_PAGE_NO = "page no error"
MSG_STATUS = "task status error,eg: init wait run success failure"
# Not in the seed; the shapes follow its error table.
MSG_AUTH_FAILED = "authentication failed"
MSG_RATE_LIMITED = "rate limit exceeded"

# Request headers: a plain mapping, or the http.server request's (case-insensitive, first of duplicates).
Headers = Mapping[str, str] | Message


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    result: str = "ok"
    # How the answer goes out when a fault paces it (faults.PACED: "trickle", "stall", "trickle_headers");
    # None: at once.
    pace: str | None = None
    # A body made while it is written (never held whole), instead of ``body``; its headers say how long it is
    # (Content-Length) or that it is chunked.
    stream: Callable[[], Iterator[bytes]] | None = None
    # The request log's entry of this request: the server adds when the answer ended ("ended").
    logged: dict[str, Any] | None = None


def compact_json(value: object) -> bytes:
    # The vendor's Java stack writes compact JSON (see the seed 001 notification body).
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(status: int, payload: object, result: str, content_type: str = JSON_CONTENT_TYPE,
                  headers: dict[str, str] | None = None) -> Response:
    return Response(status, compact_json(payload), {"Content-Type": content_type, **(headers or {})}, result)


def cdn_error(message: str, result: str = "code0", status: int = 200,
              headers: dict[str, str] | None = None) -> Response:
    return json_response(status, {"Code": 0, "Message": message}, result, CDN_CONTENT_TYPE, headers)


def auth_failed() -> Response:
    return cdn_error(MSG_AUTH_FAILED, "auth", 401)


def rate_limited(api: str, result: str, retry_after: str) -> Response:
    """HTTP 429 in the API's own error shape (an injected fault and the rate limit answer alike)."""
    headers = {"Retry-After": retry_after}
    if api == "fmgr":
        return json_response(429, {"code": 429, "message": MSG_RATE_LIMITED}, result, headers=headers)
    return cdn_error(MSG_RATE_LIMITED, result, 429, headers)
