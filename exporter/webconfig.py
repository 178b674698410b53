"""The exporter-toolkit web configuration file (``--web.config.file``): TLS and basic auth.

Same format as every Go exporter built on prometheus/exporter-toolkit, so an operator can reuse
the file they already have. Keys that would change security behaviour but that this server cannot
honour (inline PEM, SAN pinning, rate limiting, non-verifying client-cert modes) are refused with a
clear error instead of being ignored: silently dropping a security setting is worse than failing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import threading
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import bcrypt
import yaml

from exporter.config import ConfigError

log = logging.getLogger(__name__)

CLIENT_AUTH_TYPES = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
# Accepted by the Go toolkit but without a Python ssl equivalent: OpenSSL verifies whatever
# certificate it asks for, so "ask but do not verify" cannot be expressed.
_UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = MappingProxyType(
    {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }
)

# The toolkit allows only these response headers, some with enumerated values; we keep the same
# rule so a file that works there works here and vice versa.
ALLOWED_HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Strict-Transport-Security": (),
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": (),
        "Content-Security-Policy": (),
    }
)

_TLS_KEYS = frozenset(
    {
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "min_version",
        "max_version",
        "cipher_suites",
        "curve_preferences",
        "prefer_server_cipher_suites",
    }
)
_TLS_REFUSED = MappingProxyType(
    {
        "cert": "inline certificates are not supported; use cert_file",
        "key": "inline keys are not supported; use key_file",
        "client_ca": "inline CA certificates are not supported; use client_ca_file",
        "client_allowed_sans": "client SAN pinning is not supported by this exporter",
    }
)
_HTTP_KEYS = frozenset({"http2", "headers"})
_TOP_KEYS = frozenset({"tls_server_config", "http_server_config", "basic_auth_users"})
_TOP_REFUSED = MappingProxyType({"rate_limit": "rate limiting is not supported by this exporter"})

# $2a$/$2b$/$2y$, two-digit cost, 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True)
class WebConfig:
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str | None = None  # None = the toolkit's default, TLS12
    max_version: str | None = None  # None = the newest the ssl module offers
    prefer_server_cipher_suites: bool = True
    basic_auth_users: Mapping[str, str] = field(default_factory=dict, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def tls_enabled(self) -> bool:
        return self.cert_file is not None


# --------------------------------------------------------------------------------------------------
# Loading


def _check_keys(
    section: Mapping[Any, Any],
    where: str,
    allowed: frozenset[str],
    refused: Mapping[str, str],
    errors: list[str],
) -> None:
    for key in section:
        path = f"{where}{key}"
        if key in refused:
            errors.append(f"{path}: {refused[key]}")
        elif key not in allowed:
            errors.append(f"{path}: unknown key")


def _mapping(value: Any, path: str, errors: list[str]) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a mapping, got {type(value).__name__}")
        return {}
    return value


def _string(section: Mapping[Any, Any], key: str, where: str, errors: list[str]) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        errors.append(f"{where}{key}: expected a string, got {type(value).__name__}")
        return None
    return value


def _existing_file(
    section: Mapping[Any, Any], key: str, where: str, base: Path, errors: list[str]
) -> str | None:
    value = _string(section, key, where, errors)
    if value is None:
        return None
    # Relative paths are relative to the web config file, as in the toolkit.
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        errors.append(f"{where}{key}: file {str(path)!r} does not exist")
        return None
    return str(path)


def _string_list(section: Mapping[Any, Any], key: str, where: str, errors: list[str]) -> None:
    value = section.get(key)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(f"{where}{key}: expected a list of strings")


def _parse_tls(section: Mapping[Any, Any], base: Path, errors: list[str]) -> dict[str, Any]:
    where = "tls_server_config."
    _check_keys(section, where, _TLS_KEYS, _TLS_REFUSED, errors)
    out: dict[str, Any] = {
        "cert_file": _existing_file(section, "cert_file", where, base, errors),
        "key_file": _existing_file(section, "key_file", where, base, errors),
        "client_ca_file": _existing_file(section, "client_ca_file", where, base, errors),
    }
    if section.get("cert_file") and not section.get("key_file"):
        errors.append(f"{where}key_file: required when cert_file is set")
    if section.get("key_file") and not section.get("cert_file"):
        errors.append(f"{where}cert_file: required when key_file is set")

    auth = _string(section, "client_auth_type", where, errors) or "NoClientCert"
    if auth in _UNSUPPORTED_CLIENT_AUTH:
        errors.append(
            f"{where}client_auth_type: {auth!r} (client certificate without verification) is not "
            f"supported; use one of {', '.join(CLIENT_AUTH_TYPES)}"
        )
    elif auth not in CLIENT_AUTH_TYPES:
        errors.append(f"{where}client_auth_type: {auth!r} is not one of {', '.join(CLIENT_AUTH_TYPES)}")
    out["client_auth_type"] = auth
    if section.get("client_ca_file") and auth == "NoClientCert":
        errors.append(f"{where}client_ca_file: set without a client_auth_type that verifies certificates")
    if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not section.get("client_ca_file"):
        errors.append(f"{where}client_ca_file: required when client_auth_type is {auth}")
    if section and not section.get("cert_file") and (auth != "NoClientCert" or section.get("client_ca_file")):
        errors.append(f"{where}cert_file: required for TLS")

    for key in ("min_version", "max_version"):
        version = _string(section, key, where, errors)
        if version is not None and version not in TLS_VERSIONS:
            errors.append(f"{where}{key}: {version!r} is not one of {', '.join(TLS_VERSIONS)}")
            version = None
        out[key] = version
    if (
        out["min_version"]
        and out["max_version"]
        and TLS_VERSIONS[out["min_version"]] > TLS_VERSIONS[out["max_version"]]
    ):
        errors.append(f"{where}min_version: {out['min_version']} is above max_version {out['max_version']}")

    # Go names the cipher suites and curves differently from OpenSSL and Python offers no portable
    # per-suite or multi-curve control, so these are checked for shape and otherwise left to
    # OpenSSL's defaults (which are the modern AEAD suites and X25519/P-256 anyway).
    for key in ("cipher_suites", "curve_preferences"):
        _string_list(section, key, where, errors)
        if section.get(key):
            log.warning("web config: %s%s is accepted but not applied; OpenSSL defaults are used", where, key)
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        errors.append(f"{where}prefer_server_cipher_suites: expected true or false")
        prefer = True
    out["prefer_server_cipher_suites"] = prefer
    return out


def _parse_http(section: Mapping[Any, Any], errors: list[str]) -> dict[str, str]:
    where = "http_server_config."
    _check_keys(section, where, _HTTP_KEYS, {}, errors)
    # HTTP/2 is not spoken by this server; the key is accepted so toolkit files load unchanged.
    if "http2" in section and not isinstance(section["http2"], bool):
        errors.append(f"{where}http2: expected true or false")
    headers: dict[str, str] = {}
    for name, value in _mapping(section.get("headers"), f"{where}headers", errors).items():
        path = f"{where}headers.{name}"
        if name not in ALLOWED_HEADERS:
            errors.append(f"{path}: this header cannot be configured (allowed: {', '.join(ALLOWED_HEADERS)})")
            continue
        if value is None or value == "":
            continue  # blank means unset, as in the toolkit
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {type(value).__name__}")
            continue
        if "\r" in value or "\n" in value:
            errors.append(f"{path}: must be a single line")
            continue
        allowed = ALLOWED_HEADERS[name]
        if allowed and value not in allowed:
            errors.append(f"{path}: {value!r} is not one of {', '.join(allowed)}")
            continue
        headers[name] = value
    return headers


def _parse_users(section: Mapping[Any, Any], errors: list[str]) -> dict[str, str]:
    users: dict[str, str] = {}
    for user, hashed in section.items():
        path = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            errors.append(f"{path}: user names must be non-empty strings without ':'")
            continue
        # Never print the hash itself: it is a password verifier.
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            errors.append(f"{path}: not a bcrypt hash (expected $2a$, $2b$ or $2y$, cost 04-31, 60 characters)")
            continue
        users[user] = hashed
    return users


def parse_web_config(data: Any, base_dir: str | Path = ".") -> WebConfig:
    """The validated form of an already-decoded web config document; raises ConfigError."""
    errors: list[str] = []
    top = _mapping(data, "(top level)", errors)
    _check_keys(top, "", _TOP_KEYS, _TOP_REFUSED, errors)
    tls = _parse_tls(_mapping(top.get("tls_server_config"), "tls_server_config", errors), Path(base_dir), errors)
    headers = _parse_http(_mapping(top.get("http_server_config"), "http_server_config", errors), errors)
    users = _parse_users(_mapping(top.get("basic_auth_users"), "basic_auth_users", errors), errors)
    if errors:
        raise ConfigError(errors)
    return WebConfig(
        **tls,
        basic_auth_users=MappingProxyType(users),
        headers=MappingProxyType(headers),
    )


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web config file; every problem is reported as ``key.path: message``.

    Messages do not repeat the file name: callers print it in front of each one.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read web config: {exc}"]) from exc
    try:
        data = yaml.safe_load(text)
        return parse_web_config(data, path.parent)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from exc
    except RecursionError:
        raise ConfigError(["nested too deeply"]) from None


# --------------------------------------------------------------------------------------------------
# TLS


def build_ssl_context(cfg: WebConfig) -> ssl.SSLContext | None:
    """The server-side TLS context the config describes, or None when TLS is off.

    Raises ConfigError when the certificate, key or CA file cannot be loaded.
    """
    if not cfg.tls_enabled:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[cfg.min_version or "TLS12"]
    if cfg.max_version:
        ctx.maximum_version = TLS_VERSIONS[cfg.max_version]
    if cfg.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)  # type: ignore[arg-type]
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError([f"tls_server_config.cert_file: cannot load certificate and key: {exc}"]) from exc
    if cfg.client_auth_type != "NoClientCert":
        try:
            ctx.load_verify_locations(cafile=cfg.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError([f"tls_server_config.client_ca_file: cannot load CA certificates: {exc}"]) from exc
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if cfg.client_auth_type == "RequireAndVerifyClientCert" else ssl.CERT_OPTIONAL
        )
    return ctx


# --------------------------------------------------------------------------------------------------
# Basic auth

# bcrypt("not-a-real-password", cost 10): checked for unknown users so that a wrong user name takes as
# long as a wrong password and does not reveal which user names exist.
_DUMMY_HASH = b"$2b$10$wSIvf/5TQ8kXVRkZFqQZ8.AFJOjgZ1ubg80V5MxD0Dal7ByUD5cdG"


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header, or None if there is none."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


# Why a basic-auth check failed: the label values of cdnetworks_web_auth_failures_total.
AUTH_FAILURE_REASONS = ("missing", "wrong", "throttled")
# bcrypt checks of new candidates running or waiting at once; past that such a check fails at once.
BCRYPT_RUNNING = 1
BCRYPT_WAITING = 3
# Checks of repeated candidates (a password refused unchecked before) running or waiting at once. They go to
# bcrypt ahead of new candidates.
REPEATED_WAITING = 2
# The fingerprints of candidates refused unchecked or found wrong: a fixed table of 64-bit entries (1 MiB), each
# candidate in one slot, so a flood overwrites entries at random rather than growing it.
SEEN_SLOTS = 1 << 17
# Where verified passwords are remembered across restarts (Store.get_state/set_state), and how many at most.
VERIFIED_STATE_KEY = "web:verified_passwords"
VERIFIED_KEPT = 64

# What assess() says about a candidate without running bcrypt.
VERIFIED = "verified"  # a remembered password: let it in
MISSING = "missing"  # no usable credentials
KNOWN_WRONG = "wrong"  # checked before and wrong: refuse without bcrypt
REPEATED = "repeated"  # refused unchecked before: bcrypt, ahead of new candidates
NEW = "new"  # never seen: bcrypt, if there is room


class StateStore(Protocol):
    """Where verified passwords are remembered across restarts: the exporter's store (exporter/store.py)."""

    def get_state(self, key: str) -> Any: ...

    def set_state(self, key: str, value: Any) -> None: ...


