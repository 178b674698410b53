"""The metrics catalogue: every metric family the exporter serves, declared once.

A family is its name (as PromQL and docs/metrics.md write it: counters end in ``_total``), its type, its
HELP text, its label names and, for a histogram, its bucket bounds. The collectors build their families from
here (``Family.new()``), ``describe()`` reports them, the rules generator (prometheus/generate.py) takes
its metric names from here and a test checks docs/metrics.md against it. The families of a CDN task kind
(``cdnetworks_<kind>_...``) are generated from the kinds table (exporter/kinds.py).

This module needs only the standard library at import time, so that the rule and dashboard generators can
read it without the exporter's dependencies; prometheus_client is imported when a family is built.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from exporter.kinds import KINDS, TaskKind

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

PREFIX = "cdnetworks_"
_NAME = re.compile(r"cdnetworks_[a-z][a-z0-9_]*[a-z0-9]")
_LABEL = re.compile(r"[a-z][a-z0-9_]*")
# The samples a histogram serves beside its buckets' le label (the exporter's histograms have no _created).
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Family:
    """One metric family. Subclasses fix the type."""

    name: str
    help: str
    labels: tuple[str, ...] = ()
    type: ClassVar[str]

    def __post_init__(self) -> None:
        # Checked when the catalogue is imported, so a malformed entry fails every test, not a scrape.
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"{self.name!r}: not a cdnetworks_ metric name")
        if self.name.endswith("_total") != (self.type == "counter"):
            raise ValueError(f"{self.name}: counters, and only counters, end in _total")
        if not self.help.strip() or "\n" in self.help:
            raise ValueError(f"{self.name}: the help text must be one non-empty line")
        if len(set(self.labels)) != len(self.labels) or not all(_LABEL.fullmatch(lab) for lab in self.labels):
            raise ValueError(f"{self.name}: bad label names {self.labels}")
        if "le" in self.labels or "quantile" in self.labels:
            raise ValueError(f"{self.name}: le and quantile are reserved label names")

    @property
    def family_name(self) -> str:
        """The name prometheus_client gives the family (``Metric.name``): a counter's without ``_total``."""
        return self.name

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The names of the samples the family serves in the text format, as queries select them."""
        return (self.name,)

    @property
    def store_key(self) -> str:
        """The name the store keeps a persistent counter or histogram under: the metric name without its
        ``cdnetworks_`` prefix. Existing databases hold these keys, so they must not change."""
        return self.name.removeprefix(PREFIX)

    def new(self) -> Metric:
        """A new, empty family for one collection."""
        raise NotImplementedError


@dataclass(frozen=True)
class Gauge(Family):
    type: ClassVar[str] = "gauge"

    def new(self) -> GaugeMetricFamily:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


@dataclass(frozen=True)
class Counter(Family):
    type: ClassVar[str] = "counter"

    @property
    def family_name(self) -> str:
        return self.name.removesuffix("_total")

    def new(self) -> CounterMetricFamily:
        from prometheus_client.core import CounterMetricFamily

        return CounterMetricFamily(self.name, self.help, labels=self.labels)


@dataclass(frozen=True)
class Histogram(Family):
    type: ClassVar[str] = "histogram"
    buckets: tuple[float, ...] = ()  # upper bounds, ascending; +Inf is implied

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.buckets or list(self.buckets) != sorted(set(self.buckets)) or self.buckets[-1] == float("inf"):
            raise ValueError(f"{self.name}: buckets must be finite, ascending and unique")
        if self.name.endswith(_HISTOGRAM_SUFFIXES):
            raise ValueError(f"{self.name}: a histogram name must not end in a sample suffix")

    @property
    def sample_names(self) -> tuple[str, ...]:
        return tuple(self.name + suffix for suffix in _HISTOGRAM_SUFFIXES)

    def new(self) -> HistogramMetricFamily:
        from prometheus_client.core import HistogramMetricFamily

        return HistogramMetricFamily(self.name, self.help, labels=self.labels)


# --------------------------------------------------------------------------------------------------
# CDN task kinds: the same six families per kind, named and described after it.

POLLED = "Polled in the background from the CDNetworks API; a scrape never calls the vendor."
# finishTime - createTime of a prefetch/purge: seconds to hours.
TASK_DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


@dataclass(frozen=True)
class KindFamilies:
    """The families of one CDN task kind, in the order the collector serves them."""

    tasks: Gauge
    success_ratio: Gauge
    rate_ratio: Gauge
    oldest_unfinished_age: Gauge
    tasks_finished: Counter
    duration: Histogram

    def __iter__(self) -> Iterator[Family]:
        yield from (self.tasks, self.success_ratio, self.rate_ratio, self.oldest_unfinished_age,
                    self.tasks_finished, self.duration)


def kind_families(kind: TaskKind) -> KindFamilies:
    p, k = f"{PREFIX}{kind.name}", kind.noun
    return KindFamilies(
        tasks=Gauge(f"{p}_tasks", f"CDN {k} tasks created within the window, by current status. " + POLLED,
                    ("account", "window", "status")),
        success_ratio=Gauge(f"{p}_success_ratio", f"Share (0..1) of finished {k} tasks created within the window "
                            "that succeeded; absent while none finished. " + POLLED, ("account", "window")),
        rate_ratio=Gauge(f"{p}_rate_ratio", f"Mean vendor-reported completion rate (0..1) of finished {k} tasks "
                         "created within the window. " + POLLED, ("account", "window")),
        oldest_unfinished_age=Gauge(f"{p}_oldest_unfinished_age_seconds", f"Age of the oldest {k} task still "
                                    "waiting, running or of unknown status (0 when none). " + POLLED, ("account",)),
        tasks_finished=Counter(f"{p}_tasks_finished_total", f"CDN {k} tasks seen reaching a final status, each "
                               "counted once. " + POLLED, ("account", "status")),
        duration=Histogram(f"{p}_duration_seconds", f"Time from creation to finish of {k} tasks "
                           "(finishTime - createTime). " + POLLED, ("account",), buckets=TASK_DURATION_BUCKETS),
    )


CDN: dict[str, KindFamilies] = {kind.name: kind_families(kind) for kind in KINDS}


# --------------------------------------------------------------------------------------------------
# Fmgr (object storage) tasks

FMGR_TASKS = Gauge(
    "cdnetworks_fmgr_tasks", "Fmgr tasks first seen within the window, by current task code. From notifications, "
    "registrations and background polling.", ("window", "code", "state"))
FMGR_ITEMS = Gauge(
    "cdnetworks_fmgr_items", "Items (operations) of Fmgr tasks first seen within the window, by op and current item "
    "code.", ("window", "op", "code", "state"))
FMGR_SUCCESS_RATIO = Gauge(
    "cdnetworks_fmgr_success_ratio", "Share (0..1) of final Fmgr items within the window that succeeded; absent "
    "while none is final.", ("window",))
FMGR_PENDING_TASKS = Gauge(
    "cdnetworks_fmgr_pending_tasks", "Tracked Fmgr tasks whose processing is not known to be over (code 3 or later "
    "not seen yet).")
FMGR_OLDEST_PENDING_AGE = Gauge(
    "cdnetworks_fmgr_oldest_pending_age_seconds", "Time since the oldest pending Fmgr task was first seen (0 when "
    "none).")
FMGR_UNKNOWN_IDS = Gauge(
    "cdnetworks_fmgr_unknown_ids", "Tracked Fmgr ids the vendor answered 'not found' at their last poll (retried "
    "every 5 poll intervals; an id never found is given up an hour after it was registered).")
FMGR_PROCESSED_BYTES = Counter(
    "cdnetworks_fmgr_processed_bytes_total", "Bytes (fsize) of Fmgr items seen succeeding, each item counted once.",
    ("op",))
FMGR_ITEMS_FINISHED = Counter(
    "cdnetworks_fmgr_items_finished_total", "Items (operations) of Fmgr tasks seen reaching a final outcome, by op and "
    "outcome (succeeded, failed), each item counted once.", ("op", "outcome"))
FMGR_NOTIFICATIONS = Counter(
    "cdnetworks_fmgr_notifications_total", "Fmgr notifications received, by outcome: accepted, duplicate (a vendor "
    "retry, counted once), or rejected by reason.", ("result",))
FMGR_NOTIFY_FAILURES = Counter(
    "cdnetworks_fmgr_notify_failures_total", "Fmgr tasks (code 5) and items (codes 5 and 19) seen ending in a "
    "notification failure: the vendor could not deliver the job's notifyURL callback. Each counted once.",
    ("scope",))
FMGR: tuple[Family, ...] = (FMGR_TASKS, FMGR_ITEMS, FMGR_SUCCESS_RATIO, FMGR_PENDING_TASKS, FMGR_OLDEST_PENDING_AGE,
                            FMGR_UNKNOWN_IDS, FMGR_PROCESSED_BYTES, FMGR_ITEMS_FINISHED, FMGR_NOTIFICATIONS,
                            FMGR_NOTIFY_FAILURES)


# --------------------------------------------------------------------------------------------------
# The daily quotas (exporter/quotas.py, polled by exporter/polling/quota.py)

QUOTA_POLLED = "Polled in the background from the CDNetworks quota query; absent until today's first answer."
QUOTA_LIMIT = Gauge(
    "cdnetworks_quota_limit", "The vendor's daily limit of a quota (kind prefetch or purge; unit urls, bytes, "
    "directories, regexes or tags); its days start at midnight UTC+8. " + QUOTA_POLLED, ("account", "kind", "unit"))
QUOTA_REMAINING = Gauge(
    "cdnetworks_quota_remaining", "What is left today of a daily quota, as the vendor's last answer of the day said: "
    "submissions past it are refused until midnight UTC+8. " + QUOTA_POLLED, ("account", "kind", "unit"))
QUOTA_READ = Gauge(
    "cdnetworks_quota_last_read_timestamp_seconds", "Unix time of the last quota answer read successfully, the one "
    "the limit and remaining gauges show (of an earlier day, they are absent).", ("account", "kind"))
QUOTA: tuple[Family, ...] = (QUOTA_LIMIT, QUOTA_REMAINING, QUOTA_READ)


# --------------------------------------------------------------------------------------------------
# The exporter's view of the vendor APIs (exporter/metrics/health.py), and the exporter itself

API_REQUEST_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

UP = Gauge("cdnetworks_up", "1 when the last request to this vendor API succeeded, else 0.", ("account", "api"))
API_REQUESTS = Counter("cdnetworks_api_requests_total", "Requests made to the vendor APIs, by result.",
                       ("api", "result"))
API_REQUEST_DURATION = Histogram("cdnetworks_api_request_duration_seconds", "Latency of vendor API requests.",
                                 ("api",), buckets=API_REQUEST_DURATION_BUCKETS)
LAST_SUCCESSFUL_POLL = Gauge("cdnetworks_last_successful_poll_timestamp_seconds",
                             "Unix time of the last successful request to this vendor API.", ("account", "api"))
POLL_LAG = Gauge("cdnetworks_poll_lag_seconds", "How far behind now the newest point is up to which every task was "
                 "read once; grows when the rate budget cannot keep up.", ("account", "api"))
POLL_BACKFILL_REMAINING = Gauge(
    "cdnetworks_poll_backfill_remaining_seconds", "Seconds of older history (within the lookback) not yet read once; "
    "the back-fill after a first start or a long outage reads it newest first on a share of the budget.",
    ("account", "api"))
POLL_STALENESS = Gauge(
    "cdnetworks_poll_staleness_seconds", "How long ago the least recently read of the tasks shown as unfinished "
    "(within the API's reach) was last read, 0 when none is: a status change at the vendor can take this long to "
    "show. Re-reads are spaced to fit the rate budget: every poll interval when it allows, by task age when not.",
    ("account", "api"))
REPLICA_LEASES = Gauge(
    "cdnetworks_replica_leases", "1 while this replica runs the poller of (account, api), else 0: replicas sharing "
    "one store run each poller on one replica at a time (it holds the poller's lease); a single exporter runs "
    "them all.", ("account", "api"))
HEALTH: tuple[Family, ...] = (UP, API_REQUESTS, API_REQUEST_DURATION, LAST_SUCCESSFUL_POLL, POLL_LAG,
                              POLL_BACKFILL_REMAINING, POLL_STALENESS, REPLICA_LEASES)

SCRAPE_COLLECTOR_SUCCESS = Gauge(
    "cdnetworks_scrape_collector_success", "1 when this section of the scrape (a CDN task kind, fmgr, quota, health, "
    "leases) was served, 0 when it failed (a store that cannot be read) and was left out while the rest was "
    "served.", ("collector",))
BUILD_INFO = Gauge("cdnetworks_exporter_build_info", "Version of the exporter and of the Python running it; always 1.",
                   ("version", "python"))

CONFIG_LAST_RELOAD_SUCCESSFUL = Gauge(
    "cdnetworks_config_last_reload_successful", "1 when the last configuration load (start, SIGHUP or POST "
    "/-/reload) succeeded; 0 when it failed and the previous configuration is still running.")
CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP = Gauge(
    "cdnetworks_config_last_reload_success_timestamp_seconds", "Unix time when the running configuration was loaded.")
RELOAD: tuple[Family, ...] = (CONFIG_LAST_RELOAD_SUCCESSFUL, CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP)

WEB_AUTH_FAILURES = Counter(
    "cdnetworks_web_auth_failures_total", "Requests refused by basic auth, by reason: missing (no usable "
    "credentials), wrong (bcrypt said no), throttled (refused without a check while too many checks were already "
    "running or waiting).", ("reason",))
WEB_REJECTED_REQUESTS = Counter(
    "cdnetworks_web_rejected_requests_total", "Requests and connections the HTTP server refused before they reached "
    "a handler, by reason: header_too_large (431/414), body_too_large (413), timeout (408: head or body not "
    "complete in time), bad_request (400), too_many_connections (closed at once).", ("reason",))
WEB: tuple[Family, ...] = (WEB_AUTH_FAILURES, WEB_REJECTED_REQUESTS)


# --------------------------------------------------------------------------------------------------
# The whole catalogue

ALL: tuple[Family, ...] = (
    *(f for kind in KINDS for f in CDN[kind.name]), *FMGR, *QUOTA, *HEALTH, SCRAPE_COLLECTOR_SUCCESS, BUILD_INFO,
    *RELOAD, *WEB,
)
BY_NAME: dict[str, Family] = {f.name: f for f in ALL}


def _check_unique(families: tuple[Family, ...]) -> None:
    """No two families may share a name, or serve a sample named like another family (``x_count`` beside a
    histogram ``x``): one registry would refuse the second."""
    owner: dict[str, str] = {}
    for f in families:
        for name in {f.name, f.family_name, *f.sample_names}:
            if owner.setdefault(name, f.name) != f.name:
                raise ValueError(f"the metrics catalogue names {name} twice ({owner[name]}, {f.name})")


_check_unique(ALL)
