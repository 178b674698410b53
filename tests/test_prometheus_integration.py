"""End to end with the real tools: ``cdnetworks-exporter --demo`` scraped every second by a real Prometheus
that loads prometheus/recording.yml, alerts.yml and slo.yml. Every dashboard panel query, every template variable
query and every rule expression is run through Prometheus's HTTP API and must return data, unless it is
listed in EMPTY_WHEN_HEALTHY below. ``promtool check metrics`` must accept the exporter's output.

Bounded: at most WAIT_LIMIT seconds of waiting for data in all; both processes are stopped at the end.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import requests
import yaml
from conftest import load_rules_generator, require_tool
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[1]
JOB = "cdnetworks"  # the scrape job name the rules select on
RULE_FILES = ("recording.yml", "alerts.yml", "slo.yml")
DEMO_ACCOUNTS = {"acme", "globex"}
WAIT_LIMIT = 60.0
MIN_SCRAPES = 5
# What Grafana would put in for its own variables, given a 1 s scrape interval.
GRAFANA_VARIABLES = {"__rate_interval": "15s", "__interval": "5s"}

# The one place for queries that return nothing in a healthy system, with the reason. Keys are
# "alert:<name>" for alert rules and "<dashboard uid> / <panel title>" for panels. Everything else must
# return data. (Alerts the demo does trigger, e.g. rejected forged notifications, are fine either way.)
_ALERT = "an alert expression returns series only while the condition holds"
EMPTY_WHEN_HEALTHY: dict[str, str] = {
    "alert:CDNetworksExporterDown": f"{_ALERT}: the exporter cannot be scraped",
    "alert:CDNetworksExporterAbsent": f"{_ALERT}: no target of the job exists",
    "alert:CDNetworksNotPolling": f"{_ALERT}: no successful poll for 30m",
    "alert:CDNetworksPollLagHigh": f"{_ALERT}: the poller is 30m behind",
    "alert:CDNetworksPollStale": f"{_ALERT}: an unfinished task went unread for 3h",
    "alert:CDNetworksScrapeSectionFailing": f"{_ALERT}: a section of /metrics failed for 5m",
    "alert:CDNetworksConfigReloadFailed": f"{_ALERT}: the last configuration reload failed",
    "alert:CDNetworksPollerNotRunning": f"{_ALERT}: no replica runs a configured poller",
    "alert:CDNetworksPollerSplitBrain": f"{_ALERT}: two replicas run one poller",
    "alert:CDNetworksAPIErrors": f"{_ALERT}: over 25% of vendor requests fail",
    "alert:CDNetworksAPIRateLimited": f"{_ALERT}: over 25% of vendor requests are rate-limited",
    "alert:CDNetworksPrefetchSuccessRatioLow": f"{_ALERT}: under 95% of 20+ finished prefetches succeed",
    "alert:CDNetworksPurgeSuccessRatioLow": f"{_ALERT}: under 95% of 20+ finished purges succeed",
    "alert:CDNetworksFmgrSuccessRatioLow": f"{_ALERT}: under 90% of 20+ final Fmgr items succeed",
    "alert:CDNetworksPrefetchTasksStuck": f"{_ALERT}: a prefetch has been unfinished for 1h",
    "alert:CDNetworksPurgeTasksStuck": f"{_ALERT}: a purge has been unfinished for 1h",
    "alert:CDNetworksFmgrTasksStuck": f"{_ALERT}: an Fmgr task has been pending for 1h",
    "alert:CDNetworksNotificationsRejected": f"{_ALERT}: notifications failed authentication",
    "alert:CDNetworksQuotaRunningOut": f"{_ALERT}: a daily quota runs out before midnight UTC+8",
    **{f"alert:CDNetworks{slo}ErrorBudget{speed}Burn":
       f"{_ALERT}: the {slo.lower()} SLO burns its budget {speed.lower()}"
       for slo in ("Prefetch", "Purge", "Fmgr") for speed in ("Fast", "Slow")},
}


RULES_GEN = load_rules_generator()


def exporter_command() -> str:
    """The console script pip installed next to this Python (or on PATH)."""
    beside = Path(sys.executable).with_name("cdnetworks-exporter")
    return str(beside) if beside.exists() else require_tool("cdnetworks-exporter")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# The running stack


@dataclass
class Stack:
    exporter_url: str
    prometheus_url: str
    deadline: float  # time.monotonic() after which nobody waits any more
    logs: dict[str, Path] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query; a query Prometheus rejects fails the test with its error."""
        resp = self.session.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert body.get("status") == "success", f"{expr!r}: {body.get('error', resp.text)}"
        return body["data"]["result"]

    def label_values(self, label: str, selector: str) -> set[str]:
        resp = self.session.get(f"{self.prometheus_url}/api/v1/label/{label}/values",
                                params={"match[]": selector}, timeout=10)
        body = resp.json()
        assert body.get("status") == "success", f"{selector!r}: {body.get('error', resp.text)}"
        return {v for v in body["data"] if v}

    def metrics_text(self) -> str:
        resp = self.session.get(f"{self.exporter_url}/metrics", timeout=10)
        resp.raise_for_status()
        return resp.text

    def log_tails(self) -> str:
        parts = []
        for name, path in self.logs.items():
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            parts.append(f"--- {name} log (last lines) ---\n" + "\n".join(lines))
        return "\n".join(parts)


