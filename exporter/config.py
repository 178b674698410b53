"""Configuration model, loading and validation.

The dataclasses below are the validated, typed form of ``config.yml`` that the rest of the exporter
uses. ``load_config`` / ``parse_config`` turn YAML into it and report *every* problem at once, each
prefixed with its key path (``prefetch.windows[2]: "2x" is not a duration``).

Secrets (API keys, secret keys, the registration token) come inline, from ``${ENV}`` references or
from ``*_file`` keys. They are kept out of ``repr()``, out of every error message, and are masked by
``redacted()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

DEFAULT_CDN_ENDPOINT = "https://api.cdnetworks.com"
DEFAULT_TIMEZONE = "+08:00"
DAY = 86400.0

SECRET_MASK = "<secret>"
# Field metadata that marks a secret: hidden from repr (with repr=False) and masked by redacted().
_SECRET = {"secret": True}


class ConfigError(Exception):
    """Raised with every problem found, each as ``key.path: message``."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


@dataclass(frozen=True)
class Window:
    """A rolling window such as ``15m``: its label value as written in config, and its length."""

    name: str
    seconds: float


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` calls in any ``per`` seconds."""

    requests: int
    per: float


@dataclass(frozen=True)
class Account:
    name: str
    username: str
    api_key: str = field(repr=False, metadata=_SECRET)
    endpoint: str
    timezone: str  # as written, e.g. "+08:00" or "Asia/Shanghai"
    tz: tzinfo  # the parsed zone the API speaks
    auth: str = "basic"  # "basic" | "aksk"
    access_key: str = ""
    secret_key: str = field(default="", repr=False, metadata=_SECRET)


@dataclass(frozen=True)
class TaskKindConfig:
    """The ``prefetch`` or ``purge`` section."""

    enabled: bool
    windows: tuple[Window, ...]
    poll_interval: float
    lookback: float
    page_size: int
    rate_limit: RateLimit
    max_page_size: int = 1000  # page_size grows up to this while the budget cannot keep up
    max_query_age: float = 3 * DAY  # the API refuses older start times
    overlap: float = 300.0  # re-read this much before the watermark (late-created tasks)
    request_timeout: float = 30.0


@dataclass(frozen=True)
class NotifyKey:
    access_key: str
    secret_key: str = field(repr=False, metadata=_SECRET)


@dataclass(frozen=True)
class NotifyConfig:
    path: str = "/notify/fmgr"
    url: str | None = None
    max_body_bytes: int = 1048576
    keys: tuple[NotifyKey, ...] = ()


@dataclass(frozen=True)
class FmgrConfig:
    enabled: bool
    endpoint: str | None
    windows: tuple[Window, ...]
    poll_interval: float
    max_task_age: float
    persistent_ids: tuple[str, ...]
    register_token: str | None = field(repr=False, metadata=_SECRET)
    notify: NotifyConfig
    rate_limit: RateLimit
    request_timeout: float = 10.0
    max_register_ids: int = 1000
    notify_grace: float = 300.0
    confirm_delay: float = 30.0


@dataclass(frozen=True)
class StorageConfig:
    path: str = "./data/cdnetworks-exporter.db"


@dataclass(frozen=True)
class Config:
    accounts: tuple[Account, ...]
    prefetch: TaskKindConfig
    purge: TaskKindConfig
    fmgr: FmgrConfig
    storage: StorageConfig

    def task_kinds(self) -> list[tuple[str, TaskKindConfig]]:
        """The enabled CDN task kinds, in a stable order."""
        return [(k, c) for k, c in (("prefetch", self.prefetch), ("purge", self.purge)) if c.enabled]


# --------------------------------------------------------------------------------------------------
# Scalars: durations, time zones, URLs

_DURATION_RE = re.compile(
    r"(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?"
)
_DURATION_UNITS = (365 * DAY, 7 * DAY, DAY, 3600.0, 60.0, 1.0, 0.001)
# Longer than anything the exporter waits for or keeps; far beyond it, clocks and timers overflow.
MAX_DURATION = 10 * 365 * DAY
MAX_INTEGER = 1_000_000_000  # for counts without a tighter bound of their own


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def parse_duration(text: str | int | float) -> float:
    """Seconds in a Prometheus-style duration: ``30s``, ``5m``, ``1h30m``, ``7d``, ``1w``, ``500ms``.

    Units go from largest to smallest, each at most once (``y`` = 365d, ``w`` = 7d). A bare number
    (YAML ``300`` or the string ``"300"``, e.g. from an environment variable) means seconds. Zero is
    a valid duration here; keys that need a positive one check that themselves.
    """
    if isinstance(text, bool):
        raise ValueError(f"expected a duration, got {_type_name(text)}")
    if isinstance(text, int | float):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"{text} is not a duration (must be a finite number of seconds >= 0)")
        return _bounded(float(text), str(text))
    if not isinstance(text, str):
        raise ValueError(f"expected a duration, got {_type_name(text)}")
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if s.startswith("-"):
        raise ValueError(f"{_quote(text)} is negative; durations must not be negative")
    if re.fullmatch(r"[0-9]+", s):
        return _bounded(float(s), text)
    m = _DURATION_RE.fullmatch(s)
    if m is None or not any(m.groups()):
        raise ValueError(f"{_quote(text)} is not a duration")
    seconds = sum(int(n) * unit for n, unit in zip(m.groups(), _DURATION_UNITS, strict=True) if n)
    return _bounded(seconds, text)


def _bounded(seconds: float, text: str) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"{_quote(text)} is too long a duration (at most 10y)")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style spelling of ``seconds`` (``5400`` -> ``1h30m``), to the ms."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds} as a duration")
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        n, ms = divmod(ms, size)
        if n:
            parts.append(f"{n}{unit}")
    if ms:
        parts.append(f"{ms}ms")
    return "".join(parts)


# +08:00, -05:30, +0800, +08, and +8:00 (as people write it when quoting the YAML base-60 trap).
_OFFSET_RE = re.compile(r"([+-])([0-9]{1,2})(?::([0-9]{2}))?|([+-])([0-9]{2})([0-9]{2})")
_MAX_OFFSET = timedelta(hours=14)  # the widest offset in use anywhere (Pacific/Kiritimati)


def parse_timezone(text: str) -> tzinfo:
    """A fixed UTC offset (``+08:00``, ``-05:30``, ``+0800``), ``UTC``/``Z``, or an IANA name.

    IANA names (``Asia/Shanghai``) come from the system's zoneinfo database.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a time zone string, got {_type_name(text)}")
    s = text.strip()
    if s.upper() in ("UTC", "Z"):
        return timezone.utc
    m = _OFFSET_RE.fullmatch(s)
    if m:
        sign, hours, minutes = (m.group(1), m.group(2), m.group(3)) if m.group(1) else m.group(4, 5, 6)
        h, mi = int(hours), int(minutes or 0)
        offset = timedelta(hours=h, minutes=mi)
        if mi >= 60 or offset > _MAX_OFFSET:
            raise ValueError(f"{_quote(text)} is not a valid UTC offset (from -14:00 to +14:00)")
        return timezone(-offset if sign == "-" else offset)
    if not s or s[0] in "+-" or s[0].isdigit():
        raise ValueError(f"{_quote(text)} is not a time zone (use +08:00, UTC or an IANA name)")
    try:
        return ZoneInfo(s)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        # ZoneInfo also raises ValueError for keys that are not normalised relative paths.
        message = f"{_quote(text)} is not a known time zone (use +08:00, UTC or an IANA name)"
        raise ValueError(message) from exc


def _check_http_url(text: str, *, allow_query: bool) -> None:
    """Raise ValueError unless ``text`` is an absolute http(s) URL without credentials or fragment."""
    if any(c.isspace() for c in text):
        raise ValueError(f"{_quote(text)} is not an http(s) URL (contains whitespace)")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{_quote(text)} is not an http(s) URL")
    if "@" in parts.netloc:
        # Do not echo it: the user-info part is a credential.
        raise ValueError("must not contain credentials (user:password@); use the auth keys instead")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError as exc:
        raise ValueError(f"{_quote(text)} has an invalid port") from exc
    if parts.fragment or text.endswith("#"):
        raise ValueError(f"{_quote(text)} must not have a #fragment")
    if parts.query and not allow_query:
        raise ValueError(f"{_quote(text)} must not have a query string")


# --------------------------------------------------------------------------------------------------
# ${VAR} expansion

_VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE_RE = re.compile(r"\$\$|\$\{([^}]*)(\})?")


def expand_env(text: str, environ: Mapping[str, str]) -> tuple[str, bool, list[str]]:
    """Expand ``${VAR}`` references and ``$$`` escapes in ``text``.

    Returns (expanded text, whether any variable was used, problems). A ``$`` not followed by ``{`` or
    ``$`` is literal, so secrets that merely contain a dollar sign need no escaping. Values taken from
    the environment are not expanded again.
    """
    out: list[str] = []
    problems: list[str] = []
    used = False
    pos = 0
    for m in _REFERENCE_RE.finditer(text):
        out.append(text[pos : m.start()])
        pos = m.end()
        if m.group(0) == "$$":
            out.append("$")
            continue
        name, closed = m.group(1), m.group(2)
        if not closed:
            problems.append("unterminated ${ (write $$ for a literal $)")
            continue
        if not _VAR_NAME_RE.fullmatch(name):
            # The text between the braces is not echoed: it may be part of an inline secret.
            problems.append("invalid ${...} reference: only ${NAME} is supported (write $$ for a literal $)")
            continue
        used = True
        value = environ.get(name)
        if value is None:
            problems.append(f"environment variable {name} is not set")
        else:
            out.append(value)
    out.append(text[pos:])
    return "".join(out), used, problems


# --------------------------------------------------------------------------------------------------
# The reader: walks the raw YAML data, collecting every problem with its key path

_MISSING: Any = object()  # key absent or null: use the default
_BAD: Any = object()  # value already reported as a problem (e.g. an unset environment variable)

_MAX_SECRET_FILE_BYTES = 64 * 1024

_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "list",
    dict: "mapping",
    type(None): "null",
}


def _type_name(value: Any) -> str:
    for typ, name in _TYPE_NAMES.items():
        if type(value) is typ:
            return name
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _unknown_key_message(key: Any, allowed: Iterable[str]) -> str:
    candidates = sorted(allowed)
    close = difflib.get_close_matches(str(key).replace("-", "_"), candidates, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]}?)"
    return f"unknown key (expected one of: {', '.join(candidates)})"


class _Context:
    """Shared state of one validation run: the problems found so far and where secrets come from."""

    def __init__(self, environ: Mapping[str, str], base_dir: Path):
        self.environ = environ
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.failed: set[str] = set()

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")
        self.failed.add(path)

    def ok(self, *paths: str) -> bool:
        """True when none of ``paths`` has a problem (so cross-key checks do not pile up noise)."""
        return not any(p in self.failed for p in paths)

    def expand(self, value: Any, path: str) -> tuple[Any, bool]:
        """``value`` with ``${VAR}`` expanded if it is a string, and whether it came from the environment."""
        if not isinstance(value, str) or "$" not in value:
            return value, False
        expanded, used, problems = expand_env(value, self.environ)
        for problem in problems:
            self.error(path, problem)
        return (_BAD if problems else expanded), used

    def read_secret_file(self, raw_path: str, path: str) -> str | None:
        file = Path(raw_path).expanduser()
        if not file.is_absolute():
            file = self.base_dir / file
        try:
            with file.open("rb") as f:
                data = f.read(_MAX_SECRET_FILE_BYTES + 1)
        except OSError as exc:
            self.error(path, f"cannot read {file}: {exc.strerror or type(exc).__name__}")
            return None
        if len(data) > _MAX_SECRET_FILE_BYTES:
            self.error(path, f"{file} is larger than {_MAX_SECRET_FILE_BYTES} bytes; is it a secret file?")
            return None
        try:
            text = data.decode("utf-8").rstrip()
        except UnicodeDecodeError:
            self.error(path, f"{file} is not UTF-8 text")
            return None
        if not text:
            self.error(path, f"{file} is empty")
            return None
        return text


class _Section:
    """One mapping of the config at ``path``; typed getters report problems and fall back to defaults."""

    def __init__(self, ctx: _Context, path: str, raw: Any, allowed: Iterable[str]):
        self.ctx = ctx
        self.path = path
        self.data: Mapping[Any, Any] = {}
        if raw is _BAD or raw is _MISSING or raw is None:
            return
        if not isinstance(raw, Mapping):
            ctx.error(path, f"expected a mapping, got {_type_name(raw)}")
            return
        self.data = raw
        allowed = frozenset(allowed)
        for key in raw:
            if key not in allowed:
                ctx.error(self.sub(key), _unknown_key_message(key, allowed))

    def sub(self, key: Any) -> str:
        return _join(self.path, key)

    def present(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> tuple[Any, bool]:
        """The value at ``key`` after env expansion (``_MISSING``/``_BAD`` sentinels) and its env origin."""
        value = self.data.get(key)
        if value is None:
            return _MISSING, False
        return self.ctx.expand(value, self.sub(key))

    def section(self, key: str, allowed: Iterable[str]) -> _Section:
        return _Section(self.ctx, self.sub(key), self.data.get(key), allowed)

    def _type_error(self, key: str, expected: str, value: Any) -> None:
        self.ctx.error(self.sub(key), f"expected {expected}, got {_type_name(value)}")

    def string(self, key: str, default: str | None = None, *, required: str | None = None) -> str | None:
        """A string; ``required`` is the message when it is absent. Values are never echoed here."""
        value, _ = self.get(key)
        if value is _BAD:
            return default
        if value is _MISSING:
            if required is not None:
                self.ctx.error(self.sub(key), required)
            return default
        if not isinstance(value, str):
            self._type_error(key, "a string", value)
            return default
        if not value.strip():
            self.ctx.error(self.sub(key), "must not be empty")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value, from_env = self.get(key)
        if value is _MISSING or value is _BAD:
            return default
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            # ${VAR} always yields a string; read it the way YAML would have read the literal.
            word = value.strip().lower()
            if word in ("true", "yes", "on"):
                return True
            if word in ("false", "no", "off"):
                return False
        self._type_error(key, "a boolean (true or false)", value)
        return default

    def integer(self, key: str, default: int, *, lo: int, hi: int = MAX_INTEGER) -> int:
        value, from_env = self.get(key)
        if value is _MISSING or value is _BAD:
            return default
        if from_env and isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            self._type_error(key, "an integer", value)
            return default
        if value < lo or value > hi:
            bound = f"at least {lo}" if hi == MAX_INTEGER and value < lo else f"from {lo} to {hi}"
            self.ctx.error(self.sub(key), f"must be {bound}, got {value}")
            return default
        return value

    def duration(
        self,
        key: str,
        default: str,
        *,
        minimum: float = 0.0,
        positive: bool = True,
        maximum: float | None = None,
    ) -> float:
        fallback = parse_duration(default)
        value, _ = self.get(key)
        if value is _MISSING or value is _BAD:
            return fallback
        seconds = self._duration_value(self.sub(key), value)
        if seconds is None:
            return fallback
        if positive and seconds <= 0:
            self.ctx.error(self.sub(key), "must be greater than 0")
        elif seconds < minimum:
            self.ctx.error(self.sub(key), f"must be at least {format_duration(minimum)}")
        elif maximum is not None and seconds > maximum:
            self.ctx.error(self.sub(key), f"must be at most {format_duration(maximum)}")
        else:
            return seconds
        return fallback

    def _duration_value(self, path: str, value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.ctx.error(path, f"expected a duration such as 5m, got {_type_name(value)}")
            return None
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.ctx.error(path, str(exc))
            return None

    def items(self, key: str) -> list[tuple[str, Any]] | None:
        """(path, expanded value) for each element of the list at ``key``; None when absent or invalid."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self._type_error(key, "a list", value)
            return None
        out = []
        for i, item in enumerate(value):
            path = f"{self.sub(key)}[{i}]"
            expanded, _ = self.ctx.expand(item, path)
            out.append((path, expanded))
        return out

    def windows(self, key: str, default: Iterable[str]) -> tuple[Window, ...]:
        fallback = tuple(Window(d, parse_duration(d)) for d in default)
        items = self.items(key)
        if items is None:
            return fallback
        if not items:
            self.ctx.error(self.sub(key), "at least one window is required")
            return fallback
        windows: list[Window] = []
        first_path: dict[float, str] = {}
        for path, value in items:
            if value is _BAD:
                continue
            if value is None:
                self.ctx.error(path, "expected a duration such as 5m, got null")
                continue
            seconds = self._duration_value(path, value)
            if seconds is None:
                continue
            if seconds < 60:
                # Windows are summed from per-minute counts: a shorter one would always read 0.
                self.ctx.error(path, "must be at least 1m (windows are evaluated at one-minute resolution)")
                continue
            if seconds in first_path:
                self.ctx.error(path, f"duplicate window (same length as {first_path[seconds]})")
                continue
            first_path[seconds] = path
            # The label value is the window as written, so dashboards match the config file.
            name = value.strip() if isinstance(value, str) else format_duration(seconds)
            windows.append(Window(name, seconds))
        return tuple(windows) if windows else fallback

    def rate_limit(self, key: str, default: RateLimit) -> RateLimit:
        section = self.section(key, KNOWN_KEYS["rate_limit"])
        requests = section.integer("requests", default.requests, lo=1)
        per = section.duration("per", format_duration(default.per))
        return RateLimit(requests=requests, per=per)

    def url(self, key: str, *, allow_query: bool = False) -> str | None:
        text = self.string(key)
        if text is None:
            return None
        try:
            _check_http_url(text, allow_query=allow_query)
        except ValueError as exc:
            self.ctx.error(self.sub(key), str(exc))
            return None
        return text

    def secret(self, key: str, *, required: bool) -> str | None:
        """A secret given inline (``key``, maybe ``${VAR}``) or as a file (``key_file``); never echoed."""
        file_key = f"{key}_file"
        if self.present(key) and self.present(file_key):
            self.ctx.error(self.sub(file_key), f"conflicts with {key}; set only one of them")
            return None
        if self.present(file_key):
            file_path = self.string(file_key)
            return None if file_path is None else self.ctx.read_secret_file(file_path, self.sub(file_key))
        return self.string(key, required=f"required (or {file_key})" if required else None)


# --------------------------------------------------------------------------------------------------
# The sections

KNOWN_KEYS: Mapping[str, frozenset[str]] = {
    "": frozenset({"accounts", "prefetch", "purge", "fmgr", "storage"}),
    "accounts[]": frozenset(
        {
            "name", "username", "api_key", "api_key_file", "endpoint", "timezone", "auth",
            "access_key", "secret_key", "secret_key_file",
        }
    ),
    "prefetch": frozenset(
        {
            "enabled", "windows", "poll_interval", "lookback", "page_size", "max_page_size", "rate_limit",
            "max_query_age", "overlap", "request_timeout",
        }
    ),
    "rate_limit": frozenset({"requests", "per"}),
    "fmgr": frozenset(
        {
            "enabled", "endpoint", "windows", "poll_interval", "max_task_age", "persistent_ids",
            "register_token", "register_token_file", "rate_limit", "request_timeout", "max_register_ids",
            "notify", "notify_grace", "confirm_delay",
        }
    ),
    "fmgr.notify": frozenset({"path", "url", "max_body_bytes", "keys"}),
    "fmgr.notify.keys[]": frozenset({"access_key", "secret_key", "secret_key_file"}),
    "storage": frozenset({"path"}),
}  # fmt: skip
"""Every key the config accepts, by section (``purge`` has the same keys as ``prefetch``)."""

_ACCOUNT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_PERSISTENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Paths the HTTP server serves itself; the notify receiver must not shadow them.
_RESERVED_PATHS = frozenset({"/", "/metrics", "/healthz", "/readyz"})
_RESERVED_PREFIX = "/api/"  # the bearer-token registration API
_AUTH_SCHEMES = ("basic", "aksk")


def _no_whitespace(ctx: _Context, path: str, value: str | None, what: str, extra: str = "") -> None:
    """Header-bound values (user names, access keys) must not carry whitespace or ``extra`` chars."""
    if value is not None and any(c.isspace() or c in extra for c in value):
        bad = "whitespace" + (f" or {' '.join(extra)}" if extra else "")
        ctx.error(path, f"{what} must not contain {bad}")


def _timezone(ctx: _Context, s: _Section) -> tuple[str, tzinfo]:
    """The account's time zone as written and parsed (the default when absent or invalid)."""
    value, _ = s.get("timezone")
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML 1.1 reads +8:00 or -5:30 unquoted as base-60 integers (480, -330): say so.
        ctx.error(s.sub("timezone"), "expected a string, got a number (quote UTC offsets, e.g. \"+08:00\")")
        return DEFAULT_TIMEZONE, parse_timezone(DEFAULT_TIMEZONE)
    text = s.string("timezone")
    if text is None:
        return DEFAULT_TIMEZONE, parse_timezone(DEFAULT_TIMEZONE)
    try:
        return text, parse_timezone(text)
    except ValueError as exc:
        ctx.error(s.sub("timezone"), str(exc))
        return DEFAULT_TIMEZONE, parse_timezone(DEFAULT_TIMEZONE)


def _account(ctx: _Context, path: str, raw: Any) -> Account | None:
    if not isinstance(raw, Mapping):
        if raw is not _BAD:
            ctx.error(path, f"expected a mapping, got {_type_name(raw)}")
        return None
    s = _Section(ctx, path, raw, KNOWN_KEYS["accounts[]"])
    name = s.string("name", required="required")
    if name is not None and not _ACCOUNT_NAME_RE.fullmatch(name):
        ctx.error(s.sub("name"), f"{_quote(name)} may only contain letters, digits, _ . and -")
    auth = s.string("auth", "basic") or "basic"
    if auth not in _AUTH_SCHEMES:
        ctx.error(s.sub("auth"), f"must be one of {', '.join(_AUTH_SCHEMES)}, got {_quote(auth)}")
    basic = auth != "aksk"
    username = s.string("username", required="required (with auth: basic)" if basic else None)
    _no_whitespace(ctx, s.sub("username"), username, "user name", ":")
    api_key = s.secret("api_key", required=basic)
    access_key = s.string("access_key", required="required (with auth: aksk)" if not basic else None)
    _no_whitespace(ctx, s.sub("access_key"), access_key, "access key")
    secret_key = s.secret("secret_key", required=not basic)
    if auth == "basic":
        for key in ("access_key", "secret_key", "secret_key_file"):
            if s.present(key):
                ctx.error(s.sub(key), "only used with auth: aksk")
    endpoint = s.url("endpoint") or DEFAULT_CDN_ENDPOINT
    tz_text, tz = _timezone(ctx, s)
    return Account(
        name=name or "",
        username=username or "",
        api_key=api_key or "",
        endpoint=endpoint.rstrip("/"),
        timezone=tz_text,
        tz=tz,
        auth=auth,
        access_key=access_key or "",
        secret_key=secret_key or "",
    )


def _accounts(ctx: _Context, root: _Section) -> tuple[Account, ...]:
    items = root.items("accounts")
    if not items:
        return ()
    accounts: list[Account] = []
    first_path: dict[str, str] = {}
    for path, raw in items:
        account = _account(ctx, path, raw)
        if account is None:
            continue
        if account.name and ctx.ok(f"{path}.name"):
            if account.name in first_path:
                first = first_path[account.name]
                ctx.error(f"{path}.name", f"duplicate account name {_quote(account.name)} (see {first})")
            first_path.setdefault(account.name, path)
        accounts.append(account)
    return tuple(accounts)


def _task_kind(
    ctx: _Context, root: _Section, key: str, *, enabled: bool, rate_limit: RateLimit
) -> TaskKindConfig:
    s = root.section(key, KNOWN_KEYS["prefetch"])
    max_query_age = s.duration("max_query_age", "3d", maximum=7 * DAY)
    lookback = s.duration("lookback", "24h")
    if lookback > max_query_age and ctx.ok(s.sub("lookback"), s.sub("max_query_age")):
        ctx.error(
            s.sub("lookback"),
            f"{format_duration(lookback)} is longer than max_query_age ({format_duration(max_query_age)});"
            " the API refuses older start times",
        )
    page_size = s.integer("page_size", 500, lo=1, hi=10000)
    max_page_size = s.integer("max_page_size", max(1000, page_size), lo=1, hi=10000)
    if max_page_size < page_size and ctx.ok(s.sub("page_size"), s.sub("max_page_size")):
        ctx.error(s.sub("max_page_size"), f"{max_page_size} is smaller than page_size ({page_size})")
    return TaskKindConfig(
        enabled=s.boolean("enabled", enabled),
        windows=s.windows("windows", ("15m", "1h", "24h")),
        poll_interval=s.duration("poll_interval", "5m", minimum=1.0),
        lookback=lookback,
        page_size=page_size,
        max_page_size=max_page_size,
        rate_limit=s.rate_limit("rate_limit", rate_limit),
        max_query_age=max_query_age,
        overlap=s.duration("overlap", "5m", positive=False),
        request_timeout=s.duration("request_timeout", "30s"),
    )


def _notify(ctx: _Context, s: _Section) -> NotifyConfig:
    path = s.string("path", "/notify/fmgr") or "/notify/fmgr"
    if not path.startswith("/") or any(c.isspace() or c in "?#" for c in path):
        ctx.error(s.sub("path"), f"{_quote(path)} must be a URL path starting with / (no query or spaces)")
    elif path in _RESERVED_PATHS or path.startswith(_RESERVED_PREFIX):
        ctx.error(s.sub("path"), f"{_quote(path)} is served by the exporter itself; choose another path")
    url = s.url("url", allow_query=True)
    keys: list[NotifyKey] = []
    first_path: dict[str, str] = {}
    for item_path, raw in s.items("keys") or []:
        if not isinstance(raw, Mapping):
            if raw is not _BAD:
                ctx.error(item_path, f"expected a mapping, got {_type_name(raw)}")
            continue
        k = _Section(ctx, item_path, raw, KNOWN_KEYS["fmgr.notify.keys[]"])
        access_key = k.string("access_key", required="required")
        # The Authorization header is "<AccessKey>:<signature>", so a colon would be ambiguous.
        _no_whitespace(ctx, k.sub("access_key"), access_key, "access key", ":")
        secret_key = k.secret("secret_key", required=True)
        if access_key is not None and ctx.ok(k.sub("access_key")):
            if access_key in first_path:
                ctx.error(k.sub("access_key"), f"duplicate access key (see {first_path[access_key]})")
            first_path.setdefault(access_key, k.sub("access_key"))
        keys.append(NotifyKey(access_key=access_key or "", secret_key=secret_key or ""))
    if keys and url is None and ctx.ok(s.sub("url")):
        ctx.error(s.sub("url"), "required when keys are set (the notifyURL given to the vendor, as signed)")
    return NotifyConfig(
        path=path,
        url=url,
        max_body_bytes=s.integer("max_body_bytes", 1048576, lo=1024, hi=67108864),
        keys=tuple(keys),
    )


def _persistent_ids(ctx: _Context, s: _Section) -> tuple[str, ...]:
    ids: list[str] = []
    first_path: dict[str, str] = {}
    for path, value in s.items("persistent_ids") or []:
        if value is _BAD:
            continue
        if not isinstance(value, str):
            ctx.error(path, f"expected a string, got {_type_name(value)}")
            continue
        if not _PERSISTENT_ID_RE.fullmatch(value):
            ctx.error(path, f"{_quote(value)} is not a persistentId (1 to 128 of A-Z a-z 0-9 _ . : -)")
            continue
        if value in first_path:
            ctx.error(path, f"duplicate persistentId (see {first_path[value]})")
            continue
        first_path[value] = path
        ids.append(value)
    return tuple(ids)


def _fmgr(ctx: _Context, root: _Section) -> FmgrConfig:
    s = root.section("fmgr", KNOWN_KEYS["fmgr"])
    endpoint = s.url("endpoint")
    persistent_ids = _persistent_ids(ctx, s)
    notify = _notify(ctx, s.section("notify", KNOWN_KEYS["fmgr.notify"]))
    # Configuring something to watch turns Fmgr on; an explicit `enabled` wins either way.
    implied = bool(s.present("endpoint") or notify.keys or persistent_ids)
    enabled = s.boolean("enabled", implied)
    if enabled and not s.present("endpoint") and not notify.keys:
        if persistent_ids:
            ctx.error(s.sub("persistent_ids"), "need fmgr.endpoint to be polled (or notify.keys to be notified)")
        else:
            ctx.error(s.sub("enabled"), "true, but neither endpoint nor notify.keys is set: nothing to watch")
    return FmgrConfig(
        enabled=enabled,
        endpoint=endpoint.rstrip("/") if endpoint else None,
        windows=s.windows("windows", ("1h", "24h")),
        poll_interval=s.duration("poll_interval", "1m", minimum=1.0),
        max_task_age=s.duration("max_task_age", "7d"),
        persistent_ids=persistent_ids,
        register_token=s.secret("register_token", required=False),
        notify=notify,
        rate_limit=s.rate_limit("rate_limit", RateLimit(requests=10, per=1.0)),
        request_timeout=s.duration("request_timeout", "10s"),
        max_register_ids=s.integer("max_register_ids", 1000, lo=1),
        # 0 = code 3 is final at once (no job ever has a notifyURL); at most a day, bounded like any poll.
        notify_grace=s.duration("notify_grace", "5m", positive=False, maximum=86400.0),
        confirm_delay=s.duration("confirm_delay", "30s", minimum=1.0, maximum=3600.0),
    )


def _storage(ctx: _Context, root: _Section) -> StorageConfig:
    s = root.section("storage", KNOWN_KEYS["storage"])
    return StorageConfig(path=s.string("path", StorageConfig.path) or StorageConfig.path)


def parse_config(
    data: Any, *, environ: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    """Validate raw YAML data into a ``Config``, or raise ``ConfigError`` listing every problem.

    ``environ`` feeds ``${VAR}`` references (default: ``os.environ``); relative ``*_file`` paths are
    resolved against ``base_dir`` (default: the working directory; ``load_config`` passes the
    config file's directory).
    """
    if data is None or (isinstance(data, Mapping) and not data):
        raise ConfigError(["config is empty"])
    if not isinstance(data, Mapping):
        raise ConfigError([f"config must be a mapping of sections, got {_type_name(data)}"])
    ctx = _Context(os.environ if environ is None else environ, Path.cwd() if base_dir is None else base_dir)
    root = _Section(ctx, "", data, KNOWN_KEYS[""])
    accounts_at = len(ctx.errors)
    accounts = _accounts(ctx, root)
    prefetch = _task_kind(ctx, root, "prefetch", enabled=True, rate_limit=RateLimit(requests=1, per=300.0))
    purge = _task_kind(ctx, root, "purge", enabled=False, rate_limit=RateLimit(requests=10, per=300.0))
    if not root.data.get("accounts") and (prefetch.enabled or purge.enabled) and ctx.ok("accounts"):
        # Reported where the accounts' own problems would be, so the list reads in file order.
        ctx.errors.insert(
            accounts_at, "accounts: at least one account is required while prefetch or purge is enabled"
        )
    fmgr = _fmgr(ctx, root)
    storage = _storage(ctx, root)
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return Config(accounts=accounts, prefetch=prefetch, purge=purge, fmgr=fmgr, storage=storage)


# --------------------------------------------------------------------------------------------------
# Loading YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, which plain YAML resolves silently (the last one wins)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # keys merged in with << may legitimately be overridden
        key = loader.construct_object(key_node, deep=False)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # unhashable key: construct_mapping reports it
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {_quote(str(key))} (first at line {first.start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_error(path: Path, exc: yaml.YAMLError) -> str:
    # Only the problem and its position: the YAML library's snippet of the offending line could show
    # an inline secret.
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        context = f" ({exc.context})" if exc.context else ""
        return f"{path}: {where}: {exc.problem}{context}"
    return f"{path}: invalid YAML ({type(exc).__name__})"


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file; relative ``*_file`` paths are relative to its directory."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror or type(exc).__name__}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: not UTF-8 text"]) from exc
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
        # absolute(), not resolve(): mounted secrets are often symlinks whose targets live elsewhere.
        return parse_config(data, environ=environ, base_dir=file.absolute().parent)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error(file, exc)]) from None
    except RecursionError:
        # PyYAML and the validator both recurse; a hostile file must be an error, not a crash.
        raise ConfigError([f"{file}: nested too deeply"]) from None


# --------------------------------------------------------------------------------------------------
# Dumping


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            out[f.name] = SECRET_MASK if f.metadata.get("secret") and item else _plain(item)
        return out
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, tzinfo):
        return str(value)
    return value


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data (dicts, lists, str, numbers), every set secret replaced by ``<secret>``."""
    result = _plain(config)
    assert isinstance(result, dict)
    return result
