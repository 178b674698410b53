"""The object-storage Fmgr wire: status codes, status JSON, notifications and the status client.

Everything here except :class:`FmgrClient` (a thin mapping on the shared vendor HTTP layer,
``vendor_http``) is a pure function of its input, so the poller, the notify
receiver and the simulator share one reading of the vendor's documents (seeds 000 and 001) and the tests
pin it down without a network. Nothing here stores anything or serves HTTP.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from exporter import __version__
from exporter.metrics.health import ApiHealth
from exporter.vendor import http as vendor_http
from exporter.vendor import signing
from exporter.vendor.http import VendorError, classify_status, observed, send
from exporter.vendor.log import logged

log = logging.getLogger(__name__)

# Task `code` of a status query. 2 does not exist for tasks: a failed item does not fail the task.
TASK_STATES: dict[int, str] = {
    0: "pending",
    1: "processing",
    3: "completed",
    4: "notifying",
    5: "notify_failed",
    6: "notified",
}

# Item `code`. The 18..20 range is the "failed" twin of 4..6 (failed, then notifying about it).
ITEM_STATES: dict[int, str] = {
    0: "pending",
    1: "processing",
    2: "failed",
    3: "succeeded",
    4: "succeeded_notifying",
    5: "succeeded_notify_failed",
    6: "succeeded_notified",
    18: "failed_notifying",
    19: "failed_notify_failed",
    20: "failed_notified",
}

# The lifecycle (seeds 000/001): 0 pending -> 1 processing -> 3 processing completed; a job submitted with a
# notifyURL then goes on to 4 notifying -> 5 notification failure or 6 notification success, a few seconds
# after 3. Processing is over from 3 on; only 5 and 6 are final as soon as they are seen. 3 is final only
# once the notification phase has had a grace period to start (a job without notifyURL stays at 3).
PROCESSED_TASK_CODES = frozenset({3, 4, 5, 6})
FINAL_TASK_CODES = frozenset({5, 6})
NOTIFY_FAILED_TASK_CODES = frozenset({5})
# Items: 3 -> 4 -> 5/6 for a succeeded item, 2 -> 18 -> 19/20 for a failed one.
NOTIFY_FAILED_ITEM_CODES = frozenset({5, 19})

# Largest code, size or flag accepted from the vendor: 2**53, the largest integer a JSON number keeps exactly
# in the vendor's Java and in any JSON parser. Beyond it a value is malformed, never stored.
MAX_JSON_INT = 2**53

# persistentIds as the registration API accepts them (1-128 of A-Z a-z 0-9 _ . : -). A status JSON or a
# notification naming anything else is malformed: the id is stored and shown, so its size and alphabet
# must be bounded like every other id.
PERSISTENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

_SUCCEEDED_ITEM_CODES = frozenset({3, 4, 5, 6})
_FAILED_ITEM_CODES = frozenset({2, 18, 19, 20})

# Every code either table knows: the values a `code` label may take besides "other".
_KNOWN_CODES = frozenset(TASK_STATES) | frozenset(ITEM_STATES)

# The fops an item `cmd` starts with. The op becomes a metric label, so the set is closed: anything else
# (including a typo or a future op) is reported as "other" rather than growing the series count.
KNOWN_OPS: frozenset[str] = frozenset(
    {
        # resource management (the seed's list)
        "fetch",
        "copy",
        "move",
        "delete",
        "deletePrefix",
        "deletem3u8",
        "setdeadline",
        "compress",
        "decompress",
        "resource",
        # media processing submitted through the same task queue
        "transcode",
        "avthumb",
        "avconcat",
        "vframe",
        "vsample",
    }
)

OTHER = "other"

# Numbers that arrive as strings: ASCII digits only (int() would also take "٣" or "1_000"), and short
# enough that int() never hits the interpreter's digit limit; the range is checked after parsing.
_INT_STRING = re.compile(r"-?[0-9]{1,19}")
_OP_END = re.compile(r"[/|;]")
_B64_BODY = re.compile(rb"[A-Za-z0-9_\-+/]*")


# --------------------------------------------------------------------------------------------------
# Code tables and label helpers


def _as_code(value: object) -> int | None:
    """A status code as an int, or None if it is not one (bools are JSON true/false, not codes)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_STRING.fullmatch(value.strip()):
        return int(value)
    return None


