#!/usr/bin/env python3
"""Generate the Grafana dashboards for cdnetworks-exporter (pure Python, standard library only).

The JSON files next to this script are its output and are committed, so Grafana users never need to
run it; a test checks that regenerating them changes nothing. Edit this file, then run::

    python dashboards/generate.py            # rewrite dashboards/*.json and the docs panel tables
    python dashboards/generate.py --check    # exit 1 when a committed file is stale

Conventions every dashboard follows: a ``${datasource}`` variable (no datasource uid is hard-coded), a
``job`` variable (the scrape job of the exporter), ``account`` / ``window`` variables from
``label_values``, a fixed ``uid``, and a one-line description on every panel saying what a bad value
means. Threshold lines are the alert thresholds, read from ``prometheus/generate.py``'s defaults, and the
panel reference tables in ``docs/dashboards-and-alerts.md`` are rewritten on each run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
TAG = "cdnetworks"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Label matchers the panels share.
FAILED_TASK = 'status="failure"'
UNFINISHED_TASK = 'status=~"wait|run"'
FAILED_ITEM = 'state=~"failed.*"'
ACCEPTED = 'result=~"accepted|duplicate"'
REJECTED = 'result=~"bad_signature|unknown_key|malformed|too_large"'
TASK_SCOPE = 'scope="task"'
RATE_LIMITED = 'result="rate_limited"'


def _load_rules_generator() -> Any:
    """prometheus/generate.py: the alert thresholds (so that dashboard threshold lines and alerts never
    disagree) and the helpers that keep the docs' reference tables current."""
    path = HERE.parent / "prometheus" / "generate.py"
    spec = importlib.util.spec_from_file_location("cdnetworks_rules_generate", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


RULES = _load_rules_generator()
ALERTS = RULES.Settings()
M = RULES.M  # the metrics catalogue (exporter/metrics/catalogue.py), as the rules generator reads it
CDN_KINDS = tuple(kind.name for kind in RULES.KINDS)  # exporter/kinds.py, as the rules generator reads it
CDN_KIND_RE = "|".join(CDN_KINDS)


def sel(*matchers: str, account: bool = False, window: bool = False, fmgr_account: bool = False) -> str:
    """A label selector on the dashboard variables: ``{job=~"$job", account=~"$account", ...}``.

    ``fmgr_account`` also keeps the Fmgr series, whose account label is empty.
    """
    parts = ['job=~"$job"']
    if account:
        parts.append('account=~"$account"')
    if fmgr_account:
        parts.append('account=~"$account|"')
    if window:
        parts.append('window=~"$window"')
    parts.extend(matchers)
    return "{" + ", ".join(parts) + "}"


# --------------------------------------------------------------------------------------------------
# Several replicas (the job's targets) sharing one store: the same rules as prometheus/generate.py's. The job
# variable selects one job, so the results need no job label.

# Panels about each replica itself: one series per replica (its instance), however many there are. Every other
# panel shows the same for one exporter as for several replicas sharing its store.
PER_REPLICA_PANELS = frozenset({
    "Exporter scrape", "Version", "Config reload", "Scrape size", "Scrape duration", "Pollers per replica",
    "Scrape sections served",
})


def shared(family: Any, selector: str) -> str:
    """``max by (<own labels>) (family{...})``: a series read from the shared store, once however many
    replicas serve it."""
    return RULES.dedup(family, f"{family.name}{selector}", keep=())


def shared_counter(function: str, family: Any, selector: str, window: str) -> str:
    """The max over replicas of each replica's ``rate`` or ``increase`` of a shared counter."""
    return RULES.dedup(family, f"{function}({family.name}{selector}[{window}])", keep=())


def held(family: Any, selector: str) -> str:
    """A per-poller series of the replicas running that poller only (all of them for a single exporter)."""
    return f"{family.name}{selector} unless on ({RULES.POLLER_JOIN}) {M.REPLICA_LEASES.name}{sel()} == 0"


# --------------------------------------------------------------------------------------------------
# Panels


def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "instant": instant,
        "legendFormat": legend or "__auto",
        "range": not instant,
    }


def steps(base: str, *rest: tuple[float, str]) -> dict[str, Any]:
    """Absolute thresholds: ``base`` colour below the first value, then each (value, colour)."""
    return {
        "mode": "absolute",
        "steps": [{"color": base, "value": None}, *({"color": c, "value": v} for v, c in rest)],
    }


GOOD_RATIO = steps("red", (ALERTS.cdn_success_ratio_min, "green"))
GOOD_FMGR_RATIO = steps("red", (ALERTS.fmgr_success_ratio_min, "green"))
NEUTRAL = steps("green")
UP_MAPPING = [{"type": "value", "options": {
    "0": {"color": "red", "index": 0, "text": "failing"},
    "1": {"color": "green", "index": 1, "text": "ok"},
}}]


