"""The exporter's responses and request bodies: what every handler returns and how a body is read within a limit.

A leaf of the HTTP layer, so that the handlers of other packages (``exporter.fmgr.endpoints``) return the same
``Response`` the app renders, without importing the app.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.http import served as httpd_app

REALM = "cdnetworks-exporter"


@dataclass
class Response:
    status: str
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)


def text(status: str, body: str) -> Response:
    return Response(status, (body + "\n").encode())


def json_response(status: str, payload: Any) -> Response:
    return Response(status, json.dumps(payload).encode() + b"\n", "application/json")


class BodyTooLarge(Exception):
    pass


def read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The request body, or BodyTooLarge if it is (or claims to be) over ``limit`` bytes.

    Never reads more than limit + 1 bytes, whatever the client says: a declared length is checked
    first, and a chunked or lying body is cut off at the first byte over the limit.
    """
    if environ.get(httpd_app.BODY_TOO_LARGE):
        raise BodyTooLarge  # the server saw it and did not read it
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    got = 0
    while got <= limit:
        chunk = stream.read(limit + 1 - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got > limit:
        raise BodyTooLarge
    return b"".join(chunks)


_ASCII_INT = re.compile(r"[0-9]{1,18}")


def parse_int_param(text: str, lo: int, hi: int) -> int | None:
    """The one parser for integer query parameters: ASCII digits only (``str.isdigit`` also accepts "²",
    which ``int`` refuses), within [lo, hi]; None for anything else."""
    if not _ASCII_INT.fullmatch(text):
        return None
    value = int(text)
    return value if lo <= value <= hi else None