def task_state(code: int | None) -> str:
    """The state name of a task code, ``"other"`` for anything the vendor does not document."""
    parsed = _as_code(code)
    return TASK_STATES.get(parsed, OTHER) if parsed is not None else OTHER


def item_state(code: int | None) -> str:
    """The state name of an item code, ``"other"`` for anything the vendor does not document."""
    parsed = _as_code(code)
    return ITEM_STATES.get(parsed, OTHER) if parsed is not None else OTHER


def item_outcome(code: int | None) -> str | None:
    """``"succeeded"`` or ``"failed"`` once an item's processing is over, None while it is not."""
    parsed = _as_code(code)
    if parsed in _SUCCEEDED_ITEM_CODES:
        return "succeeded"
    if parsed in _FAILED_ITEM_CODES:
        return "failed"
    return None


def code_label(code: int | None) -> str:
    """A bounded ``code`` label value: the decimal code if either table knows it, else ``"other"``."""
    parsed = _as_code(code)
    return str(parsed) if parsed in _KNOWN_CODES else OTHER


def op_of(cmd: str | None) -> str:
    """The op of an item ``cmd`` (``fetch/aHR0cDovL...`` -> ``fetch``), ``"other"`` if not a known op.

    The op ends at the first ``/``; a ``|`` (chained fops) or ``;`` (several fops) also ends it, so an op
    with no arguments (``avinfo|saveas/...``) is still recognised.
    """
    if not isinstance(cmd, str):
        return OTHER
    op = _OP_END.split(cmd.strip(), maxsplit=1)[0]
    return op if op in KNOWN_OPS else OTHER


def notify_failed(code: int | None, *, item: bool) -> bool:
    """True for the codes that say the vendor could not deliver the notification (task 5; items 5, 19)."""
    return _as_code(code) in (NOTIFY_FAILED_ITEM_CODES if item else NOTIFY_FAILED_TASK_CODES)


# --------------------------------------------------------------------------------------------------
# Lifecycle: when to poll a tracked task again


@dataclass(frozen=True)
class Lifecycle:
    """When a tracked task is polled next, and when it needs no more polls. Pure; the store applies it.

    * 0/1 (and anything undocumented): poll every ``poll_interval``.
    * 3 (processing completed): the notification phase starts seconds later for a job with a notifyURL;
      poll every ``poll_interval`` until it does, or until ``notify_grace`` has passed since the task was
      first seen processed, after which 3 is final (the job has no notifyURL). A task that was notified is
      known to have a notifyURL, so for it 3 is never final.
    * 4 (notifying): poll every ``poll_interval`` until the vendor says 5 or 6.
    * 5/6: final, no more polls.
    * A received notification asks for a confirming poll ``confirm_delay`` later, long enough for the
      vendor to have recorded the delivery (our 200 answer) as 6, but never more than ``poll_interval``
      later: the vendor records the delivery within seconds, and a longer wait would show the task at 3 or
      4 that long after the vendor moved it to 6. The confirming poll takes the place of the next regular
      one (a poll in the instant of the notification would still see 4), but a task still being polled is
      polled again no later than two poll intervals after its last poll, however many notifications come
      in between: every change at the vendor is then seen within two poll intervals.
    """

    poll_interval: float = 60.0
    notify_grace: float = 300.0
    confirm_delay: float = 30.0

    def after_poll(self, code: int | None, now: float, *, processed_since: float | None,
                   notified: bool) -> float | None:
        """The time of the next poll after a poll answered ``code`` at ``now``; None when final."""
        if code in FINAL_TASK_CODES:
            return None
        if code == 3 and not notified:
            deadline = (now if processed_since is None else processed_since) + self.notify_grace
            if now >= deadline:
                return None
            return min(now + self.poll_interval, deadline)
        return now + self.poll_interval

    def after_notification(self, code: int | None, now: float, *, last_polled: float | None = None) -> float | None:
        """The time of the confirming poll after a notification received at ``now`` for a task at ``code``;
        ``last_polled``: the last poll of a task still being polled (None: not polled yet, or taken as final)."""
        if code == 6:
            return None
        due = now + min(self.confirm_delay, self.poll_interval)
        if last_polled is not None:
            due = min(due, max(now, last_polled + 2 * self.poll_interval))
        return due