def _field_config(
    unit: str, thresholds: dict[str, Any], *, min_: float | None, max_: float | None,
    mappings: list[dict[str, Any]] | None = None, custom: dict[str, Any] | None = None,
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "color": {"mode": "palette-classic" if custom is not None else "thresholds"},
        "mappings": mappings or [],
        "thresholds": thresholds,
        "unit": unit,
    }
    if custom is not None:
        defaults["custom"] = custom
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    return {"defaults": defaults, "overrides": []}


def timeseries(
    title: str, description: str, targets: list[dict[str, Any]], *, unit: str = "short",
    stack: bool = False, thresholds: dict[str, Any] | None = None, min_: float | None = 0,
    max_: float | None = None,
) -> dict[str, Any]:
    custom = {
        "drawStyle": "line",
        "fillOpacity": 60 if stack else 10,
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        # A threshold is drawn only when it is an alert threshold (a base-only step list draws nothing).
        "thresholdsStyle": {"mode": "dashed" if thresholds else "off"},
    }
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": _field_config(unit, thresholds or NEUTRAL, min_=min_, max_=max_, custom=custom),
        "options": {
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str, description: str, targets: list[dict[str, Any]], *, unit: str = "short",
    thresholds: dict[str, Any] = NEUTRAL, mappings: list[dict[str, Any]] | None = None,
    text_mode: str = "auto", min_: float | None = None, max_: float | None = None,
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": _field_config(unit, thresholds, min_=min_, max_=max_, mappings=mappings),
        "options": {
            "colorMode": "value",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": text_mode,
        },
    }


def bargauge(
    title: str, description: str, targets: list[dict[str, Any]], *, unit: str = "short",
    thresholds: dict[str, Any] = NEUTRAL, min_: float | None = 0, max_: float | None = None,
) -> dict[str, Any]:
    return {
        "type": "bargauge",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": _field_config(unit, thresholds, min_=min_, max_=max_),
        "options": {
            "displayMode": "gradient",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "valueMode": "color",
        },
    }


def state_timeline(title: str, description: str, targets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "state-timeline",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": _field_config("short", steps("red", (1, "green")), min_=None, max_=None,
                                     mappings=UP_MAPPING, custom={"fillOpacity": 80, "lineWidth": 0}),
        "options": {
            "alignValue": "left",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "mergeValues": True,
            "rowHeight": 0.9,
            "showValue": "auto",
            "tooltip": {"mode": "single", "sort": "none"},
        },
    }


