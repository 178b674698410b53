"""Configuration model, loading and validation.

The sections below (frozen pydantic dataclasses) are the validated, typed form of ``config.yml`` that the rest
of the exporter uses; each key is spelled once, as a field with its type, bounds and default. ``load_config``
/ ``parse_config`` turn YAML into it and report *every* problem at once, each prefixed with its key path
(``prefetch.windows[2]: "2x" is not a duration``). The field types, the section base and the translation of
pydantic's errors into those lines are in ``exporter.configschema``.

Secrets (API keys, secret keys, the registration token) come inline, from ``${ENV}`` references or
from ``*_file`` keys. They are kept out of ``repr()``, out of every error message, and are masked by
``redacted()``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)
from pydantic.dataclasses import dataclass

from exporter import quotas as quota_table
from exporter import slo as slo_model
from exporter.configschema import (
    DAY,
    HOUR,
    MINUTE,
    SECTION,
    Boolean,
    Duration,
    Int,
    PositiveDuration,
    Problem,
    Section,
    Str,
    Text,
    TimeZone,
    between,
    boolean,
    check,
    duplicates,
    duration_value,
    format_duration,
    header_safe,
    http_url,
    one_of,
    parse_duration,
    parse_timezone,
    quote,
    read_yaml,
    required,
    seconds,
    secret,
    section_keys,
    type_name,
    unknown_key,
    validate,
    with_defaults,
)
from exporter.configschema import ConfigError as ConfigError  # the error of both config files, raised from there
from exporter.kinds import KINDS, NAMES
from exporter.vendor.http import DEFAULT_MAX_RESPONSE_BYTES

DEFAULT_CDN_ENDPOINT = "https://api.cdnetworks.com"
DEFAULT_TIMEZONE = "+08:00"

SECRET_MASK = "<secret>"
MAX_RESPONSE_BYTES = 1 << 30  # the largest cap on a vendor answer the config accepts
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
MIN_LEASE = 3.0  # seconds
MAX_QUOTA_TIMEOUT = 120.0  # seconds


# --------------------------------------------------------------------------------------------------
# Field types of this config


@dataclasses.dataclass(frozen=True)
class Window:
    """A rolling window such as ``15m``: its label value as written in config, and its length."""

    name: str
    seconds: float


def windows(*texts: str) -> tuple[Window, ...]:
    return tuple(Window(text, parse_duration(text)) for text in texts)


def _windows(raw: Any) -> Any:
    """Each window of a raw list as a ``Window``, or as a ``Problem`` where it is not one."""
    if not isinstance(raw, list):
        return raw
    if not raw:
        raise ValueError("at least one window is required")
    out: list[Any] = []
    first: dict[float, int] = {}
    for i, value in enumerate(raw):
        try:
            length = duration_value(value)
        except ValueError as exc:
            out.append(value if isinstance(value, Problem) else Problem(str(exc)))
            continue
        if length < 60:
            # Windows are summed from per-minute counts: a shorter one would always read 0.
            out.append(Problem("must be at least 1m (windows are evaluated at one-minute resolution)"))
        elif first.setdefault(length, i) != i:
            out.append(Problem("duplicate window (same length as {ref})", ref=(1, first[length])))
        else:
            # The label value is the window as written, so dashboards match the config file.
            out.append(Window(value.strip() if isinstance(value, str) else format_duration(length), length))
    return tuple(out)


Windows = Annotated[tuple[Window, ...], BeforeValidator(_windows)]
Endpoint = Annotated[Text, http_url(), AfterValidator(lambda url: url.rstrip("/"))]
ResponseBytes = Annotated[Int, between(1024, MAX_RESPONSE_BYTES)]  # the cap on one vendor answer

_ACCOUNT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_PERSISTENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Paths the HTTP server serves itself; the notify receiver must not shadow them.
_RESERVED_PATHS = frozenset({"/", "/metrics", "/healthz", "/readyz"})
_RESERVED_PREFIX = "/api/"  # the bearer-token registration API


def _account_name(value: Any) -> bool:
    return isinstance(value, str) and bool(_ACCOUNT_NAME_RE.fullmatch(value))


def _persistent_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_PERSISTENT_ID_RE.fullmatch(value))


def _notify_path(path: str) -> str:
    if not path.startswith("/") or any(c.isspace() or c in "?#" for c in path):
        raise ValueError(f"{quote(path)} must be a URL path starting with / (no query or spaces)")
    if path in _RESERVED_PATHS or path.startswith(_RESERVED_PREFIX):
        raise ValueError(f"{quote(path)} is served by the exporter itself; choose another path")
    return path


# --------------------------------------------------------------------------------------------------
# The sections


@dataclass(frozen=True, config=SECTION)
class RateLimit(Section):
    """At most ``requests`` calls in any ``per`` seconds."""

    requests: Annotated[Int, between(1)]
    per: PositiveDuration


@dataclass(frozen=True, config=SECTION)
class Account(Section):
    name: Annotated[Text, check(_account_name, lambda v: f"{quote(v)} may only contain letters, digits, _ . and -")]
    auth: Annotated[Text, one_of("basic", "aksk")] = "basic"
    username: Annotated[Text, header_safe("user name", ":")] = ""  # required with auth: basic
    api_key: Text = secret("")  # required with auth: basic
    access_key: Annotated[Text, header_safe("access key")] = ""  # required with auth: aksk
    secret_key: Text = secret("")  # required with auth: aksk
    endpoint: Endpoint = DEFAULT_CDN_ENDPOINT
    timezone: TimeZone = DEFAULT_TIMEZONE  # as written, e.g. "+08:00" or "Asia/Shanghai"
    tz: tzinfo = field(init=False)  # the parsed zone the API speaks

    def __post_init__(self) -> None:
        object.__setattr__(self, "tz", parse_timezone(self.timezone))

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        auth = data.get("auth")
        auth = auth if isinstance(auth, str) and auth.strip() else "basic"  # as read, or the default
        basic = auth != "aksk"
        needed = {"username": "required (with auth: basic)", "api_key": "required (or api_key_file)"} if basic \
            else {"access_key": "required (with auth: aksk)", "secret_key": "required (or secret_key_file)"}
        for key, message in needed.items():
            if key not in data and f"{key}_file" not in data:
                data[key] = Problem(message)
        for key in ("access_key", "secret_key", "secret_key_file") if auth == "basic" else ():
            if key in data:
                data[key.removesuffix("_file")] = Problem("only used with auth: aksk", at=(1, key))
        return data


@dataclass(frozen=True, config=SECTION)
class TaskKindConfig(Section):
    """The section of one CDN task kind (an entry of ``kinds.KINDS``, named after it: ``prefetch``, ...). Its
    ``enabled`` and ``rate_limit`` default to the kind's entry there. Keys are checked in this order, so that
    ``lookback`` and ``max_page_size`` are compared with the keys they are bounded by."""

    max_query_age: Annotated[Duration, seconds(maximum=7 * DAY)] = 3 * DAY  # the API refuses older start times
    lookback: PositiveDuration = Field(default=DAY, validate_default=True)
    page_size: Annotated[Int, between(1, 10000)] = 500
    # page_size grows up to this while the budget cannot keep up
    max_page_size: Annotated[Int, between(1, 10000)] = Field(
        default_factory=lambda data: max(1000, data.get("page_size", 0)))
    enabled: Boolean = required()
    windows: Windows = windows("15m", "1h", "24h")
    poll_interval: Annotated[Duration, seconds(minimum=1.0)] = 5 * MINUTE
    rate_limit: RateLimit = required()
    overlap: Duration = 5 * MINUTE  # re-read this much before the watermark (late-created tasks)
    request_timeout: PositiveDuration = 30.0
    # The largest answer read from the API (a declared Content-Length, then the bytes as they come).
    max_response_bytes: ResponseBytes = DEFAULT_MAX_RESPONSE_BYTES

    @field_validator("lookback")
    @classmethod
    def _within_max_query_age(cls, lookback: float, info: ValidationInfo) -> float:
        limit = info.data.get("max_query_age")
        if limit is not None and lookback > limit:
            raise Problem(f"{format_duration(lookback)} is longer than {{ref}} ({format_duration(limit)});"
                          " the API refuses older start times", ref=(1, "max_query_age"))
        return lookback

    @field_validator("max_page_size")
    @classmethod
    def _not_below_page_size(cls, value: int, info: ValidationInfo) -> int:
        page_size = info.data.get("page_size")
        if page_size is not None and value < page_size:
            raise ValueError(f"{value} is smaller than page_size ({page_size})")
        return value


@dataclass(frozen=True, config=SECTION)
class NotifyKey(Section):
    # The Authorization header is "<AccessKey>:<signature>", so a colon would be ambiguous.
    access_key: Annotated[Text, header_safe("access key", ":")]
    secret_key: Text = secret()


@dataclass(frozen=True, config=SECTION)
class NotifyConfig(Section):
    path: Annotated[Text, AfterValidator(_notify_path)] = "/notify/fmgr"
    url: Annotated[Text, http_url(query=True)] | None = None  # the notifyURL given to the vendor, as signed
    max_body_bytes: Annotated[Int, between(1024, 67108864)] = 1048576
    keys: tuple[NotifyKey, ...] = ()

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        keys: Any = data.get("keys")
        for i, j in duplicates(keys, lambda k: _key_of(k, "access_key", _notify_access_key)):
            keys[i] = {**keys[i], "access_key": Problem("duplicate access key (see {ref})", ref=(2, j, "access_key"))}
        if isinstance(keys, list) and any(isinstance(k, dict) for k in keys) and "url" not in data:
            data["url"] = Problem("required when keys are set (the notifyURL given to the vendor, as signed)")
        return data


@dataclass(frozen=True, config=SECTION)
class FmgrConfig(Section):
    endpoint: Endpoint | None = None  # omit to rely on notifications only
    persistent_ids: tuple[Annotated[Str, check(_persistent_id, lambda v: (
        f"{quote(v)} is not a persistentId (1 to 128 of A-Z a-z 0-9 _ . : -)"))], ...] = ()
    notify: NotifyConfig = NotifyConfig()
    enabled: Boolean = False  # see watches()
    windows: Windows = windows("1h", "24h")
    poll_interval: Annotated[Duration, seconds(minimum=1.0)] = MINUTE
    max_task_age: PositiveDuration = 7 * DAY
    register_token: Text | None = secret(None)
    rate_limit: RateLimit = RateLimit(requests=10, per=1.0)
    request_timeout: PositiveDuration = 10.0
    max_response_bytes: ResponseBytes = DEFAULT_MAX_RESPONSE_BYTES
    max_register_ids: Annotated[Int, between(1)] = 1000
    # 0 = code 3 is final at once (no job ever has a notifyURL); at most a day, bounded like any poll.
    notify_grace: Annotated[Duration, seconds(maximum=DAY, zero=True)] = 5 * MINUTE
    confirm_delay: Annotated[Duration, seconds(minimum=1.0, maximum=HOUR)] = 30.0

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        ids: Any = data.get("persistent_ids")
        for i, j in duplicates(ids, lambda v: v if _persistent_id(v) else None):
            ids[i] = Problem("duplicate persistentId (see {ref})", ref=(1, j))
        has_ids, has_keys, enabled = cls.watches(data)
        data.setdefault("enabled", enabled)
        if enabled and "endpoint" not in data and not has_keys:
            data["enabled"] = Problem("need fmgr.endpoint to be polled (or notify.keys to be notified)",
                                      at=(1, "persistent_ids")) if has_ids else \
                Problem("true, but neither endpoint nor notify.keys is set: nothing to watch")
        return data

    @staticmethod
    def watches(data: dict[str, Any]) -> tuple[bool, bool, bool]:
        """Whether a raw ``fmgr:`` mapping has persistent ids, notify keys, and is enabled: configuring something
        to watch turns Fmgr on, an explicit ``enabled`` wins either way."""
        ids, notify = data.get("persistent_ids"), data.get("notify")
        keys = notify.get("keys") if isinstance(notify, dict) else None
        has_keys = isinstance(keys, list) and any(isinstance(k, dict) for k in keys)
        has_ids = isinstance(ids, list) and any(_persistent_id(v) for v in ids)
        return has_ids, has_keys, boolean(data.get("enabled"), data.get("endpoint") is not None or has_keys or has_ids)


@dataclass(frozen=True, config=SECTION)
class StorageConfig(Section):
    """Where the store lives: an SQLite file (``path``), or a PostgreSQL database (``url``) that several
    replicas can share."""

    # Replicas sharing the database: how long a poller's lease lasts without renewal (the failover time).
    lease_ttl: Annotated[Duration, seconds(minimum=MIN_LEASE)] = 60.0
    # postgresql://user@host:port/db; may hold a password, hence secret (``password`` is the other way to give one)
    # and never shown in a message.
    url: Annotated[Text, check(lambda v: v.startswith(POSTGRES_SCHEMES), lambda v: (
        "must be a PostgreSQL URL (postgresql://user@host:5432/database)"))] | None = secret(None)
    password: Text | None = secret(None)
    path: Text = "./data/cdnetworks-exporter.db"

    def target(self) -> str:
        """What ``repository.open_repository`` opens: the database URL, or else the SQLite path."""
        return self.url if self.url is not None else self.path

    @field_validator("password")
    @classmethod
    def _with_url(cls, password: str | None, info: ValidationInfo) -> str | None:
        if "url" in info.data and info.data["url"] is None:  # not given (rather than wrong)
            raise ValueError("only used with url (a PostgreSQL database)")
        return password

    @field_validator("path")
    @classmethod
    def _not_with_url(cls, path: str, info: ValidationInfo) -> str:
        if info.data.get("url") is not None:
            raise ValueError("conflicts with url; set only one of them (url: PostgreSQL, path: SQLite)")
        return path


def _percent(value: Any) -> float:
    """``objective``: the percent of finished events that must succeed, as a number (99.5) or a string ("99.5%")."""
    if isinstance(value, str):
        try:
            value = float(value.strip().removesuffix("%").strip())
        except ValueError:
            raise ValueError(f"{quote(value)} is not a percentage such as 99.5") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"expected a percentage such as 99.5, got {type_name(value)}")
    if not 0 < value < 100:
        raise ValueError(f"must be more than 0 and less than 100 (a percentage), got {value:g}")
    if value <= 1:
        raise ValueError(f"{value:g} is read as {value:g}%; write the objective as a percentage "
                         f"({value * 100:g} for {value * 100:g}%)")
    return float(value)


@dataclass(frozen=True, config=SECTION)
class SloObjective(Section):
    """One objective of the ``slo:`` section; its defaults are those of ``slo.Objective`` (``objective``: the
    entry of ``slo.DEFAULT_OBJECTIVES`` of its name)."""

    enabled: Boolean = slo_model.Objective.enabled
    objective: Annotated[float, BeforeValidator(_percent)] = required()
    period: Annotated[Duration, seconds(minimum=slo_model.MIN_PERIOD, maximum=slo_model.MAX_PERIOD)] = (
        slo_model.Objective.period)
    min_events: Annotated[Int, between(1)] = slo_model.Objective.min_events


@dataclass(frozen=True, config=SECTION)
class SloSection(Section):
    """The ``slo:`` section: one objective per CDN task kind and one for Fmgr items, each on by default."""

    objectives: Mapping[str, SloObjective] = field(default_factory=dict, metadata={"sections": slo_model.NAMES})

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        objectives = {name: data.pop(name, {}) for name in slo_model.NAMES}
        data["objectives"] = {name: {**o, "objective": slo_model.DEFAULT_OBJECTIVES[name]}
                              if isinstance(o, dict) and o.get("objective") is None else o
                              for name, o in objectives.items()}
        return data


def _slo(raw: Any, info: ValidationInfo) -> slo_model.SloConfig:
    """The ``slo:`` section as the model ``prometheus/generate.py`` reads (``exporter/slo.py``)."""
    section = TypeAdapter(SloSection).validate_python(raw, context=info.context)
    return slo_model.SloConfig(tuple(slo_model.Objective(name, **vars(o)) for name, o in section.objectives.items()))


Slo = Annotated[slo_model.SloConfig, PlainValidator(_slo)]


def _names(raw: Any, allowed: Sequence[str], what: str) -> Any:
    """A raw list of unique names out of ``allowed``, with a ``Problem`` in place of each that is not."""
    if not isinstance(raw, list):
        return raw
    out: list[Any] = list(raw)
    for i, value in enumerate(raw):
        if isinstance(value, str) and value not in allowed:
            expected = _one_of(list(allowed)) if allowed else "none"
            out[i] = Problem(f"{quote(value)} is not {what} (expected {expected})")
    for i, j in duplicates(out, lambda v: v if isinstance(v, str) else None):
        out[i] = Problem(f"duplicate {quote(raw[i])} (see {{ref}})", ref=(1, j))
    return out


def _quota_kinds(raw: Any) -> Any:
    kinds = _names(raw, quota_table.NAMES, "a quota kind")
    if isinstance(kinds, list) and not any(isinstance(k, str) for k in kinds):  # none, or none right
        # An entry of its own carries the list's problem, so that those of the others are reported too.
        kinds.append(Problem(f"at least one of {_one_of(quota_table.NAMES)} is required", at=(1,)))
    return kinds


@dataclass(frozen=True, config=SECTION)
class QuotaConfig(Section):
    """The daily quota queries (exporter/quotas.py): polled per account and quota kind on a budget of their own,
    off unless enabled, and then for every account or only for those listed."""

    accounts: tuple[Str, ...] = ()  # the accounts whose quotas are polled; empty: every account (see Config)
    kinds: Annotated[tuple[Str, ...], BeforeValidator(_quota_kinds)] = quota_table.NAMES
    # At most 15m: CDNetworksNotPolling fires 30m after the last successful poll of any CDN API, quotas included.
    poll_interval: Annotated[Duration, seconds(minimum=10.0, maximum=900.0)] = 300.0
    request_timeout: Annotated[Duration, seconds(maximum=MAX_QUOTA_TIMEOUT)] = 30.0  # within storage.lease_ttl
    enabled: Boolean = False
    volume_unit: Annotated[Text, one_of(*quota_table.VOLUME_UNITS)] = quota_table.DEFAULT_VOLUME_UNIT  # of answers
    rate_limit: RateLimit = RateLimit(requests=2, per=300.0)

    def pollers(self, accounts: Sequence[Account]) -> list[tuple[str, str]]:
        """(account, quota kind) of every quota poller, in account order."""
        if not self.enabled:
            return []
        return [(a.name, kind) for a in accounts if not self.accounts or a.name in self.accounts
                for kind in self.kinds]


@dataclass(frozen=True, config=SECTION)
class Config(Section):
    accounts: tuple[Account, ...] = ()
    # Every kind of kinds.KINDS by name, in table order, enabled or not; each is a top-level section of config.yml.
    # A plain dict, typed read-only, so that a Config still copies and pickles; left out of the hash (a dict has
    # none) so that it stays hashable too.
    kinds: Mapping[str, TaskKindConfig] = field(default_factory=dict, hash=False, metadata={"sections": NAMES})
    fmgr: FmgrConfig = FmgrConfig()
    storage: StorageConfig = StorageConfig()
    # Read by prometheus/generate.py (the SLO rules), not by the running exporter; validated with the rest.
    slo: Slo = field(default_factory=slo_model.defaults)
    quota: QuotaConfig = QuotaConfig()

    def task_kinds(self) -> list[tuple[str, TaskKindConfig]]:
        """The enabled CDN task kinds and their settings, in the order of ``kinds.KINDS``."""
        return [(name, c) for name, c in self.kinds.items() if c.enabled]

    def pollers(self) -> list[tuple[str, str]]:
        """(account, api) of every poller this configuration runs: each account's enabled task kinds, and the
        Fmgr status poller (account "") when Fmgr has an endpoint to poll."""
        return ([(a.name, kind) for a in self.accounts for kind, _ in self.task_kinds()]
                + ([("", "fmgr")] if self.fmgr.enabled and self.fmgr.endpoint else []))

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        accounts: Any = data.get("accounts")
        for i, j in duplicates(accounts, lambda a: _key_of(a, "name", _account_name)):
            name = accounts[i]["name"]
            accounts[i] = {**accounts[i], "name": Problem(f"duplicate account name {quote(name)} (see {{ref}})",
                                                          ref=(2, j))}
        timeouts = cls._kinds(data)
        if accounts in (None, []) and timeouts:
            # Reported where the accounts' own problems would be, so the list reads in file order.
            data["accounts"] = Problem(f"at least one account is required while {_one_of(NAMES)} is enabled")
        fmgr = data.get("fmgr", {})
        if isinstance(fmgr, dict) and FmgrConfig.watches(fmgr)[2]:
            timeouts.append(_Timeout(_seconds(fmgr, "request_timeout", FmgrConfig.request_timeout)
                                     or FmgrConfig.request_timeout, fmgr if fmgr.get("request_timeout") else None))
        lease = cls._lease(data, max(timeouts, key=lambda t: t.seconds, default=_Timeout(0.0, None)))
        if isinstance(data.get("quota"), dict):
            cls._quota(data, accounts, lease)
        return data

    @staticmethod
    def _kinds(data: dict[str, Any]) -> list[_Timeout]:
        """Each task kind's section with the kind's own defaults, in ``kinds``; the request timeouts of the enabled
        ones (of an invalid one, its default, as it would run)."""
        kinds, timeouts = {}, []
        for kind in KINDS:
            raw = data.pop(kind.name, {})
            if not isinstance(raw, dict):
                timeouts += [_Timeout(TaskKindConfig.request_timeout, None)] if kind.enabled else []
            else:
                budget = RateLimit(requests=kind.budget_requests, per=kind.budget_seconds)
                given = {k: v for k, v in raw.items() if v is not None}
                raw = {**raw, "enabled": given.get("enabled", kind.enabled),
                       "rate_limit": with_defaults(given.get("rate_limit", budget), budget)}
                if boolean(raw["enabled"], kind.enabled):
                    timeouts.append(_Timeout(_seconds(raw, "request_timeout", TaskKindConfig.request_timeout)
                                             or TaskKindConfig.request_timeout,
                                             raw if given.get("request_timeout") is not None else None))
            kinds[kind.name] = raw
        # `kinds` is a field, not a key of the file
        data["kinds"] = Problem(unknown_key("kinds", section_keys(Config))) if "kinds" in data else kinds
        return timeouts

    @staticmethod
    def _lease(data: dict[str, Any], timeout: _Timeout) -> float | None:
        """``storage.lease_ttl`` if it is valid and fits the longest request timeout: a holder sends only while its
        lease outlasts the request, and renews every quarter of the lease, so the longest request timeout must fit
        in three quarters of it (less a second of margin each side). When the lease is the default and that
        timeout was set, the timeout is the key to blame."""
        storage = data.get("storage", {})
        lease = _seconds(storage, "lease_ttl", StorageConfig.lease_ttl) if isinstance(storage, dict) else None
        longest = timeout.seconds
        if lease is None or lease < MIN_LEASE:
            return None
        if 0.75 * lease - 1.0 > longest + 1.0:
            return lease
        if timeout.section is not None and not (isinstance(storage, dict) and storage.get("lease_ttl") is not None):
            timeout.section["request_timeout"] = Problem(
                f"{format_duration(longest)} does not fit storage.lease_ttl ({format_duration(lease)}, the default); "
                f"use at most {format_duration(max(0.0, math.floor(0.75 * lease - 2.0) - 1.0))}, or set "
                f"storage.lease_ttl to at least {format_duration(math.floor((longest + 2.0) / 0.75) + 1)}")
            return None
        data["storage"] = {**storage, "lease_ttl": Problem(
            f"{format_duration(lease)} is too short for a request_timeout of {format_duration(longest)}; use at "
            f"least {format_duration(math.floor((longest + 2.0) / 0.75) + 1)}")}
        return None

    @staticmethod
    def _quota(data: dict[str, Any], accounts: Any, lease: float | None) -> None:
        """``quota.accounts`` are configured accounts; when enabled, there is one, and the requests fit the lease."""
        names = [a["name"] for a in accounts or () if isinstance(a, dict) and isinstance(a.get("name"), str)
                 and a["name"].strip()]
        quota = data["quota"] = {**data["quota"]}
        quota["accounts"] = _names(quota.get("accounts"), names, "a configured account")
        if not boolean(quota.get("enabled"), QuotaConfig.enabled):
            return
        if accounts in (None, []):
            quota["enabled"] = Problem("true, but there is no account whose quotas could be polled")
        timeout = _seconds(quota, "request_timeout", QuotaConfig.request_timeout)
        if lease and timeout and timeout <= MAX_QUOTA_TIMEOUT and 0.75 * lease - 1.0 <= timeout + 1.0:
            quota["request_timeout"] = Problem(
                f"{format_duration(timeout)} does not fit storage.lease_ttl ({format_duration(lease)}); use at most "
                f"{format_duration(max(0.0, math.floor(0.75 * lease - 2.0) - 1.0))}")


class _Timeout(NamedTuple):
    """A request timeout as the lease rule compares it: its seconds, and the raw section that set it (None when it
    is the default), where a problem with it is reported."""

    seconds: float
    section: dict[str, Any] | None


def _seconds(data: dict[str, Any], key: str, default: float) -> float | None:
    """A raw duration that must be positive, as its key reads it: ``default`` when absent, None when invalid."""
    try:
        value = default if data.get(key) is None else duration_value(data[key])
    except ValueError:
        return None
    return value if value > 0 else None


def _key_of(item: Any, key: str, valid: Callable[[Any], bool]) -> Any:
    """``item[key]`` of a raw list entry, if the entry is a mapping and that value is ``valid``; else None."""
    return item[key] if isinstance(item, dict) and valid(item.get(key)) else None


def _notify_access_key(value: Any) -> bool:
    return isinstance(value, str) and bool(re.fullmatch(r"[^\s:]+", value))


def _one_of(names: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return names[-1] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


KNOWN_KEYS: Mapping[str, frozenset[str]] = {
    "": section_keys(Config), "accounts[]": section_keys(Account), **dict.fromkeys(NAMES, section_keys(TaskKindConfig)),
    "rate_limit": section_keys(RateLimit), "fmgr": section_keys(FmgrConfig), "fmgr.notify": section_keys(NotifyConfig),
    "fmgr.notify.keys[]": section_keys(NotifyKey), "storage": section_keys(StorageConfig),
    "slo": section_keys(SloSection), **{f"slo.{name}": section_keys(SloObjective) for name in slo_model.NAMES},
    "quota": section_keys(QuotaConfig),
}  # fmt: skip
"""Every key the config accepts, by section (one section per entry of ``kinds.KINDS``, all with the same keys)."""


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
    return validate(Config, data, base_dir=Path.cwd() if base_dir is None else base_dir,
                    environ=os.environ if environ is None else environ)


# --------------------------------------------------------------------------------------------------
# Loading YAML


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML config file; relative ``*_file`` paths are relative to its directory."""
    file = Path(path)
    try:
        # absolute(), not resolve(): mounted secrets are often symlinks whose targets live elsewhere.
        return parse_config(read_yaml(file), environ=environ, base_dir=file.absolute().parent)
    except RecursionError:
        # PyYAML and the validator both recurse; a hostile file must be an error, not a crash.
        raise ConfigError([f"{file}: nested too deeply"]) from None


@dataclass(frozen=True, config=SECTION)
class _SloFile(Section):
    slo: Slo = field(default_factory=slo_model.defaults)


def load_slo_config(path: str | Path, environ: Mapping[str, str] | None = None) -> slo_model.SloConfig:
    """The ``slo:`` section of a config file, validated as the exporter validates it (its problems raise
    ConfigError, each as ``file: key.path: message``), without the rest: the rules generator needs neither the
    accounts' secrets nor their environment."""
    file = Path(path)
    data = read_yaml(file)
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError([f"{file}: config must be a mapping of sections, got {type_name(data)}"])
    try:
        return validate(_SloFile, {"slo": (data or {}).get("slo")}, base_dir=file.absolute().parent,
                        environ=os.environ if environ is None else environ).slo
    except ConfigError as exc:
        raise ConfigError([f"{file}: {error}" for error in exc.errors]) from None


# --------------------------------------------------------------------------------------------------
# Dumping


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if "sections" in f.metadata:  # each task kind is a top-level section: the dump keeps the file's shape
                out.update(_plain(item))
            else:
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
    return result