def start(cmd: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_until(what: str, check: Any, stack: Stack, procs: list[subprocess.Popen[bytes]]) -> None:
    """Poll ``check()`` until it is truthy; fail with the logs when the deadline passes or a process dies."""
    while True:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[0]} exited with {proc.returncode}\n{stack.log_tails()}"
        try:
            if check():
                return
            last_error = "not yet"
        except (requests.RequestException, AssertionError, ValueError) as exc:
            last_error = str(exc)  # not up yet: try again until the deadline
        if time.monotonic() >= stack.deadline:
            pytest.fail(f"timed out waiting for {what} ({last_error})\n{stack.log_tails()}")
        time.sleep(0.5)


def prometheus_config(exporter_port: int) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "prometheus" / name) for name in RULE_FILES],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]}],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus, promtool = require_tool("prometheus"), require_tool("promtool")
    exporter = exporter_command()
    tmp = tmp_path_factory.mktemp("prometheus-integration")
    exporter_port, prometheus_port = free_port(), free_port()
    stack = Stack(f"http://127.0.0.1:{exporter_port}", f"http://127.0.0.1:{prometheus_port}",
                  deadline=time.monotonic() + WAIT_LIMIT,
                  logs={"exporter": tmp / "exporter.log", "prometheus": tmp / "prometheus.log"})
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(exporter_port), sort_keys=False), encoding="utf-8")
    checked = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True,
                             timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    procs: list[subprocess.Popen[bytes]] = []
    with open(stack.logs["exporter"], "wb") as exporter_log, open(stack.logs["prometheus"], "wb") as prom_log:
        try:
            procs.append(start([exporter, "--demo", "--web.listen-address", f"127.0.0.1:{exporter_port}",
                                "--storage.path", str(tmp / "db.sqlite")], exporter_log))
            wait_until("the exporter's first polls", lambda: "cdnetworks_prefetch_success_ratio{"
                       in stack.metrics_text(), stack, procs)
            procs.append(start([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{prometheus_port}"], prom_log))
            wait_until("Prometheus to be ready",
                       lambda: stack.session.get(f"{stack.prometheus_url}/-/ready", timeout=2).ok, stack, procs)
            # A few scrapes, so that rates have two samples and the recording rules have run on them.
            wait_until(f"{MIN_SCRAPES} scrapes", lambda: stack.query(
                f'count_over_time(up{{job="{JOB}"}}[1m]) >= {MIN_SCRAPES} and up{{job="{JOB}"}} == 1'
            ), stack, procs)
            yield stack
        finally:
            for proc in reversed(procs):
                stop(proc)


# --------------------------------------------------------------------------------------------------
# Queries to run


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted((ROOT / "dashboards").glob("*.json"))}


def panel_queries() -> dict[str, list[str]]:
    """"<dashboard uid> / <panel title>" -> its expressions (with Grafana variables still in them)."""
    found: dict[str, list[str]] = {}
    for dash in dashboards().values():
        for panel in dash["panels"] + [p for row in dash["panels"] for p in row.get("panels", [])]:
            if panel["type"] != "row":
                found[f"{dash['uid']} / {panel['title']}"] = [t["expr"] for t in panel["targets"]]
    return found


def rule_queries() -> dict[str, str]:
    """"alert:<name>" / "record:<name>#<group>/<n>" -> expression, for every rule in the rule files."""
    found: dict[str, str] = {}
    for name in RULE_FILES:
        data = yaml.safe_load((ROOT / "prometheus" / name).read_text(encoding="utf-8"))
        for group in data["groups"]:
            for n, rule in enumerate(group["rules"]):
                key = f"alert:{rule['alert']}" if "alert" in rule else f"record:{rule['record']}#{group['name']}/{n}"
                found[key] = rule["expr"]
    return found


def variable_queries() -> dict[str, tuple[str, str]]:
    """"<dashboard uid> $<name>" -> (label, series selector) of each label_values() variable."""
    found = {}
    for dash in dashboards().values():
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                match = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"])
                assert match, var["query"]
                found[f"{dash['uid']} ${var['name']}"] = (match.group(2), match.group(1))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of ``$name`` / ``${name}``: an unknown variable is an error."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def variable_values(stack: Stack) -> dict[str, str]:
    """Every account and every window, formatted as Grafana formats a multi-value selection for Prometheus."""
    accounts = stack.label_values("account", f'cdnetworks_up{{job="{JOB}"}}')
    assert accounts >= DEMO_ACCOUNTS, accounts
    windows = stack.label_values("window", f'{{__name__=~"cdnetworks_(prefetch|purge|fmgr)_tasks", job="{JOB}"}}')
    assert {"15m", "1h", "24h"} <= windows, windows
    return {"job": JOB, "account": "(" + "|".join(sorted(accounts)) + ")",
            "window": "(" + "|".join(sorted(windows)) + ")", **GRAFANA_VARIABLES}


def missing_data(stack: Stack, queries: dict[str, list[str]]) -> dict[str, list[str]]:
    """The queries (by key) with an expression that returned no series."""
    missing: dict[str, list[str]] = {}
    for key, exprs in queries.items():
        for expr in exprs:
            if not stack.query(expr):
                missing.setdefault(key, []).append(expr)
    return missing


def assert_all_return_data(stack: Stack, queries: dict[str, list[str]]) -> None:
    """Every query returns data, retried until the stack's deadline (recording rules and slow counters may
    need a few more evaluations); queries in EMPTY_WHEN_HEALTHY must only run without error."""
    expected = {k: v for k, v in queries.items() if k not in EMPTY_WHEN_HEALTHY}
    for key in queries.keys() & EMPTY_WHEN_HEALTHY.keys():
        for expr in queries[key]:
            stack.query(expr)
    missing = missing_data(stack, expected)
    while missing and time.monotonic() < stack.deadline:
        time.sleep(1)
        missing = missing_data(stack, {key: expected[key] for key in missing})
    report = "\n".join(f"{key}: {expr}" for key, exprs in missing.items() for expr in exprs)
    assert not missing, f"queries without data:\n{report}\n{stack.log_tails()}"


# --------------------------------------------------------------------------------------------------
# Tests


def test_rules_select_the_scrape_job_used_here() -> None:
    assert RULES_GEN.Settings().job_selector == f'job="{JOB}"'


def test_empty_when_healthy_names_only_existing_queries() -> None:
    known = set(panel_queries()) | set(rule_queries())
    assert set(EMPTY_WHEN_HEALTHY) <= known, sorted(set(EMPTY_WHEN_HEALTHY) - known)


def test_promtool_check_metrics_accepts_the_exporter_output(stack: Stack) -> None:
    result = subprocess.run([require_tool("promtool"), "check", "metrics"], input=stack.metrics_text(),
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_the_exporter_serves_every_contract_metric(stack: Stack) -> None:
    served = {sample.name for family in text_string_to_metric_families(stack.metrics_text())
              for sample in family.samples}
    assert served >= RULES_GEN.CONTRACT_METRICS, sorted(RULES_GEN.CONTRACT_METRICS - served)


def test_every_template_variable_has_values(stack: Stack) -> None:
    values = variable_values(stack)
    for key, (label, selector) in variable_queries().items():
        found = stack.label_values(label, substitute(selector, values))
        assert found, f"{key}: label_values({selector}, {label}) is empty"
        if label == "job":
            assert JOB in found


def test_every_panel_query_returns_data(stack: Stack) -> None:
    values = variable_values(stack)
    queries = {key: [substitute(e, values) for e in exprs] for key, exprs in panel_queries().items()}
    assert len(queries) >= 40, "fewer panels than the dashboards have"
    assert_all_return_data(stack, queries)


def test_every_rule_expression_returns_data(stack: Stack) -> None:
    queries = {key: [expr] for key, expr in rule_queries().items()}
    assert_all_return_data(stack, queries)
    # Recorded series exist under their own names too, so the dashboards find them.
    for record in {key.split(":", 1)[1].split("#")[0] for key in queries if key.startswith("record:")}:
        assert stack.query(f'{record}{{job="{JOB}"}}'), record


def test_prometheus_evaluates_every_rule_without_error(stack: Stack) -> None:
    def all_evaluated() -> bool:
        groups = stack.session.get(f"{stack.prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == len(rule_queries()), "Prometheus did not load every rule"
        bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] not in ("ok", "unknown")]
        assert not bad, bad
        return all(r["health"] == "ok" for r in rules)

    wait_until("every rule to be evaluated", all_evaluated, stack, [])
