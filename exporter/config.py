"""Configuration model, loading and validation.

The dataclasses below are the validated, typed form of ``config.yml`` that the rest of the exporter
uses. ``load_config`` / ``parse_config`` turn YAML into it and report *every* problem at once, each
prefixed with its key path (``prefetch.windows[2]: "2x" is not a duration``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import tzinfo

DEFAULT_CDN_ENDPOINT = "https://api.cdnetworks.com"
DEFAULT_TIMEZONE = "+08:00"
DAY = 86400.0


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
    api_key: str = field(repr=False)
    endpoint: str
    timezone: str  # as written, e.g. "+08:00" or "Asia/Shanghai"
    tz: tzinfo  # the parsed zone the API speaks
    auth: str = "basic"  # "basic" | "aksk"
    access_key: str = ""
    secret_key: str = field(default="", repr=False)


@dataclass(frozen=True)
class TaskKindConfig:
    """The ``prefetch`` or ``purge`` section."""

    enabled: bool
    windows: tuple[Window, ...]
    poll_interval: float
    lookback: float
    page_size: int
    rate_limit: RateLimit
    max_query_age: float = 3 * DAY  # the API refuses older start times
    overlap: float = 300.0  # re-read this much before the watermark (late-created tasks)
    request_timeout: float = 30.0


@dataclass(frozen=True)
class NotifyKey:
    access_key: str
    secret_key: str = field(repr=False)


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
    register_token: str | None = field(repr=False)
    notify: NotifyConfig
    rate_limit: RateLimit
    request_timeout: float = 10.0
    max_register_ids: int = 1000


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
