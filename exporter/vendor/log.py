"""One debug line per vendor request, written by the clients (``cdn.CdnClient.query``, ``fmgr.FmgrClient.status``).

At ``--log.level debug`` an operator sees every call the pollers make: the API, what was asked (account, time
range, page and page size; the persistentId for Fmgr), what came back (the vendor's total count and the rows of
the page; the task code for Fmgr), how long it took and its result, the ``result`` label of
``cdnetworks_api_requests_total`` (``ok`` or the error's kind). Nothing is formatted unless debug is on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from exporter.vendor.http import VendorError


@contextmanager
def logged(logger: logging.Logger, api: str, **asked: Any) -> Iterator[dict[str, Any]]:
    """Log the request when the block ends; the block adds what came back to the dict it is given."""
    answer: dict[str, Any] = {}
    if not logger.isEnabledFor(logging.DEBUG):
        yield answer
        return
    started = time.monotonic()
    result = "unknown"
    try:
        yield answer
        result = "ok"
    except VendorError as exc:
        result = exc.kind
        answer["error"] = exc.message[:200]
        raise
    finally:
        fields = {"api": api, **asked, **answer, "duration": f"{time.monotonic() - started:.3f}s", "result": result}
        logger.debug("vendor request %s", " ".join(f"{k}={_value(v)}" for k, v in fields.items()))


def _value(value: Any) -> str:
    text = str(value)
    return text if text and not any(c in text for c in ' "=') else '"' + text.replace('"', '\\"') + '"'
