"""The vendor's daily quota queries, as data: what each one is asked at, and which fields of its answer hold the
limit and the remaining amount of which unit.

``exporter/vendor/quota.py`` speaks them on the wire, ``exporter/polling/quota.py`` polls them, the collector
serves them as ``cdnetworks_quota_limit`` and ``cdnetworks_quota_remaining`` with labels ``kind`` (the quota's
name here) and ``unit`` (a unit's name here), and the config's ``quota.kinds`` names them. Standard library only.

The fields come from the vendor's SDK models (GetPrefetchQuotaResponse, GetPurgeQuotaResponse); both queries are
signed POSTs like the task status query, and their answers carry a lowercase ``code`` where 0 means success. The
vendor counts its days in UTC+8: the quotas start over at midnight there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuotaUnit:
    unit: str  # ``unit`` label value
    limit_field: str  # the day's limit in the answer
    remaining_field: str  # what is left of it today
    volume: bool = False  # counted in the volume unit (quota.volume_unit), served in bytes


@dataclass(frozen=True)
class QuotaKind:
    name: str  # ``kind`` label value and quota.kinds entry
    path: str  # the vendor's POST endpoint
    units: tuple[QuotaUnit, ...]

    @property
    def api(self) -> str:
        """The ``api`` label of its requests (cdnetworks_api_requests_total, cdnetworks_up)."""
        return f"{self.name}_quota"


QUOTA_KINDS: tuple[QuotaKind, ...] = (
    QuotaKind("prefetch", "/ccm/prefetch/quota", (
        QuotaUnit("urls", "prefetchQuota", "remainingPrefetchQuota"),
        QuotaUnit("bytes", "prefetchVolumeQuota", "remainingPrefetchVolumeQuota", volume=True),
    )),
    QuotaKind("purge", "/ccm/purge/quota", (
        QuotaUnit("urls", "urlQuota", "remainingUrlQuota"),
        QuotaUnit("directories", "dirQuota", "remainingDirQuota"),
        QuotaUnit("regexes", "regexQuota", "remainingRegexQuota"),
        QuotaUnit("tags", "tagQuota", "remainingTagQuota"),
    )),
)
BY_NAME: dict[str, QuotaKind] = {k.name: k for k in QUOTA_KINDS}
NAMES: tuple[str, ...] = tuple(k.name for k in QUOTA_KINDS)

# The SDK does not say in which unit the volume figures come (an integer): ``quota.volume_unit`` says it. SI and
# binary multiples, in bytes.
VOLUME_UNITS: dict[str, int] = {
    "bytes": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
DEFAULT_VOLUME_UNIT = "GB"

# The vendor's day: quotas start over at midnight UTC+8.
VENDOR_DAY_OFFSET = 8 * 3600
DAY = 86400


def vendor_day_start(ts: float) -> float:
    """Unix time of the midnight (UTC+8) that began the vendor's day holding ``ts``."""
    return ts - (ts + VENDOR_DAY_OFFSET) % DAY
