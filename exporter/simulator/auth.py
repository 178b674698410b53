"""Who a CDN request comes from: the accounts, and Basic (Date + HMAC-SHA1) and AK/SK verification."""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from exporter.simulator.settings import Settings
from exporter.simulator.wire import MSG_USERNAME_INVALID, Headers, Response, auth_failed, cdn_error
from exporter.vendor import signing

AKSK_TIMESTAMP_SKEW = 300.0


@dataclass(frozen=True)
class Account:
    username: str
    api_key: str | None = field(repr=False)
    access_key: str | None
    secret_key: str | None = field(repr=False)


class Accounts:
    """The CDN accounts by username and by access key."""

    def __init__(self, settings: Settings, lock: threading.RLock) -> None:
        self._settings = settings
        self._lock = lock
        self._by_name: dict[str, Account] = {}
        self._by_access_key: dict[str, Account] = {}

    def add(self, username: str, api_key: str | None, access_key: str | None, secret_key: str | None) -> None:
        if api_key is None and access_key is None:
            raise ValueError("an account needs an api_key or an access_key/secret_key pair")
        if (access_key is None) != (secret_key is None):
            raise ValueError("access_key and secret_key go together")
        account = Account(username, api_key, access_key, secret_key)
        with self._lock:
            self._by_name[username] = account
            if access_key is not None:
                self._by_access_key[access_key] = account

    def claimed_user(self, headers: Headers) -> str | None:
        """Who the request says it is, unverified (for counting, also of refused requests)."""
        access_key = headers.get("x-cnc-accessKey")
        if access_key is not None:
            with self._lock:
                account = self._by_access_key.get(access_key)
            return account.username if account is not None else None
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            return base64.b64decode(token, validate=True).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return None

    def verify(self, method: str, path: str, query: str, headers: Headers, body: bytes,
               now: float) -> tuple[str | None, Response | None]:
        """(the verified username, None), or (None, the refusal): AK/SK when the access key header is there."""
        if headers.get("x-cnc-accessKey") is not None:
            return self._verify_aksk(method, path, query, headers, body, now)
        return self._verify_basic(headers, now)

    def _verify_basic(self, headers: Headers, now: float) -> tuple[str | None, Response | None]:
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic" or not token:
            return None, auth_failed()
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None, auth_failed()
        username, sep, password = decoded.partition(":")
        if not sep:
            return None, auth_failed()
        with self._lock:
            account = self._by_name.get(username)
        if account is None:
            return None, cdn_error(MSG_USERNAME_INVALID, "auth")
        date = headers.get("Date") or ""
        if account.api_key is None or not self._date_fresh(date, now):
            return None, auth_failed()
        if not signing.constant_time_equals(password, signing.basic_password(account.api_key, date)):
            return None, auth_failed()
        return username, None

    def _date_fresh(self, date: str, now: float) -> bool:
        try:
            parsed = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return False
        if parsed.tzinfo is None:
            return False
        return abs(parsed.timestamp() - now) <= self._settings.date_skew

    def _verify_aksk(self, method: str, path: str, query: str, headers: Headers, body: bytes,
                     now: float) -> tuple[str | None, Response | None]:
        access_key = headers.get("x-cnc-accessKey") or ""
        timestamp = headers.get("x-cnc-timestamp") or ""
        fields = signing.parse_aksk_authorization(headers.get("Authorization") or "")
        with self._lock:
            account = self._by_access_key.get(access_key)
        if (fields is None or account is None or account.secret_key is None
                or fields["Credential"] != access_key
                or fields["SignedHeaders"].lower() != signing.AKSK_SIGNED_HEADERS):
            return None, auth_failed()
        try:
            stamp = int(timestamp)
        except ValueError:
            return None, auth_failed()
        if abs(stamp - now) > AKSK_TIMESTAMP_SKEW:
            return None, auth_failed()
        expected = signing.aksk_signature(
            account.secret_key, method=method, path=path, query=query, host=headers.get("Host") or "",
            content_type=headers.get("Content-Type") or "", body=body, timestamp=timestamp)
        if not signing.constant_time_equals(fields["Signature"], expected):
            return None, auth_failed()
        return account.username, None