class AuthFailures:
    """Failed basic-auth checks by reason; kept for the life of the process (across reloads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(AUTH_FAILURE_REASONS, 0)

    def inc(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def _entry_ts(entry: dict[str, Any]) -> float:
    ts = entry.get("ts")
    return float(ts) if isinstance(ts, (int, float)) else 0.0


def verified_digest(hashed: bytes, salt: bytes, user: str, password: bytes) -> bytes:
    """What is remembered of a verified password: HMAC-SHA256 keyed with the user's bcrypt hash (it lives in the
    web config file, not in the store) over a random salt, the user name and the password. A copy of the store
    alone therefore allows no guessing, and no two entries (users, salts, hashes) share a digest."""
    return hmac.new(hashed, salt + user.encode("utf-8") + b"\0" + password, hashlib.sha256).digest()


class BasicAuth:
    """Checks HTTP Basic credentials against the bcrypt hashes of ``basic_auth_users``.

    bcrypt is deliberately slow (tens of ms at cost 10) and Prometheus scrapes every few seconds, so a password
    that passed bcrypt is remembered, per user, as a salted digest keyed with the user's hash
    (``verified_digest``); later requests compare that digest in constant time. With a store attached
    (``attach``), the digests are also kept there (``VERIFIED_STATE_KEY``, at most ``VERIFIED_KEPT``), so a
    restart does not forget them.

    A flood of wrong passwords cannot take the CPU or the server's workers: one bcrypt runs at a time, a few
    more wait for it, and a check that would have to wait behind more than that fails at once ("throttled").
    A password never verified (the first scrape with a new password, on a new store) can be throttled during
    such a flood; it is then remembered as a fingerprint (``SEEN_SLOTS``), and when it comes again (the next
    scrape) it goes to bcrypt ahead of every new candidate. A password found wrong is remembered the same way
    and refused without bcrypt when it comes again, so each guess pays the bcrypt cost once at most, and
    guesses that repeat cannot crowd out the one that is right.
    """

    def __init__(self, users: Mapping[str, str], failures: AuthFailures | None = None) -> None:
        self._users = {user: hashed.encode("ascii") for user, hashed in users.items()}
        self._verified: dict[str, tuple[bytes, bytes]] = {}  # user -> (salt, digest) of its verified password
        self._lock = threading.Lock()
        self._turn = threading.Condition(self._lock)  # bcrypt: one at a time, repeated candidates first
        self._bcrypt_busy = False
        self._queued = [0, 0]  # waiting for bcrypt: new candidates, repeated ones
        self._in_bcrypt = [0, 0]  # running or waiting: new candidates, repeated ones
        self._key = secrets.token_bytes(32)  # for the fingerprints; never leaves the process
        self._seen = array("Q", bytes(8 * SEEN_SLOTS))
        self._state: StateStore | None = None
        self.failures = failures or AuthFailures()

    # -- remembering verified passwords across restarts

    def attach(self, state: StateStore | None) -> None:
        """Remember verified passwords in ``state`` from now on, and take up those it remembers of the configured
        users (their digests only match while a user's hash is the one they were made with)."""
        self._state = state
        if state is None:
            return
        try:
            saved = state.get_state(VERIFIED_STATE_KEY)
        except Exception as exc:  # the store cannot be read: start with the memory of this process
            log.warning("basic auth: cannot read the remembered passwords: %s", exc)
            return
        entries = saved.get("entries") if isinstance(saved, dict) else None
        with self._lock:
            for entry in entries if isinstance(entries, list) else []:
                try:
                    user, salt, digest = entry["user"], bytes.fromhex(entry["salt"]), bytes.fromhex(entry["digest"])
                except (KeyError, TypeError, ValueError):
                    continue
                if user in self._users and user not in self._verified and len(digest) == hashlib.sha256().digest_size:
                    self._verified[user] = (salt, digest)

    def _remember(self, user: str, hashed: bytes, password: bytes) -> None:
        salt = secrets.token_bytes(16)
        digest = verified_digest(hashed, salt, user, password)
        with self._lock:
            self._verified[user] = (salt, digest)
        state = self._state
        if state is None:
            return
        entry = {"user": user, "salt": salt.hex(), "digest": digest.hex(), "ts": time.time()}
        try:
            saved = state.get_state(VERIFIED_STATE_KEY)
            entries = saved.get("entries") if isinstance(saved, dict) else None
            others = [e for e in (entries if isinstance(entries, list) else [])
                      if isinstance(e, dict) and e.get("user") != user]
            others.sort(key=_entry_ts)
            state.set_state(VERIFIED_STATE_KEY, {"entries": [*others[-(VERIFIED_KEPT - 1):], entry]})
        except Exception as exc:  # remembered in memory all the same; the next start checks it again
            log.warning("basic auth: cannot store the verified password of %r: %s", user, exc)

    # -- checking

    def _is_verified(self, user: str, hashed: bytes | None, password: bytes) -> bool:
        if hashed is None:
            return False
        with self._lock:
            remembered = self._verified.get(user)
        return remembered is not None and hmac.compare_digest(
            remembered[1], verified_digest(hashed, remembered[0], user, password))

    def _fingerprint(self, user: str, hashed: bytes | None, password: bytes) -> tuple[int, int]:
        """(slot, fingerprint) of a candidate, for the table of those seen; the fingerprint's lowest bit is
        clear (set in the table: found wrong) and it is never 0 (an empty slot)."""
        mac = hmac.new(self._key, user.encode("utf-8") + b"\0" + (hashed or b"") + b"\0" + password, hashlib.sha256)
        value = int.from_bytes(mac.digest()[:8], "big")
        return (value >> 1) % SEEN_SLOTS, (value & ~1) or 2

    def assess(self, header: str | None) -> str:
        """What is known of these credentials without bcrypt: VERIFIED, MISSING, KNOWN_WRONG, REPEATED or NEW."""
        creds = _parse_basic(header)
        if creds is None:
            return MISSING
        user, password = creds
        pw = password.encode("utf-8")
        hashed = self._users.get(user)
        if self._is_verified(user, hashed, pw):
            return VERIFIED
        slot, fingerprint = self._fingerprint(user, hashed, pw)
        seen = self._seen[slot]
        if seen == fingerprint | 1:
            return KNOWN_WRONG
        return REPEATED if seen == fingerprint else NEW

    def throttled(self, header: str | None) -> None:
        """Count a candidate refused unchecked (the server had no room for its check), and remember it: when it
        comes again, it is checked ahead of new candidates."""
        creds = _parse_basic(header)
        if creds is not None:
            user, password = creds
            pw = password.encode("utf-8")
            slot, fingerprint = self._fingerprint(user, self._users.get(user), pw)
            if self._seen[slot] != fingerprint | 1:
                self._seen[slot] = fingerprint
        self.failures.inc("throttled")

    def check(self, header: str | None) -> bool:
        creds = _parse_basic(header)
        if creds is None:
            self.failures.inc("missing")
            return False
        user, password = creds
        pw = password.encode("utf-8")
        hashed = self._users.get(user)
        if self._is_verified(user, hashed, pw):
            return True
        slot, fingerprint = self._fingerprint(user, hashed, pw)
        seen = self._seen[slot]
        if seen == fingerprint | 1:
            self.failures.inc("wrong")  # found wrong before: no bcrypt again
            return False
        lane = 1 if seen == fingerprint else 0
        with self._lock:
            if self._in_bcrypt[lane] >= (REPEATED_WAITING if lane else BCRYPT_RUNNING + BCRYPT_WAITING):
                if seen != fingerprint:
                    self._seen[slot] = fingerprint
                self.failures.inc("throttled")
                return False
            self._in_bcrypt[lane] += 1
        try:
            ok = self._bcrypt(pw, hashed if hashed is not None else _DUMMY_HASH, lane) and hashed is not None
        finally:
            with self._lock:
                self._in_bcrypt[lane] -= 1
        if ok:
            assert hashed is not None
            self._remember(user, hashed, pw)
        else:
            self._seen[slot] = fingerprint | 1
            self.failures.inc("wrong")
        return ok

    def _bcrypt(self, password: bytes, hashed: bytes, lane: int) -> bool:
        """One bcrypt check at a time; a repeated candidate (lane 1) goes before every new one (lane 0)."""
        with self._turn:
            self._queued[lane] += 1
            while self._bcrypt_busy or (lane == 0 and self._queued[1]):
                self._turn.wait()
            self._queued[lane] -= 1
            self._bcrypt_busy = True
        try:
            return bcrypt.checkpw(password, hashed)
        except ValueError as exc:
            # bcrypt refuses passwords over 72 bytes; no configured password can be that long.
            log.debug("basic auth: password rejected by bcrypt: %s", exc)
            return False
        finally:
            with self._turn:
                self._bcrypt_busy = False
                self._turn.notify_all()
