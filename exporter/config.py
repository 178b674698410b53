"""Configuration model, loading and validation.

The dataclasses below are the validated, typed form of ``config.yml`` that the rest of the exporter
uses. ``load_config`` / ``parse_config`` turn YAML into it and report *every* problem at once, each
prefixed with its key path (``prefetch.windows[2]: "2x" is not a duration``). The sections are read
with the validation framework in ``exporter.configschema`` (scalar parsers, ``${ENV}``, ``*_file``
secrets, strict YAML); this module says what the sections are.

Secrets (API keys, secret keys, the registration token) come inline, from ``${ENV}`` references or
from ``*_file`` keys. They are kept out of ``repr()``, out of every error message, and are masked by
``redacted()``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

import yaml

from exporter import quotas as quota_table
from exporter import slo as slo_model
from exporter.configschema import (
    BAD,
    DAY,
    Context,
    Section,
    StrictLoader,
    format_duration,
    parse_duration,
    parse_timezone,
    quote,
    type_name,
    yaml_error,
)
from exporter.kinds import KINDS, NAMES, TaskKind
from exporter.vendor.http import DEFAULT_MAX_RESPONSE_BYTES

DEFAULT_CDN_ENDPOINT = "https://api.cdnetworks.com"
DEFAULT_TIMEZONE = "+08:00"

SECRET_MASK = "<secret>"
MAX_RESPONSE_BYTES = 1 << 30  # the largest cap on a vendor answer the config accepts
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
    """The section of one CDN task kind (an entry of ``kinds.KINDS``, named after it: ``prefetch``, ...)."""

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
    # The largest answer read from the API (a declared Content-Length, then the bytes as they come).
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES


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
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_register_ids: int = 1000
    notify_grace: float = 300.0
    confirm_delay: float = 30.0


@dataclass(frozen=True)
class StorageConfig:
    """Where the store lives: an SQLite file (``path``), or a PostgreSQL database (``url``) that several
    replicas can share."""

    path: str = "./data/cdnetworks-exporter.db"
    # postgresql://user@host:port/db; may hold a password, hence secret (``password`` is the other way to give one).
    url: str | None = field(default=None, repr=False, metadata=_SECRET)
    password: str | None = field(default=None, repr=False, metadata=_SECRET)
    # Replicas sharing the database: how long a poller's lease lasts without renewal (the failover time).
    lease_ttl: float = 60.0

    def target(self) -> str:
        """What ``repository.open_repository`` opens: the database URL, or else the SQLite path."""
        return self.url if self.url is not None else self.path


@dataclass(frozen=True)
class QuotaConfig:
    """The daily quota queries (exporter/quotas.py): polled per account and quota kind on a budget of their own,
    off unless enabled, and then for every account or only for those listed."""

    enabled: bool = False
    accounts: tuple[str, ...] = ()  # the accounts whose quotas are polled; empty: every account
    kinds: tuple[str, ...] = quota_table.NAMES
    poll_interval: float = 300.0
    rate_limit: RateLimit = RateLimit(requests=2, per=300.0)
    request_timeout: float = 30.0
    volume_unit: str = quota_table.DEFAULT_VOLUME_UNIT  # the unit of the answers' volume figures

    def pollers(self, accounts: Sequence[Account]) -> list[tuple[str, str]]:
        """(account, quota kind) of every quota poller, in account order."""
        if not self.enabled:
            return []
        return [(a.name, kind) for a in accounts if not self.accounts or a.name in self.accounts
                for kind in self.kinds]


@dataclass(frozen=True)
class Config:
    accounts: tuple[Account, ...]
    # Every kind of kinds.KINDS by name, in table order, enabled or not. A plain dict, typed read-only, so that
    # a Config still copies and pickles; left out of the hash (a dict has none) so that it stays hashable too.
    kinds: Mapping[str, TaskKindConfig] = field(hash=False)
    fmgr: FmgrConfig
    storage: StorageConfig
    # Read by prometheus/generate.py (the SLO rules), not by the running exporter; validated with the rest.
    slo: slo_model.SloConfig = field(default_factory=slo_model.defaults)
    quota: QuotaConfig = QuotaConfig()

    def task_kinds(self) -> list[tuple[str, TaskKindConfig]]:
        """The enabled CDN task kinds and their settings, in the order of ``kinds.KINDS``."""
        return [(name, c) for name, c in self.kinds.items() if c.enabled]

    def pollers(self) -> list[tuple[str, str]]:
        """(account, api) of every poller this configuration runs: each account's enabled task kinds, and the
        Fmgr status poller (account "") when Fmgr has an endpoint to poll."""
        return ([(a.name, kind) for a in self.accounts for kind, _ in self.task_kinds()]
                + ([("", "fmgr")] if self.fmgr.enabled and self.fmgr.endpoint else []))


POSTGRES_SCHEMES = ("postgresql://", "postgres://")

# --------------------------------------------------------------------------------------------------
# The sections

# The keys of a task kind's section, the same for every kind.
_TASK_KIND_KEYS = frozenset(
    {
        "enabled", "windows", "poll_interval", "lookback", "page_size", "max_page_size", "rate_limit",
        "max_query_age", "overlap", "request_timeout", "max_response_bytes",
    }
)  # fmt: skip

_SLO_KEYS = frozenset({"enabled", "objective", "period", "min_events"})

KNOWN_KEYS: Mapping[str, frozenset[str]] = {
    "": frozenset({"accounts", *NAMES, "fmgr", "storage", "slo", "quota"}),
    "accounts[]": frozenset(
        {
            "name", "username", "api_key", "api_key_file", "endpoint", "timezone", "auth",
            "access_key", "secret_key", "secret_key_file",
        }
    ),
    **dict.fromkeys(NAMES, _TASK_KIND_KEYS),
    "rate_limit": frozenset({"requests", "per"}),
    "fmgr": frozenset(
        {
            "enabled", "endpoint", "windows", "poll_interval", "max_task_age", "persistent_ids",
            "register_token", "register_token_file", "rate_limit", "request_timeout", "max_response_bytes",
            "max_register_ids", "notify", "notify_grace", "confirm_delay",
        }
    ),
    "fmgr.notify": frozenset({"path", "url", "max_body_bytes", "keys"}),
    "fmgr.notify.keys[]": frozenset({"access_key", "secret_key", "secret_key_file"}),
    "storage": frozenset({"path", "url", "url_file", "password", "password_file", "lease_ttl"}),
    "slo": frozenset(slo_model.NAMES),
    **{f"slo.{name}": _SLO_KEYS for name in slo_model.NAMES},
    "quota": frozenset({"enabled", "accounts", "kinds", "poll_interval", "rate_limit", "request_timeout",
                        "volume_unit"}),
}  # fmt: skip
"""Every key the config accepts, by section (one section per entry of ``kinds.KINDS``, all with the same keys)."""

_ACCOUNT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_PERSISTENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Paths the HTTP server serves itself; the notify receiver must not shadow them.
_RESERVED_PATHS = frozenset({"/", "/metrics", "/healthz", "/readyz"})
_RESERVED_PREFIX = "/api/"  # the bearer-token registration API
_AUTH_SCHEMES = ("basic", "aksk")


def _windows(s: Section, key: str, default: Iterable[str]) -> tuple[Window, ...]:
    fallback = tuple(Window(d, parse_duration(d)) for d in default)
    items = s.items(key)
    if items is None:
        return fallback
    if not items:
        s.ctx.error(s.sub(key), "at least one window is required")
        return fallback
    windows: list[Window] = []
    first_path: dict[float, str] = {}
    for path, value in items:
        if value is BAD:
            continue
        if value is None:
            s.ctx.error(path, "expected a duration such as 5m, got null")
            continue
        seconds = s.duration_value(path, value)
        if seconds is None:
            continue
        if seconds < 60:
            # Windows are summed from per-minute counts: a shorter one would always read 0.
            s.ctx.error(path, "must be at least 1m (windows are evaluated at one-minute resolution)")
            continue
        if seconds in first_path:
            s.ctx.error(path, f"duplicate window (same length as {first_path[seconds]})")
            continue
        first_path[seconds] = path
        # The label value is the window as written, so dashboards match the config file.
        name = value.strip() if isinstance(value, str) else format_duration(seconds)
        windows.append(Window(name, seconds))
    return tuple(windows) if windows else fallback


def _rate_limit(s: Section, key: str, default: RateLimit) -> RateLimit:
    section = s.section(key, KNOWN_KEYS["rate_limit"])
    requests = section.integer("requests", default.requests, lo=1)
    per = section.duration("per", format_duration(default.per))
    return RateLimit(requests=requests, per=per)


def _no_whitespace(ctx: Context, path: str, value: str | None, what: str, extra: str = "") -> None:
    """Header-bound values (user names, access keys) must not carry whitespace or ``extra`` chars."""
    if value is not None and any(c.isspace() or c in extra for c in value):
        bad = "whitespace" + (f" or {' '.join(extra)}" if extra else "")
        ctx.error(path, f"{what} must not contain {bad}")


def _timezone(ctx: Context, s: Section) -> tuple[str, tzinfo]:
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


def _account(ctx: Context, path: str, raw: Any) -> Account | None:
    if not isinstance(raw, Mapping):
        if raw is not BAD:
            ctx.error(path, f"expected a mapping, got {type_name(raw)}")
        return None
    s = Section(ctx, path, raw, KNOWN_KEYS["accounts[]"])
    name = s.string("name", required="required")
    if name is not None and not _ACCOUNT_NAME_RE.fullmatch(name):
        ctx.error(s.sub("name"), f"{quote(name)} may only contain letters, digits, _ . and -")
    auth = s.string("auth", "basic") or "basic"
    if auth not in _AUTH_SCHEMES:
        ctx.error(s.sub("auth"), f"must be one of {', '.join(_AUTH_SCHEMES)}, got {quote(auth)}")
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


def _accounts(ctx: Context, root: Section) -> tuple[Account, ...]:
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
                ctx.error(f"{path}.name", f"duplicate account name {quote(account.name)} (see {first})")
            first_path.setdefault(account.name, path)
        accounts.append(account)
    return tuple(accounts)


def _task_kind(ctx: Context, root: Section, kind: TaskKind) -> TaskKindConfig:
    s = root.section(kind.name, KNOWN_KEYS[kind.name])
    max_query_age = s.duration("max_query_age", "3d", maximum=7 * DAY)
    lookback = s.duration("lookback", "24h")
    if lookback > max_query_age and ctx.ok(s.sub("lookback"), s.sub("max_query_age")):
        ctx.error(
            s.sub("lookback"),
            f"{format_duration(lookback)} is longer than {s.sub('max_query_age')} ({format_duration(max_query_age)});"
            " the API refuses older start times",
        )
    page_size = s.integer("page_size", 500, lo=1, hi=10000)
    max_page_size = s.integer("max_page_size", max(1000, page_size), lo=1, hi=10000)
    if max_page_size < page_size and ctx.ok(s.sub("page_size"), s.sub("max_page_size")):
        ctx.error(s.sub("max_page_size"), f"{max_page_size} is smaller than page_size ({page_size})")
    return TaskKindConfig(
        enabled=s.boolean("enabled", kind.enabled),
        windows=_windows(s, "windows", ("15m", "1h", "24h")),
        poll_interval=s.duration("poll_interval", "5m", minimum=1.0),
        lookback=lookback,
        page_size=page_size,
        max_page_size=max_page_size,
        rate_limit=_rate_limit(s, "rate_limit", RateLimit(requests=kind.budget_requests, per=kind.budget_seconds)),
        max_query_age=max_query_age,
        overlap=s.duration("overlap", "5m", positive=False),
        request_timeout=s.duration("request_timeout", "30s"),
        max_response_bytes=_max_response_bytes(s),
    )


def _max_response_bytes(s: Section) -> int:
    """The cap on one vendor answer, in bytes: from 1 KiB (no answer of the API is smaller than that is useful)
    to 1 GiB."""
    return s.integer("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES, lo=1024, hi=MAX_RESPONSE_BYTES)


def _notify(ctx: Context, s: Section) -> NotifyConfig:
    path = s.string("path", "/notify/fmgr") or "/notify/fmgr"
    if not path.startswith("/") or any(c.isspace() or c in "?#" for c in path):
        ctx.error(s.sub("path"), f"{quote(path)} must be a URL path starting with / (no query or spaces)")
    elif path in _RESERVED_PATHS or path.startswith(_RESERVED_PREFIX):
        ctx.error(s.sub("path"), f"{quote(path)} is served by the exporter itself; choose another path")
    url = s.url("url", allow_query=True)
    keys: list[NotifyKey] = []
    first_path: dict[str, str] = {}
    for item_path, raw in s.items("keys") or []:
        if not isinstance(raw, Mapping):
            if raw is not BAD:
                ctx.error(item_path, f"expected a mapping, got {type_name(raw)}")
            continue
        k = Section(ctx, item_path, raw, KNOWN_KEYS["fmgr.notify.keys[]"])
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


def _persistent_ids(ctx: Context, s: Section) -> tuple[str, ...]:
    ids: list[str] = []
    first_path: dict[str, str] = {}
    for path, value in s.items("persistent_ids") or []:
        if value is BAD:
            continue
        if not isinstance(value, str):
            ctx.error(path, f"expected a string, got {type_name(value)}")
            continue
        if not _PERSISTENT_ID_RE.fullmatch(value):
            ctx.error(path, f"{quote(value)} is not a persistentId (1 to 128 of A-Z a-z 0-9 _ . : -)")
            continue
        if value in first_path:
            ctx.error(path, f"duplicate persistentId (see {first_path[value]})")
            continue
        first_path[value] = path
        ids.append(value)
    return tuple(ids)


def _fmgr(ctx: Context, root: Section) -> FmgrConfig:
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
        windows=_windows(s, "windows", ("1h", "24h")),
        poll_interval=s.duration("poll_interval", "1m", minimum=1.0),
        max_task_age=s.duration("max_task_age", "7d"),
        persistent_ids=persistent_ids,
        register_token=s.secret("register_token", required=False),
        notify=notify,
        rate_limit=_rate_limit(s, "rate_limit", RateLimit(requests=10, per=1.0)),
        request_timeout=s.duration("request_timeout", "10s"),
        max_response_bytes=_max_response_bytes(s),
        max_register_ids=s.integer("max_register_ids", 1000, lo=1),
        # 0 = code 3 is final at once (no job ever has a notifyURL); at most a day, bounded like any poll.
        notify_grace=s.duration("notify_grace", "5m", positive=False, maximum=86400.0),
        confirm_delay=s.duration("confirm_delay", "30s", minimum=1.0, maximum=3600.0),
    )


def _storage(ctx: Context, root: Section, kinds: Mapping[str, TaskKindConfig], fmgr: FmgrConfig) -> StorageConfig:
    s = root.section("storage", KNOWN_KEYS["storage"])
    lease_ttl = s.duration("lease_ttl", "60s", minimum=3.0)
    # A holder sends only while its lease outlasts the request, and renews every quarter of the lease: the
    # longest request timeout must fit in three quarters of it (less a second of margin each side).
    timeouts = [c.request_timeout for c in kinds.values() if c.enabled] + ([fmgr.request_timeout] if fmgr.enabled
                                                                           else [])
    longest = max(timeouts, default=0.0)
    if 0.75 * lease_ttl - 1.0 <= longest + 1.0 and ctx.ok(s.sub("lease_ttl")):
        ctx.error(s.sub("lease_ttl"), f"{format_duration(lease_ttl)} is too short for a request_timeout of "
                  f"{format_duration(longest)}; use at least {format_duration(math.floor((longest + 2.0) / 0.75) + 1)}")
    url = s.secret("url", required=False)
    password = s.secret("password", required=False)
    if url is not None:
        if not url.startswith(POSTGRES_SCHEMES):
            # The URL is not echoed: it may hold a password.
            ctx.error(s.sub("url"), "must be a PostgreSQL URL (postgresql://user@host:5432/database)")
        elif s.present("path"):
            ctx.error(s.sub("path"), "conflicts with url; set only one of them (url: PostgreSQL, path: SQLite)")
    elif password is not None:
        ctx.error(s.sub("password"), "only used with url (a PostgreSQL database)")
    return StorageConfig(path=s.string("path", StorageConfig.path) or StorageConfig.path, url=url,
                         password=password, lease_ttl=lease_ttl)


# --------------------------------------------------------------------------------------------------
# slo: and quota: (each read by one function of its own)


def _objective_percent(s: Section, default: float) -> float:
    """``objective``: the percent of finished events that must succeed, as a number (99.5) or a string ("99.5%")."""
    if not s.present("objective"):
        return default
    value, _ = s.get("objective")
    path = s.sub("objective")
    if value is BAD:
        return default
    if isinstance(value, str):
        text = value.strip().removesuffix("%").strip()
        try:
            value = float(text)
        except ValueError:
            s.ctx.error(path, f"{quote(value)} is not a percentage such as 99.5")
            return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        s.ctx.error(path, f"expected a percentage such as 99.5, got {type_name(value)}")
        return default
    if not 0 < value < 100:
        s.ctx.error(path, f"must be more than 0 and less than 100 (a percentage), got {value:g}")
        return default
    if value <= 1:
        s.ctx.error(path, f"{value:g} is read as {value:g}%; write the objective as a percentage "
                    f"({value * 100:g} for {value * 100:g}%)")
        return default
    return float(value)


def _slo(ctx: Context, root: Section) -> slo_model.SloConfig:
    """The ``slo:`` section: one objective per CDN task kind and one for Fmgr items, each on by default."""
    s = root.section("slo", KNOWN_KEYS["slo"])
    objectives = []
    for name in slo_model.NAMES:
        o = s.section(name, KNOWN_KEYS[f"slo.{name}"])
        objectives.append(slo_model.Objective(
            name=name,
            enabled=o.boolean("enabled", True),
            objective=_objective_percent(o, slo_model.DEFAULT_OBJECTIVES[name]),
            period=o.duration("period", format_duration(slo_model.DEFAULT_PERIOD), minimum=slo_model.MIN_PERIOD,
                              maximum=slo_model.MAX_PERIOD),
            min_events=o.integer("min_events", slo_model.DEFAULT_MIN_EVENTS, lo=1),
        ))
    return slo_model.SloConfig(tuple(objectives))


def _names(ctx: Context, s: Section, key: str, allowed: Sequence[str], what: str) -> tuple[str, ...] | None:
    """A list of unique names out of ``allowed``; None when absent."""
    items = s.items(key)
    if items is None:
        return None
    names: list[str] = []
    first_path: dict[str, str] = {}
    for path, value in items:
        if value is BAD:
            continue
        if not isinstance(value, str):
            ctx.error(path, f"expected a string, got {type_name(value)}")
        elif value not in allowed:
            ctx.error(path, f"{quote(value)} is not {what} (expected {_one_of(list(allowed)) if allowed else 'none'})")
        elif value in first_path:
            ctx.error(path, f"duplicate {quote(value)} (see {first_path[value]})")
        else:
            first_path[value] = path
            names.append(value)
    return tuple(names)


def _quota(ctx: Context, root: Section, accounts: Sequence[Account], storage: StorageConfig) -> QuotaConfig:
    """The ``quota:`` section: which accounts' daily quotas are polled, and on which budget."""
    s = root.section("quota", KNOWN_KEYS["quota"])
    default = QuotaConfig()
    listed = _names(ctx, s, "accounts", [a.name for a in accounts if a.name], "a configured account")
    kinds = _names(ctx, s, "kinds", quota_table.NAMES, "a quota kind")
    if kinds == () and ctx.ok(s.sub("kinds")):
        ctx.error(s.sub("kinds"), f"at least one of {_one_of(quota_table.NAMES)} is required")
    # At most 15m: CDNetworksNotPolling fires 30m after the last successful poll of any CDN API, quotas included.
    poll_interval = s.duration("poll_interval", format_duration(default.poll_interval), minimum=10.0, maximum=900.0)
    request_timeout = s.duration("request_timeout", format_duration(default.request_timeout), maximum=120.0)
    enabled = s.boolean("enabled", default.enabled)
    # Sent only while the lease outlasts the request, as every poller (see _storage).
    if (enabled and 0.75 * storage.lease_ttl - 1.0 <= request_timeout + 1.0
            and ctx.ok(s.sub("request_timeout"), "storage.lease_ttl")):
        ctx.error(s.sub("request_timeout"), f"{format_duration(request_timeout)} does not fit storage.lease_ttl "
                  f"({format_duration(storage.lease_ttl)}); use at most "
                  f"{format_duration(max(0.0, math.floor(0.75 * storage.lease_ttl - 2.0) - 1.0))}")
    volume_unit = s.string("volume_unit", default.volume_unit) or default.volume_unit
    if volume_unit not in quota_table.VOLUME_UNITS and ctx.ok(s.sub("volume_unit")):
        ctx.error(s.sub("volume_unit"),
                  f"must be one of {', '.join(quota_table.VOLUME_UNITS)}, got {quote(volume_unit)}")
        volume_unit = default.volume_unit
    if enabled and not accounts and ctx.ok("accounts"):
        ctx.error(s.sub("enabled"), "true, but there is no account whose quotas could be polled")
    return QuotaConfig(
        enabled=enabled,
        accounts=listed or (),
        kinds=kinds or default.kinds,
        poll_interval=poll_interval,
        rate_limit=_rate_limit(s, "rate_limit", default.rate_limit),
        request_timeout=request_timeout,
        volume_unit=volume_unit,
    )