# --------------------------------------------------------------------------------------------------
# Status JSON


class FmgrParseError(ValueError):
    """The status JSON or notification body is not what the vendor documents. Says which field."""


@dataclass(frozen=True)
class FmgrItem:
    op: str
    code: int | None
    fsize: int | None
    error: str | None
    key: str | None = None  # the object the item wrote (shown by the task browser, never a label)


@dataclass(frozen=True)
class FmgrStatus:
    id: str
    code: int | None
    separate: int | None
    items: tuple[FmgrItem, ...]


def _show(value: object) -> str:
    """A short rendering of a bad value for an error message (bodies can be large)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean_text(text: str | None) -> str | None:
    """Free text with any lone surrogate replaced, so that it can always be stored."""
    if text is None or _encodable(text):
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def _int_field(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    """An optional integer in 0..2**53 that the vendor sends as a number or a numeric string ("" and null =
    absent). Codes, sizes and flags are never negative, and a larger value is not one the vendor can mean:
    it would overflow the store (SQLite integers are 64-bit) or stay in a counter for good."""
    value = obj.get(key)
    if type(value) is int:  # the usual case, first (a bool is not an int here)
        if not 0 <= value <= MAX_JSON_INT:
            raise FmgrParseError(f"{where}{key}: {_show(value)} is outside 0..2**53")
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    parsed = _as_code(value)
    if parsed is None:
        raise FmgrParseError(f"{where}{key}: {_show(value)} is not an integer")
    if not 0 <= parsed <= MAX_JSON_INT:
        raise FmgrParseError(f"{where}{key}: {_show(parsed)} is outside 0..2**53")
    return parsed


def _parse_item(raw: object, index: int) -> FmgrItem:
    where = f"items[{index}]."
    if not isinstance(raw, dict):
        raise FmgrParseError(f"items[{index}]: expected an object, got {type(raw).__name__}")
    cmd = raw.get("cmd")
    if cmd is not None and not isinstance(cmd, str):
        raise FmgrParseError(f"{where}cmd: expected a string, got {type(cmd).__name__}")
    error = raw.get("error")
    if error is not None and not isinstance(error, str):
        raise FmgrParseError(f"{where}error: expected a string or null, got {type(error).__name__}")
    key = raw.get("key")
    if key is not None and not isinstance(key, str):
        raise FmgrParseError(f"{where}key: expected a string or null, got {type(key).__name__}")
    return FmgrItem(
        op=op_of(cmd),
        code=_int_field(raw, "code", where),
        fsize=_int_field(raw, "fsize", where),
        error=_clean_text(error) or None,  # "" carries no reason, same as null
        key=_clean_text(key) or None,
    )


def parse_status(data: Any) -> FmgrStatus:
    """The typed form of a decoded status JSON (a query answer or a decoded notification).

    Numbers may arrive as strings (the seeds disagree with themselves); ``""``/null mean absent.
    Raises FmgrParseError naming the field for anything that is not the documented shape.
    """
    if not isinstance(data, dict):
        raise FmgrParseError(f"status: expected a JSON object, got {type(data).__name__}")
    status_id = data.get("id")
    if not isinstance(status_id, str) or not status_id.strip():
        raise FmgrParseError(f"id: expected a non-empty string, got {_show(status_id)}")
    if not PERSISTENT_ID.fullmatch(status_id):
        raise FmgrParseError(f"id: {_show(status_id)} is not 1-128 characters of A-Z a-z 0-9 _ . : -")
    items = data.get("items")
    if items is None:
        items = []  # a pending task may have no items yet
    if not isinstance(items, list):
        raise FmgrParseError(f"items: expected a list, got {type(items).__name__}")
    return FmgrStatus(
        id=status_id,
        code=_int_field(data, "code", ""),
        separate=_int_field(data, "separate", ""),
        items=tuple(_parse_item(item, i) for i, item in enumerate(items)),
    )


# --------------------------------------------------------------------------------------------------
# Notifications (seed 001)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every notification: json.loads with a keyword argument builds a new one per call.
_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def decode_notification_body(raw: bytes) -> dict[str, Any]:
    """The JSON object inside a notification body (urlsafe base64 of the status JSON).

    Lenient about encoding details that carry no meaning (standard ``+``/``/`` alphabet, missing
    ``=`` padding, whitespace or line wrapping) and strict about the rest. Call only after
    :func:`verify_notification`: the signature covers the raw bytes, not this decoding.
    """
    compact = b"".join(raw.split()).rstrip(b"=")
    if not compact:
        raise FmgrParseError("body: empty")
    if not _B64_BODY.fullmatch(compact):
        raise FmgrParseError("body: not base64 (unexpected characters)")
    if len(compact) % 4 == 1:
        raise FmgrParseError("body: not base64 (truncated)")
    padded = compact.translate(bytes.maketrans(b"+/", b"-_")) + b"=" * (-len(compact) % 4)
    try:
        text = base64.urlsafe_b64decode(padded).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise FmgrParseError(f"body: base64 does not decode to UTF-8 text ({type(exc).__name__})") from exc
    try:
        data = _JSON.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise FmgrParseError(f"body: decoded text is not JSON ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise FmgrParseError(f"body: expected a JSON object, got {type(data).__name__}")
    return data


class NotifyError(Exception):
    """A notification that must not be accepted; ``reason`` is its ``result`` metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _unpadded(sig: str) -> str:
    # The '=' padding is implied by the length, so a sender (or proxy) that drops it sent the same
    # signature. The alphabet needs no such care: base64 of hex digits never uses the last two characters.
    return sig.rstrip("=")