@dataclass
class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping to a new line when full."""

    panels: list[dict[str, Any]] = field(default_factory=list)
    x: int = 0
    y: int = 0
    line_height: int = 0

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.line_height = max(self.line_height, h)

    def row(self, title: str) -> None:
        """A section header: a row panel (layout only, no queries)."""
        self.newline()
        self.panels.append({
            "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
        })
        self.y += 1

    def newline(self) -> None:
        self.y += self.line_height
        self.x = 0
        self.line_height = 0


# --------------------------------------------------------------------------------------------------
# Template variables


def datasource_variable() -> dict[str, Any]:
    return {
        "current": {}, "hide": 0, "includeAll": False, "label": "Data source", "multi": False,
        "name": "datasource", "options": [], "query": "prometheus", "refresh": 1, "regex": "",
        "skipUrlSync": False, "type": "datasource",
    }


def query_variable(
    name: str, label: str, query: str, *, multi: bool, default: str | None = None
) -> dict[str, Any]:
    var: dict[str, Any] = {
        "current": {"selected": True, "text": default, "value": default} if default else {},
        "datasource": DATASOURCE,
        "definition": query,
        "hide": 0,
        "includeAll": multi,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change: accounts and windows come and go with the config
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }
    return var


JOB_VAR = query_variable("job", "Job", "label_values(cdnetworks_exporter_build_info, job)", multi=False)
ACCOUNT_VAR = query_variable(
    "account", "Account", 'label_values(cdnetworks_up{job=~"$job", api=~"' + CDN_KIND_RE + '"}, account)', multi=True
)


def window_variable(metric_selector: str, *, multi: bool) -> dict[str, Any]:
    return query_variable(
        "window", "Window", f"label_values({metric_selector}, window)", multi=multi,
        default=None if multi else ALERTS.ratio_window,
    )


def dashboard(
    uid: str, title: str, description: str, variables: list[dict[str, Any]], layout: Layout
) -> dict[str, Any]:
    for number, panel in enumerate(layout.panels, start=1):
        panel["id"] = number
        if panel["type"] != "row":
            panel["datasource"] = DATASOURCE
            for ref, tgt in zip("ABCDEFGH", panel["targets"], strict=False):
                tgt["refId"] = ref
                problems = RULES.replica_problems(tgt["expr"])
                if problems:
                    raise ValueError(f"{title} / {panel['title']}: {'; '.join(problems)}")
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{
            "asDropdown": False, "icon": "external link", "includeVars": False, "keepTime": True,
            "tags": [TAG], "targetBlank": False, "title": "CDNetworks dashboards", "type": "dashboards",
        }],
        "panels": layout.panels,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG],
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# --------------------------------------------------------------------------------------------------
# Dashboards


def exporter_scrape_stat() -> dict[str, Any]:
    return stat(
        "Exporter scrape", "Prometheus's scrape of the exporter: DOWN means every other panel is stale.",
        [target(f"up{sel()}", "{{instance}}", instant=True)],
        thresholds=steps("red", (1, "green")),
        mappings=[{"type": "value", "options": {
            "0": {"color": "red", "index": 0, "text": "DOWN"}, "1": {"color": "green", "index": 1, "text": "UP"},
        }}],
    )


def overview() -> dict[str, Any]:
    lay = Layout()
    lay.row("Exporter at a glance")
    lay.add(exporter_scrape_stat(), 6, 4)
    lay.add(stat(
        "Vendor APIs", "Worst last poll per vendor API over the selected accounts: failing means the "
        "exporter serves old data for at least one account.",
        [target(f"min by (api) ({held(M.UP, sel(fmgr_account=True))})", "{{api}}", instant=True)],
        thresholds=steps("red", (1, "green")), mappings=UP_MAPPING,
    ), 6, 4)
    lay.add(stat(
        "Longest time since a successful poll", "Worst account per API: far above the poll interval means "
        "polls keep failing or the poller is stuck.",
        [target(
            f"max by (api) (time() - ({held(M.LAST_SUCCESSFUL_POLL, sel(fmgr_account=True))}))",
            "{{api}}", instant=True,
        )],
        unit="s", thresholds=steps("green", (ALERTS.not_polling_seconds, "red")),
    ), 6, 4)
    lay.add(stat(
        "Pending Fmgr tasks", "Tracked Fmgr tasks not final yet: a number that only grows means tasks "
        "are stuck at the vendor or their ids are wrong.",
        [target(shared(M.FMGR_PENDING_TASKS, sel()), "pending", instant=True)],
    ), 6, 4)

    lay.row("Success ratios")
    for kind in CDN_KINDS:
        lay.add(bargauge(
            f"{kind.capitalize()} success ratio",
            f"Share of finished {kind} tasks that succeeded, per account and window: under "
            f"{ALERTS.cdn_success_ratio_min:.0%} (the alert threshold) too many {kind} tasks fail.",
            [target(shared(M.CDN[kind].success_ratio, sel(account=True, window=True)),
                    "{{account}} {{window}}", instant=True)],
            unit="percentunit", thresholds=GOOD_RATIO, max_=1,
        ), 8, 7)
    lay.add(bargauge(
        "Fmgr success ratio",
        f"Share of final Fmgr items that succeeded, per window: under {ALERTS.fmgr_success_ratio_min:.0%} "
        "(the alert threshold) object operations fail often.",
        [target(shared(M.FMGR_SUCCESS_RATIO, sel(window=True)), "{{window}}", instant=True)],
        unit="percentunit", thresholds=GOOD_FMGR_RATIO, max_=1,
    ), 8, 7)

    slo_row(lay)
    quota_row(lay)

    lay.row("Failures and backlog")
    lay.add(timeseries(
        "Failed CDN tasks", "Tasks created in the window that ended in failure: a rising line means the "
        "CDN cannot fetch or purge; see the CDN tasks dashboard.",
        [target(f"sum by (account, window) ({shared(M.CDN[kind].tasks, sel(FAILED_TASK, account=True, window=True))})",
                f"{kind} {{{{account}}}} {{{{window}}}}") for kind in CDN_KINDS],
    ), 12, 8)
    lay.add(timeseries(
        "Failed Fmgr items", "Items of Fmgr tasks in the window that failed, by operation: a rising line "
        "means object operations fail; see the Fmgr dashboard.",
        [target(f"sum by (window, op) ({shared(M.FMGR_ITEMS, sel(FAILED_ITEM, window=True))})",
                "{{op}} {{window}}")],
    ), 12, 8)
    lay.add(timeseries(
        "Unfinished CDN tasks", "Tasks created in the window still waiting or running: a growing backlog "
        "means the CDN is slow to process them.",
        [target(f"sum by (account, window) "
                f"({shared(M.CDN[kind].tasks, sel(UNFINISHED_TASK, account=True, window=True))})",
                f"{kind} {{{{account}}}} {{{{window}}}}") for kind in CDN_KINDS],
    ), 12, 8)
    lay.add(timeseries(
        "Oldest unfinished task", "Age of the oldest task that has not finished: above the dashed line "
        "(the alert threshold) a task is stuck.",
        [
            *(target(shared(M.CDN[kind].oldest_unfinished_age, sel(account=True)),
                     f"{kind} {{{{account}}}}") for kind in CDN_KINDS),
            target(shared(M.FMGR_OLDEST_PENDING_AGE, sel()), "fmgr"),
        ],
        unit="s", thresholds=steps("green", (ALERTS.stuck_seconds, "red")),
    ), 12, 8)
    return dashboard(
        "cdnetworks-overview", "CDNetworks / Overview",
        "Did prefetches, purges and Fmgr jobs succeed, how much error budget and daily quota is left, what is "
        "pending, and is the exporter healthy.",
        [JOB_VAR, ACCOUNT_VAR,
         window_variable('{__name__=~"cdnetworks_(' + CDN_KIND_RE + '|fmgr)_tasks", job=~"$job"}', multi=True)],
        lay,
    )


def slo_row(lay: Layout) -> None:
    """The SLOs of prometheus/slo.yml (empty where it is not loaded): the budget left, and how fast it burns."""
    lay.row("SLOs: error budgets")
    slo_sel = sel('sloth_service="cdnetworks"', fmgr_account=True)
    page = RULES.slo_model.SEVERITIES[0]
    lay.add(bargauge(
        "Error budget left",
        "Share of each SLO's error budget (the failures its objective allows over its period, 28d by default) not "
        "spent yet, per SLO and account: at 0 the objective is missed for the period; below 0 it was missed by that "
        "much (prometheus/slo.yml).",
        [target(f"slo:period_error_budget_remaining:ratio{slo_sel}", "{{sloth_slo}} {{account}}", instant=True)],
        unit="percentunit", thresholds=steps("red", (0, "orange"), (0.25, "green")), min_=None, max_=1,
    ), 8, 8)
    lay.add(timeseries(
        "Burn rate",
        "How many times faster than the objective allows each SLO spends its budget, over the page alert's windows "
        f"(1h and 6h): 1 spends it exactly over the period; above {page.burn_rates[1].factor:g} (6h) or "
        f"{page.burn_rates[0].factor:g} (1h), with the short window still failing, the SLO pages.",
        [target(f"slo:sli_error:ratio_rate{burn.long}{slo_sel}\n/ ignoring (sloth_window)\n"
                f"slo:error_budget:ratio{slo_sel}", f"{{{{sloth_slo}}}} {{{{account}}}} {burn.long}")
         for burn in page.burn_rates],
        thresholds=steps("green", (page.burn_rates[1].factor, "orange"), (page.burn_rates[0].factor, "red")),
    ), 16, 8)


def quota_row(lay: Layout) -> None:
    """The daily quotas (when the exporter polls them): what is left now, and what the pace leaves at midnight."""
    lay.row("Daily quotas")
    quota_sel = sel(account=True)
    limit = f"{shared(M.QUOTA_LIMIT, quota_sel)} > 0"
    lay.add(bargauge(
        "Daily quota left",
        "Share of each daily quota (per account, prefetch or purge, and unit) not used yet today: at 0 the vendor "
        "refuses new tasks of that kind until midnight UTC+8, when it starts the quotas over. Empty where quota "
        "polling is off.",
        [target(f"{shared(M.QUOTA_REMAINING, quota_sel)}\n/\n{limit}", "{{account}} {{kind}} {{unit}}",
                instant=True)],
        unit="percentunit", thresholds=steps("red", (0.1, "orange"), (0.25, "green")), max_=1,
    ), 8, 8)
    predicted = RULES.dedup(M.QUOTA_REMAINING, f"predict_linear({M.QUOTA_REMAINING.name}{quota_sel}"
                            f"[{ALERTS.quota_trend_window}], {RULES.TO_VENDOR_MIDNIGHT})", keep=())
    lay.add(timeseries(
        "Quota left at midnight UTC+8 at this pace",
        f"Share of each daily quota the pace of the last {ALERTS.quota_trend_window} leaves at the end of the "
        "vendor's day: below the dashed line (0) the quota runs out before midnight UTC+8 "
        "(CDNetworksQuotaRunningOut).",
        [target(f"{predicted}\n/\n{limit}", "{{account}} {{kind}} {{unit}}")],
        unit="percentunit", thresholds=steps("red", (0, "green")), min_=None, max_=1,
    ), 16, 8)


def cdn_tasks() -> dict[str, Any]:
    lay = Layout()
    for kind in CDN_KINDS:
        lay.row(f"{kind.capitalize()} tasks")
        lay.add(timeseries(
            f"{kind.capitalize()} tasks by status",
            f"{kind.capitalize()} tasks created in the window by current status: a growing failure band "
            "means failing tasks, growing wait/run bands mean the CDN is slow.",
            [target(f"sum by (status) ({shared(M.CDN[kind].tasks, sel(account=True, window=True))})", "{{status}}")],
            stack=True,
        ), 12, 8)
        lay.add(timeseries(
            f"{kind.capitalize()} success ratio",
            f"Share of finished {kind} tasks in the window that succeeded: under the dashed line "
            "(the alert threshold) too many fail.",
            [target(shared(M.CDN[kind].success_ratio, sel(account=True, window=True)), "{{account}}")],
            unit="percentunit", thresholds=GOOD_RATIO, max_=1,
        ), 6, 8)
        lay.add(timeseries(
            f"{kind.capitalize()} vendor rate",
            f"Mean completion rate the vendor reports for finished {kind} tasks: under 100% tasks "
            "finished only partly.",
            [target(shared(M.CDN[kind].rate_ratio, sel(account=True, window=True)), "{{account}}")],
            unit="percentunit", max_=1,
        ), 6, 8)
        lay.add(timeseries(
            f"{kind.capitalize()} duration percentiles",
            f"Create-to-finish time of {kind} tasks finished in the last hour: rising percentiles mean "
            "the CDN is slowing down.",
            [target(f"job_account_quantile:cdnetworks_{kind}_duration_seconds:histogram_quantile"
                    f"{sel(account=True)}", "{{account}} q{{quantile}}")],
            unit="s",
        ), 8, 8)
        lay.add(timeseries(
            f"{kind.capitalize()} oldest unfinished task",
            f"Age of the oldest {kind} task still waiting or running: above the dashed line (the alert "
            "threshold) it is stuck.",
            [target(shared(M.CDN[kind].oldest_unfinished_age, sel(account=True)), "{{account}}")],
            unit="s", thresholds=steps("green", (ALERTS.stuck_seconds, "red")),
        ), 8, 8)
        lay.add(timeseries(
            f"{kind.capitalize()} tasks finished per hour",
            f"{kind.capitalize()} tasks that finished in the last hour, by final status: failures "
            "climbing against successes is the early sign of a falling success ratio.",
            [target(f"sum by (account, status) (job_account_status:cdnetworks_{kind}_tasks_finished:increase1h"
                    f"{sel(account=True)})", "{{account}} {{status}}")],
        ), 8, 8)
    return dashboard(
        "cdnetworks-cdn-tasks", "CDNetworks / CDN tasks",
        "Prefetch and purge tasks: status over time, success ratio, vendor rate, durations, stuck tasks.",
        [JOB_VAR, ACCOUNT_VAR,
         window_variable('{__name__=~"cdnetworks_(' + CDN_KIND_RE + ')_tasks", job=~"$job"}', multi=False)],
        lay,
    )


def fmgr() -> dict[str, Any]:
    lay = Layout()
    lay.row("Fmgr at a glance")
    lay.add(stat(
        "Success ratio", "Share of final items in the window that succeeded: red is under the alert "
        "threshold.",
        [target(shared(M.FMGR_SUCCESS_RATIO, sel(window=True)), "{{window}}", instant=True)],
        unit="percentunit", thresholds=GOOD_FMGR_RATIO, min_=0, max_=1,
    ), 5, 4)
    lay.add(stat(
        "Pending tasks", "Tracked tasks whose processing is not over yet: a number that only grows means "
        "tasks are stuck.",
        [target(shared(M.FMGR_PENDING_TASKS, sel()), "pending", instant=True)],
    ), 5, 4)
    lay.add(stat(
        "Oldest pending task", "How long the oldest non-final task has been tracked: red is above the "
        "alert threshold.",
        [target(shared(M.FMGR_OLDEST_PENDING_AGE, sel()), "oldest", instant=True)],
        unit="s", thresholds=steps("green", (ALERTS.stuck_seconds, "red")),
    ), 5, 4)
    lay.add(stat(
        f"Notification failures ({ALERTS.notify_failure_window})", "Tasks that ended in code 5 in the "
        "last hour: the vendor gave up delivering their notifyURL callback (CDNetworksFmgrNotificationsFailing).",
        [target("sum(" + shared_counter("increase", M.FMGR_NOTIFY_FAILURES, sel(TASK_SCOPE),
                                        ALERTS.notify_failure_window) + ")", "failed", instant=True)],
        thresholds=steps("green", (1, "red")),
    ), 5, 4)
    lay.add(stat(
        "Notifications rejected (1h)", "Vendor notifications refused in the last hour: anything above "
        "0 is a wrong notify key, a forgery or a broken sender.",
        [target(f"sum({shared_counter('increase', M.FMGR_NOTIFICATIONS, sel(REJECTED), '1h')})",
                "rejected", instant=True)],
        thresholds=steps("green", (1, "red")),
    ), 4, 4)

    lay.row("Tasks and items")
    lay.add(timeseries(
        "Tasks by state", "Tasks first seen in the window by state: growing pending/processing means a "
        "slow vendor, notifying the notification phase (code 4), notify_failed a callback the vendor could "
        "not deliver.",
        [target(f"sum by (state) ({shared(M.FMGR_TASKS, sel(window=True))})", "{{state}}")], stack=True,
    ), 12, 8)
    lay.add(timeseries(
        "Items by state", "Items of tasks in the window by state: failed* states are failed operations.",
        [target(f"sum by (state) ({shared(M.FMGR_ITEMS, sel(window=True))})", "{{state}}")], stack=True,
    ), 12, 8)
    lay.add(timeseries(
        "Items by operation", "Items of tasks in the window by operation (fops): shows which kind of work "
        "the failures and backlog belong to.",
        [target(f"sum by (op) ({shared(M.FMGR_ITEMS, sel(window=True))})", "{{op}}")], stack=True,
    ), 8, 8)
    lay.add(timeseries(
        "Failed items by operation", "Failed items of tasks in the window by operation: a rising line "
        "names the operation that fails.",
        [target(f"sum by (op) ({shared(M.FMGR_ITEMS, sel(FAILED_ITEM, window=True))})", "{{op}}")],
    ), 8, 8)
    lay.add(timeseries(
        "Success ratio over time", "Share of final items that succeeded: under the dashed line (the alert "
        "threshold) too many operations fail.",
        [target(shared(M.FMGR_SUCCESS_RATIO, sel(window=True)), "{{window}}")],
        unit="percentunit", thresholds=GOOD_FMGR_RATIO, max_=1,
    ), 8, 8)

    lay.row("Throughput and notifications")
    lay.add(timeseries(
        "Bytes processed per hour", "Size of items that succeeded in the last hour, by operation: a drop "
        "to zero while tasks are submitted means nothing completes.",
        [target(f"job_op:cdnetworks_fmgr_processed_bytes:increase1h{sel()}", "{{op}}")], unit="bytes",
    ), 8, 8)
    lay.add(timeseries(
        "Notifications accepted", "Verified vendor notifications per second (duplicates are the vendor's "
        "retries): zero while tasks complete means notifications do not arrive.",
        [target(shared_counter("rate", M.FMGR_NOTIFICATIONS, sel(ACCEPTED), "$__rate_interval"), "{{result}}")],
        unit="reqps",
    ), 8, 8)
    lay.add(timeseries(
        "Notifications rejected by reason", "Refused notifications per second by reason: bad_signature or "
        "unknown_key is a key mismatch or forgery, malformed/too_large a broken sender.",
        [target(shared_counter("rate", M.FMGR_NOTIFICATIONS, sel(REJECTED), "$__rate_interval"), "{{result}}")],
        unit="reqps",
    ), 8, 8)
    lay.add(timeseries(
        "Notification failures", "Tasks (code 5) and items (codes 5 and 19) that ended in a notification "
        "failure, per hour: the vendor finished the job but could not deliver its notifyURL callback.",
        [target(shared_counter("increase", M.FMGR_NOTIFY_FAILURES, sel(), "1h"), "{{scope}}")],
    ), 8, 8)
    lay.add(timeseries(
        "Pending tasks over time", "Tracked tasks whose processing is not over yet: a line that only climbs "
        "means tasks never finish.",
        [target(shared(M.FMGR_PENDING_TASKS, sel()), "pending")],
    ), 8, 8)
    lay.add(timeseries(
        "Oldest pending task over time", "Time since the oldest non-final task was first seen: above the dashed line "
        "(the alert threshold) it is stuck.",
        [target(shared(M.FMGR_OLDEST_PENDING_AGE, sel()), "oldest")],
        unit="s", thresholds=steps("green", (ALERTS.stuck_seconds, "red")),
    ), 8, 8)
    return dashboard(
        "cdnetworks-fmgr", "CDNetworks / Fmgr",
        "Object storage (Fmgr) jobs: tasks and items by state and operation, success, bytes, notifications.",
        [JOB_VAR, window_variable('cdnetworks_fmgr_tasks{job=~"$job"}', multi=False)],
        lay,
    )


def exporter_health() -> dict[str, Any]:
    lay = Layout()
    lay.row("Exporter")
    lay.add(exporter_scrape_stat(), 5, 4)
    lay.add(stat(
        "Version", "Exporter and Python version: several versions at once means a half-finished rollout.",
        [target(f"cdnetworks_exporter_build_info{sel()}", "{{instance}}: {{version}} (Python {{python}})",
                instant=True)],
        text_mode="name",
    ), 5, 4)
    lay.add(stat(
        "Config reload", "Whether the last configuration reload (SIGHUP or POST /-/reload) succeeded: FAILED "
        "means the exporter still runs its previous configuration; the log says what was wrong.",
        [target(f"cdnetworks_config_last_reload_successful{sel()}", "{{instance}}", instant=True)],
        thresholds=steps("red", (1, "green")),
        mappings=[{"type": "value", "options": {
            "0": {"color": "red", "index": 0, "text": "FAILED"}, "1": {"color": "green", "index": 1, "text": "OK"},
        }}],
    ), 4, 4)
    lay.add(timeseries(
        "Scrape size", "Samples per scrape: a sudden jump means a label grew unexpectedly (cardinality).",
        [target(f"scrape_samples_scraped{sel()}", "{{instance}}")],
    ), 5, 4)
    lay.add(timeseries(
        "Scrape duration", "Time Prometheus needs to scrape the exporter: it should stay far below the "
        "scrape timeout; growth means the store queries slow down.",
        [target(f"scrape_duration_seconds{sel()}", "{{instance}}")], unit="s",
    ), 5, 4)

    lay.row("Vendor APIs")
    lay.add(state_timeline(
        "Last poll per account and API", "Whether the last poll of each vendor API succeeded: failing "
        "means the exporter serves the last good data for that account.",
        [target(f"min by (account, api) ({held(M.UP, sel(fmgr_account=True))})", "{{api}} {{account}}")],
    ), 24, 6)
    lay.add(timeseries(
        "Requests per hour by result", "Vendor API calls in the last hour by outcome: anything but ok "
        "(and not_found, an unknown Fmgr id) is a failure; compare ok with the rate budget.",
        [target(f"sum by (api, result) (job_api_result:cdnetworks_api_requests:increase1h{sel()})",
                "{{api}} {{result}}")],
        stack=True,
    ), 12, 8)
    lay.add(timeseries(
        "Error ratio", "Share of vendor API calls in the last 30m that failed (not ok, not_found or "
        "rate_limited): above the dashed line (the alert threshold) an API is failing.",
        [target(f"job_api:cdnetworks_api_request_errors:ratio_rate30m{sel()}", "{{api}}")],
        unit="percentunit", thresholds=steps("green", (ALERTS.api_error_ratio_max, "red")), max_=1,
    ), 12, 8)
    lay.add(timeseries(
        "Rate-limit hits per hour", "Calls the vendor refused for rate limiting in the last hour: any "
        "steady value means the configured budget is above what the vendor grants.",
        [target(f"sum by (api) (job_api_result:cdnetworks_api_requests:increase1h{sel(RATE_LIMITED)})",
                "{{api}}")],
    ), 8, 8)
    lay.add(timeseries(
        "Request latency", "Vendor API response time percentiles over 15m: growth towards the request "
        "timeout precedes timeouts.",
        [target(f"job_api_quantile:cdnetworks_api_request_duration_seconds:histogram_quantile{sel()}",
                "{{api}} q{{quantile}}")],
        unit="s",
    ), 8, 8)
    lay.add(timeseries(
        "Time since last successful poll", "Per account and API: above the dashed line (the alert "
        "threshold) the data is stale.",
        [target(f"max by (account, api) (time() - ({held(M.LAST_SUCCESSFUL_POLL, sel(fmgr_account=True))}))",
                "{{api}} {{account}}")],
        unit="s", thresholds=steps("green", (ALERTS.not_polling_seconds, "red")),
    ), 8, 8)
    lay.add(timeseries(
        "Poll lag", "How far behind real time the newest fully read point is: above the dashed line (the "
        "alert threshold) the poller cannot keep up within the vendor's rate budget.",
        [target(f"max by (account, api) ({held(M.POLL_LAG, sel(fmgr_account=True))})", "{{api}} {{account}}")],
        unit="s", thresholds=steps("green", (ALERTS.poll_lag_seconds, "red")),
    ), 12, 8)
    lay.add(timeseries(
        "Scrape sections served", "Per replica: 1 when the last scrape served every section of /metrics (each CDN "
        "task kind, fmgr, health, leases), 0 when one failed and was left out while the rest was served (usually "
        "a store that cannot be read; CDNetworksScrapeSectionFailing names the section after 5m).",
        [target(f"min by (instance) ({M.SCRAPE_COLLECTOR_SUCCESS.name}{sel()})", "{{instance}}")],
        thresholds=steps("red", (1, "green")),
    ), 12, 8)
    lay.add(timeseries(
        "Staleness of unfinished tasks", "How long ago the least recently read of the tasks shown unfinished was "
        "read: a status change at the vendor can take this long to show. Re-reads are spaced to fit the rate "
        "budget (every poll interval when it allows); above the dashed line (the alert threshold) they no longer "
        "keep up.",
        [target(f"max by (account, api) ({held(M.POLL_STALENESS, sel(fmgr_account=True))})", "{{api}} {{account}}")],
        unit="s", thresholds=steps("green", (ALERTS.poll_staleness_seconds, "red")),
    ), 12, 8)
    lay.add(timeseries(
        "Back-fill remaining", "Seconds of history within the lookback not read yet (after a first start or "
        "a long outage): the longer windows lack those tasks until it reaches 0. It falls on a share of the "
        "budget; a line that does not fall means the newest tasks take the whole budget.",
        [target(f"max by (account, api) ({held(M.POLL_BACKFILL_REMAINING, sel(fmgr_account=True))})",
                "{{api}} {{account}}")],
        unit="s",
    ), 12, 8)

    lay.row("Replicas")
    lay.add(timeseries(
        "Replicas running each poller", "How many replicas run each poller (an account's prefetch or purge, the "
        "Fmgr poller): 1 is right, and a single exporter shows 1 for all. 0 means nobody polls it "
        "(CDNetworksPollerNotRunning after 10m), 2 or more a split brain (CDNetworksPollerSplitBrain).",
        [target(f"sum by (account, api) ({M.REPLICA_LEASES.name}{sel(fmgr_account=True)})", "{{api}} {{account}}")],
        thresholds=steps("red", (1, "green"), (2, "red")),
    ), 12, 8)
    lay.add(timeseries(
        "Pollers per replica", "How many pollers each replica runs: when a replica stops, its pollers move to "
        "the others within a lease period; a replica at 0 is a spare. A single exporter runs them all.",
        [target(f"sum by (instance) ({M.REPLICA_LEASES.name}{sel()})", "{{instance}}")],
    ), 12, 8)
    return dashboard(
        "cdnetworks-exporter-health", "CDNetworks / Exporter health",
        "Is the exporter scraped, does it reach the vendor APIs, how fast, how often refused, how stale.",
        [JOB_VAR, ACCOUNT_VAR],
        lay,
    )


DASHBOARDS = {
    "overview.json": overview,
    "cdn-tasks.json": cdn_tasks,
    "fmgr.json": fmgr,
    "exporter-health.json": exporter_health,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def panels_table() -> str:
    """One table per dashboard: each panel, the queries it runs and what a bad value means."""
    parts = []
    for name, build in DASHBOARDS.items():
        dash = build()
        parts.append(f"#### {dash['title']}\n\n`dashboards/{name}`, uid `{dash['uid']}`. {dash['description']}\n")
        rows = ["| Panel | Query | What a bad value means |", "|---|---|---|"]
        for panel in dash["panels"]:
            if panel["type"] == "row":
                continue
            queries = "<br>".join(RULES.md_code(t["expr"]) for t in panel["targets"])
            rows.append(f"| {RULES.md_text(panel['title'])} | {queries} | {RULES.md_text(panel['description'])} |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=HERE, help=f"default: {HERE}")
    parser.add_argument("--docs", type=Path, default=None,
                        help=f"the docs page to update (default: {RULES.DOCS} when writing to the default --out-dir)")
    parser.add_argument("--check", action="store_true", help="only report whether the files are up to date")
    args = parser.parse_args(argv)
    if args.docs is None and args.out_dir.resolve() == HERE:
        args.docs = RULES.DOCS
    files = {args.out_dir / name: render(build) for name, build in DASHBOARDS.items()}
    if args.docs is not None:
        files[args.docs] = RULES.replace_section(
            args.docs.read_text(encoding="utf-8"), "panels", panels_table(), "dashboards/generate.py")
    return RULES.write_or_check(files, check=args.check, generator="dashboards/generate.py")


if __name__ == "__main__":
    sys.exit(main())