def load_slo_config(path: str | Path, environ: Mapping[str, str] | None = None) -> slo_model.SloConfig:
    """The ``slo:`` section of a config file, validated as the exporter validates it (its problems raise
    ConfigError, each as ``file: key.path: message``), without the rest: the rules generator needs neither the
    accounts' secrets nor their environment."""
    file = Path(path)
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=StrictLoader)
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror or type(exc).__name__}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: not UTF-8 text"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_error(file, exc)]) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"{file}: config must be a mapping of sections, got {type_name(data)}"])
    ctx = Context(os.environ if environ is None else environ, file.absolute().parent)
    slo = _slo(ctx, Section(ctx, "", {"slo": data.get("slo")}, {"slo"}))
    if ctx.errors:
        raise ConfigError([f"{file}: {error}" for error in ctx.errors])
    return slo


def _one_of(names: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[-1] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


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
        raise ConfigError([f"config must be a mapping of sections, got {type_name(data)}"])
    ctx = Context(os.environ if environ is None else environ, Path.cwd() if base_dir is None else base_dir)
    root = Section(ctx, "", data, KNOWN_KEYS[""])
    accounts_at = len(ctx.errors)
    accounts = _accounts(ctx, root)
    task_kinds = {kind.name: _task_kind(ctx, root, kind) for kind in KINDS}
    if not root.data.get("accounts") and any(c.enabled for c in task_kinds.values()) and ctx.ok("accounts"):
        # Reported where the accounts' own problems would be, so the list reads in file order.
        ctx.errors.insert(
            accounts_at, f"accounts: at least one account is required while {_one_of(NAMES)} is enabled"
        )
    fmgr = _fmgr(ctx, root)
    storage = _storage(ctx, root, task_kinds, fmgr)
    slo = _slo(ctx, root)
    quota = _quota(ctx, root, accounts, storage)
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return Config(accounts=accounts, kinds=task_kinds, fmgr=fmgr, storage=storage, slo=slo, quota=quota)


# --------------------------------------------------------------------------------------------------
# Loading YAML


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
        data = yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: no arbitrary objects
        # absolute(), not resolve(): mounted secrets are often symlinks whose targets live elsewhere.
        return parse_config(data, environ=environ, base_dir=file.absolute().parent)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_error(file, exc)]) from None
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
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tzinfo):
        return str(value)
    return value


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data (dicts, lists, str, numbers), every set secret replaced by ``<secret>``."""
    result = _plain(config)
    assert isinstance(result, dict)
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key == "kinds":
            # Each task kind is a top-level section of config.yml: the dump keeps the file's shape.
            out.update(value)
        else:
            out[key] = value
    return out