def verify_notification(authorization: str | None, raw_body: bytes, url: str, keys: Mapping[str, str]) -> str:
    """Check the ``Authorization`` header of a notification; return the access key that signed it.

    ``keys`` maps access key -> secret key; ``url`` is the notifyURL the vendor was given (it is what
    was signed, whatever the request line says). Raises NotifyError with reason ``bad_signature``
    (also for a missing or malformed header) or ``unknown_key``. Looks only at the raw bytes.
    """
    header = (authorization or "").strip()
    if not header:
        raise NotifyError("bad_signature", "missing Authorization header")
    access_key, colon, signature = header.partition(":")
    access_key, signature = access_key.strip(), signature.strip()
    if not colon or not access_key or not signature:
        raise NotifyError(
            "bad_signature", "malformed Authorization header (expected <AccessKey>:<signature>)"
        )
    secret_key = keys.get(access_key)
    if secret_key is None:
        # The access key is not secret, so it may be named; it tells the operator which key to add.
        raise NotifyError("unknown_key", f"unknown access key {_show(access_key)}")
    # The expected signature is ASCII; a non-ASCII one cannot match and would not encode for the compare.
    if not signature.isascii():
        raise NotifyError("bad_signature", f"signature does not match (access key {_show(access_key)})")
    expected = signing.fmgr_notify_signature(secret_key, url, raw_body)
    if not signing.constant_time_equals(_unpadded(signature), _unpadded(expected)):
        # Named like unknown_key: it tells the operator which key's secret (or which notifyURL) to check.
        raise NotifyError("bad_signature", f"signature does not match (access key {_show(access_key)})")
    return access_key


def notification_dedup_key(raw_body: bytes) -> str:
    """Identity of one delivery: the vendor's retries of it are byte-identical, later news is not."""
    return hashlib.sha256(raw_body).hexdigest()


# --------------------------------------------------------------------------------------------------
# Status client


