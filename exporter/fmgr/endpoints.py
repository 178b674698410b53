"""Fmgr's HTTP endpoints: the signed notification receiver and the registration API's POST.

The app (``exporter.http.web``) routes to them; what they write to is a ``NotificationSink`` and a
``TaskRegistry`` (``exporter.fmgr.ingest.FmgrIngest`` in the running exporter). Notifications are checked in
the order that costs an attacker the most and the exporter the least: size, then the signature over the raw
bytes, then parsing, then storing.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from exporter.config import FmgrConfig
from exporter.fmgr import wire as fmgr
from exporter.fmgr.wire import FmgrStatus
from exporter.http.responses import REALM, BodyTooLarge, Response, json_response, read_body

log = logging.getLogger(__name__)

API_MAX_BODY_BYTES = 1024 * 1024
PERSISTENT_ID = fmgr.PERSISTENT_ID

# The two answers to a stored notification, encoded once (json_response's format).
_ACCEPTED = json.dumps({"result": "accepted"}).encode() + b"\n"
_DUPLICATE = json.dumps({"result": "duplicate"}).encode() + b"\n"


class NotificationSink(Protocol):
    def record_notification(self, status: FmgrStatus, dedup_key: str, received_ts: float) -> bool:
        """True = new and durably stored, False = a duplicate already stored. Raises on storage failure."""
        ...

    def count_notification(self, result: str) -> None:
        """Count a rejected notification (bad_signature, unknown_key, malformed, too_large)."""
        ...


class TaskRegistry(Protocol):
    def register_ids(self, ids: Sequence[str], source: str) -> int:
        """Track these Fmgr persistentIds; return how many were not tracked before."""
        ...

    def list_tasks(self, state: str | None, limit: int, pending: bool | None = None) -> list[dict[str, Any]]:
        """JSON-able descriptions of tracked tasks, optionally only those in ``state`` (one of
        ``fmgr.tracking.API_STATES``) and only those ``pending`` or not."""
        ...


@dataclass
class NotifyEndpoint:
    path: str
    url: str  # the notifyURL given to the vendor: it is what was signed
    keys: Mapping[str, str] = field(repr=False)  # access key -> secret key
    max_body_bytes: int
    sink: NotificationSink

    def handle(self, environ: Mapping[str, Any], clock: Callable[[], float]) -> Response:
        try:
            raw = read_body(environ, self.max_body_bytes)
        except BodyTooLarge:
            return self._reject("413 Payload Too Large", "too_large", "body over the size limit")
        try:
            access_key = fmgr.verify_notification(environ.get("HTTP_AUTHORIZATION"), raw, self.url, self.keys)
        except fmgr.NotifyError as exc:
            return self._reject("401 Unauthorized", exc.reason, str(exc))
        try:
            status = fmgr.parse_status(fmgr.decode_notification_body(raw))
        except fmgr.FmgrParseError as exc:
            return self._reject("400 Bad Request", "malformed", str(exc))
        try:
            new = self.sink.record_notification(status, fmgr.notification_dedup_key(raw), clock())
        except Exception:
            # 5xx makes the vendor deliver again later; nothing was acknowledged.
            log.exception("could not store Fmgr notification for %s", status.id)
            return json_response("503 Service Unavailable", {"result": "error", "error": "could not store"})
        result = "accepted" if new else "duplicate"
        log.debug("Fmgr notification %s: id=%s code=%s key=%s", result, status.id, status.code, access_key)
        return Response("200 OK", _ACCEPTED if new else _DUPLICATE, "application/json")

    def _reject(self, status: str, reason: str, detail: str) -> Response:
        log.warning("Fmgr notification rejected (%s): %s", reason, detail)
        try:
            self.sink.count_notification(reason)
        except Exception:
            log.exception("could not count rejected Fmgr notification (%s)", reason)
        # The detail names fields or the access key, never a secret or a signature.
        return json_response(status, {"result": reason, "error": detail})


@dataclass
class RegistrationApi:
    token: str = field(repr=False)
    max_ids: int
    registry: TaskRegistry

    def register(self, environ: Mapping[str, Any]) -> Response:
        """POST: track the ids of the body (the bearer token is checked by ``authorize``)."""
        try:
            raw = read_body(environ, API_MAX_BODY_BYTES)
        except BodyTooLarge:
            return json_response("413 Payload Too Large", {"error": f"body over {API_MAX_BODY_BYTES} bytes"})
        ids, problem = validate_registration(raw, self.max_ids)
        if problem is not None:
            return json_response("400 Bad Request", {"error": problem})
        try:
            new = self.registry.register_ids(ids, "api")
        except Exception:
            log.exception("could not register %d Fmgr ids", len(ids))
            return json_response("503 Service Unavailable", {"error": "could not store the ids"})
        log.debug("registered %d Fmgr ids through the API (%d new)", len(ids), new)
        # received: the distinct ids of this request; registered: those of them tracked from now on;
        # already_tracked: those of them that were tracked before (left as they were).
        return json_response("200 OK", {"received": len(ids), "registered": new, "already_tracked": len(ids) - new})


def authorize(api: RegistrationApi | None, environ: Mapping[str, Any]) -> Response | None:
    """None when the registration API is on and the bearer token is right, else the response to send."""
    if api is None:
        return json_response(
            "404 Not Found", {"error": "the registration API is disabled (set fmgr.register_token)"}
        )
    scheme, _, token = (environ.get("HTTP_AUTHORIZATION") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api.token.encode()):
        return None
    response = json_response("401 Unauthorized", {"error": "missing or wrong bearer token"})
    response.headers.append(("WWW-Authenticate", f'Bearer realm="{REALM}"'))
    return response


def validate_registration(raw: bytes, max_ids: int) -> tuple[list[str], str | None]:
    """The unique ids of a registration body in first-seen order, or a message saying what is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # also UnicodeDecodeError, a ValueError
        return [], "body is not valid JSON"
    if not isinstance(data, dict) or "persistentIds" not in data:
        return [], 'expected a JSON object with "persistentIds"'
    ids = data["persistentIds"]
    if not isinstance(ids, list):
        return [], "persistentIds: expected a list of strings"
    if not ids:
        return [], "persistentIds: empty"
    if len(ids) > max_ids:
        return [], f"persistentIds: {len(ids)} ids, at most {max_ids} per request"
    for i, value in enumerate(ids):
        if not isinstance(value, str) or not PERSISTENT_ID.fullmatch(value):
            return [], f"persistentIds[{i}]: expected 1-128 characters of A-Z a-z 0-9 _ . : -"
    return list(dict.fromkeys(ids)), None


def notify_endpoint(cfg: FmgrConfig, sink: NotificationSink) -> NotifyEndpoint | None:
    """The receiver the configuration asks for, or None when notifications are not configured."""
    n = cfg.notify
    if not cfg.enabled or not n.keys or not n.url:
        return None
    return NotifyEndpoint(path=n.path, url=n.url, keys={k.access_key: k.secret_key for k in n.keys},
                          max_body_bytes=n.max_body_bytes, sink=sink)


def registration_api(cfg: FmgrConfig, registry: TaskRegistry) -> RegistrationApi | None:
    """The registration API the configuration asks for, or None when it has no token."""
    if not cfg.enabled or not cfg.register_token:
        return None
    return RegistrationApi(token=cfg.register_token, max_ids=cfg.max_register_ids, registry=registry)
