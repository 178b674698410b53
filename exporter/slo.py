"""Service level objectives over the exporter's event counters, as data.

An objective says which share of finished events must succeed over a period: finished prefetch (or purge) tasks
of an account, final Fmgr items. The ``slo:`` section of config.yml sets them (``exporter/config.py`` reads it);
``prometheus/generate.py`` writes them into ``prometheus/slo.yml`` as the Google SRE workbook's multi-window,
multi-burn-rate rules under Sloth's names. The burn-rate table below is that workbook's, for a 28 or 30 day
period.

Standard library only: the rules generator reads it without the exporter's dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.kinds import KINDS

DAY = 86400.0

# One objective per CDN task kind (its finished tasks, per account) and one for Fmgr (its final items).
NAMES: tuple[str, ...] = (*(kind.name for kind in KINDS), "fmgr")
DEFAULT_OBJECTIVES: dict[str, float] = {**{kind.name: 99.5 for kind in KINDS}, "fmgr": 99.0}
DEFAULT_PERIOD = 28 * DAY
# The period must hold the longest alert window (3d); past 90d a rule's range reads too many samples.
MIN_PERIOD, MAX_PERIOD = 3 * DAY, 90 * DAY
DEFAULT_MIN_EVENTS = 20

# The error ratio is recorded over these windows (``slo:sli_error:ratio_rate<window>``), and over the period.
WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


@dataclass(frozen=True)
class BurnRate:
    """Fire when the error ratio exceeds ``factor`` times the error budget over both windows: the long one says
    enough of the budget went, the short one that it is still going (so the alert ends soon after the burn)."""

    factor: float
    long: str
    short: str


@dataclass(frozen=True)
class Severity:
    name: str  # Sloth's sloth_severity: page or ticket
    level: str  # this project's severity label
    burn_rates: tuple[BurnRate, ...]
    # How long the condition must hold; the short window already filters blips, so this only rides out a scrape
    # or an evaluation that saw a counter step late.
    for_: str


# The workbook's table (and Sloth's google-28d and google-30d windows): a page spends 2% of a 30 day budget in
# an hour or 5% in six hours, a ticket 10% in a day or 10% in three days.
SEVERITIES: tuple[Severity, ...] = (
    Severity("page", "critical", (BurnRate(14.4, "1h", "5m"), BurnRate(6.0, "6h", "30m")), "2m"),
    Severity("ticket", "warning", (BurnRate(3.0, "1d", "2h"), BurnRate(1.0, "3d", "6h")), "15m"),
)


@dataclass(frozen=True)
class Objective:
    name: str  # an entry of NAMES
    enabled: bool = True
    objective: float = 99.5  # percent of finished events that succeed
    period: float = DEFAULT_PERIOD  # seconds
    # Events (finished tasks, final items) an alert's long window needs before the alert may fire: a handful of
    # failures among a handful of tasks is not an outage.
    min_events: int = DEFAULT_MIN_EVENTS

    @property
    def error_budget(self) -> float:
        """The share of events allowed to fail (0.005 for 99.5%), rounded so that rules read cleanly."""
        return round(1.0 - self.objective / 100.0, 12)


@dataclass(frozen=True)
class SloConfig:
    """Every objective of NAMES, in that order, enabled or not."""

    objectives: tuple[Objective, ...]

    def enabled(self) -> list[Objective]:
        return [o for o in self.objectives if o.enabled]

    def get(self, name: str) -> Objective:
        for objective in self.objectives:
            if objective.name == name:
                return objective
        raise KeyError(name)


def defaults() -> SloConfig:
    """The objectives when config.yml says nothing: each enabled, at its default objective, over 28 days."""
    return SloConfig(tuple(Objective(name, objective=DEFAULT_OBJECTIVES[name]) for name in NAMES))