# A status query that gave no status: the shared vendor error. ``kind`` drives counting and backoff; for Fmgr,
# ``not_found`` means the id is unknown to the vendor (not an outage). ``status`` is the code of the vendor's
# failure body when there is one (it can say 404 inside an HTTP 200), else the HTTP status, else None.
FmgrApiError = VendorError

# The shared classifier as is: 401/403 auth, 404 not_found, 429 rate_limited, other 4xx bad_request, 5xx
# server_error, anything else malformed. (An HTTP 404 without a failure body is read as malformed, below.)
kind_for_code = classify_status
parse_retry_after = vendor_http.parse_retry_after


def _failure_code(data: object) -> int | None:
    """The ``code`` of a failure body ``{"code": ..., "message": ...}``; None if it is not one."""
    if isinstance(data, dict) and "id" not in data and "code" in data:
        return _as_code(data["code"])
    return None


def _failure_message(data: object) -> str:
    message = data.get("message") if isinstance(data, dict) else None
    return message[:200] if isinstance(message, str) else ""


class FmgrClient:
    """``GET {endpoint}/fmgr/status?persistentId=ID``. No auth (seed 000); one call per id.

    The session is a parameter so that the caller owns pooling, proxies and TLS settings. Every call is
    counted in ``health`` (api ``fmgr``); a client built without one reports into its poller's.
    """

    def __init__(self, endpoint: str, *, session: requests.Session | None = None, timeout: float = 10.0,
                 health: ApiHealth | None = None,
                 max_response_bytes: int = vendor_http.DEFAULT_MAX_RESPONSE_BYTES) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.session = session if session is not None else requests.Session()
        self.timeout = timeout
        self.health = health
        self.max_response_bytes = max_response_bytes

    def status(self, persistent_id: str) -> FmgrStatus:
        """The current status of one task, or FmgrApiError saying why there is none."""
        if not persistent_id:
            raise ValueError("persistent_id must be a non-empty string")
        with logged(log, "fmgr", id=persistent_id) as answer, observed(self.health, "fmgr"):
            response = send(
                self.session,
                "GET",
                f"{self.endpoint}/fmgr/status",
                timeout=self.timeout,
                what="Fmgr",
                max_bytes=self.max_response_bytes,
                params={"persistentId": persistent_id},
                headers={"Accept": "application/json", "User-Agent": f"cdnetworks-exporter/{__version__}"},
            )
            status = self._read(response, persistent_id)
            answer.update(code=status.code, items=len(status.items))
            return status

    def _read(self, response: requests.Response, persistent_id: str) -> FmgrStatus:
        http = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        try:
            data: object = json.loads(response.content, parse_constant=_reject_constant)
        except (ValueError, RecursionError):  # includes UnicodeDecodeError and JSONDecodeError
            data = None

        code = _failure_code(data)
        if code is not None and code >= 400:
            # The vendor's failure body is the more specific statement, whatever the HTTP status says
            # (it also arrives as HTTP 200).
            message = _failure_message(data)
            raise FmgrApiError(
                kind_for_code(code),
                f"HTTP {http}, code {code}: {message}",
                status=code,
                retry_after=retry_after,
            )
        if http >= 400:
            kind = kind_for_code(http)
            if kind == "not_found":
                # A 404 without the vendor's failure body is a wrong endpoint or path, not an unknown id:
                # calling it not_found would hide a misconfiguration as "nothing to report".
                kind = "malformed"
            raise FmgrApiError(
                kind,
                f"HTTP {http} without a failure body from the Fmgr API",
                status=http,
                retry_after=retry_after,
            )
        if data is None:
            raise FmgrApiError("malformed", f"HTTP {http}: body is not JSON", status=http)
        try:
            status = parse_status(data)
        except FmgrParseError as exc:
            raise FmgrApiError("malformed", f"HTTP {http}: {exc}", status=http) from exc
        if status.id != persistent_id:
            raise FmgrApiError(
                "malformed",
                f"HTTP {http}: asked for {_show(persistent_id)}, got {_show(status.id)}",
                status=http,
            )
        return status

    def close(self) -> None:
        self.session.close()
