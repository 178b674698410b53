"""Prometheus rules: promtool validity and unit tests, coverage of every alert by those unit tests, the
conventions (severity, summary, description, runbook), the single job selector, and the generator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import load_rules_generator, require_tool

ROOT = Path(__file__).resolve().parents[1]
RULES_DIR = ROOT / "prometheus"
RULE_FILES = [RULES_DIR / "recording.yml", RULES_DIR / "alerts.yml"]
UNIT_TESTS = sorted((RULES_DIR / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
JOB_SELECTOR = 'job="cdnetworks"'


GEN = load_rules_generator()


def run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=60,
                          cwd=ROOT, check=False)


def rules(path: Path, key: str) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"] if key in rule]


ALERTS = rules(RULES_DIR / "alerts.yml", "alert")
RECORDS = rules(RULES_DIR / "recording.yml", "record")


# --------------------------------------------------------------------------------------------------
# promtool


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    result = run(require_tool("promtool"), "check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES)


@pytest.mark.prometheus
def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in prometheus/tests/"
    result = run(require_tool("promtool"), "test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS)


@pytest.mark.prometheus
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """The unit tests compare annotations exactly: a changed description must make them fail."""
    source = (RULES_DIR / "tests" / "exporter_test.yml").read_text(encoding="utf-8")
    broken = source.replace("for 5m: no CDNetworks metric", "for 5m: no metric")
    assert broken != source
    (tmp_path / "exporter_test.yml").write_text(
        broken.replace("../recording.yml", str(RULE_FILES[0])).replace("../alerts.yml", str(RULE_FILES[1])),
        encoding="utf-8",
    )
    result = run(require_tool("promtool"), "test", "rules", tmp_path / "exporter_test.yml")
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


@pytest.mark.prometheus
def test_example_prometheus_config_is_valid() -> None:
    result = run(require_tool("promtool"), "check", "config", RULES_DIR / "prometheus.example.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# Coverage of the unit tests


def unit_test_evaluations() -> dict[str, list[tuple[int, int, bool]]]:
    """alertname -> (test group index, eval time in seconds, fires?) for every alert_rule_test."""
    found: dict[str, list[tuple[int, int, bool]]] = {}
    group = 0
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            group += 1
            for check in case.get("alert_rule_test", []):
                found.setdefault(check["alertname"], []).append(
                    (group, parse_duration(check["eval_time"]), bool(check.get("exp_alerts")))
                )
    return found


def parse_duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smhd])", text))


def test_every_alert_is_unit_tested_before_and_after_for_elapses() -> None:
    evaluations = unit_test_evaluations()
    for rule in ALERTS:
        name = rule["alert"]
        cases = evaluations.get(name, [])
        assert any(fires for _, _, fires in cases), f"{name}: no unit test where it fires"
        # Not firing earlier in the same scenario, i.e. while the condition holds but `for` has not elapsed
        # (or before it holds at all), then firing: the test sees the `for` at work.
        assert any(
            not quiet_fires and fires and g1 == g2 and t1 < t2
            for g1, t1, quiet_fires in cases for g2, t2, fires in cases
        ), f"{name}: no unit test where it is quiet first and fires later in the same scenario"
    assert set(evaluations) <= {rule["alert"] for rule in ALERTS}, "unit tests name alerts that do not exist"


def test_unit_test_duration_parser() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("46m") == 2760


# --------------------------------------------------------------------------------------------------
# Conventions


def runbook_anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_alerts_follow_conventions() -> None:
    anchors = runbook_anchors()
    names = [rule["alert"] for rule in ALERTS]
    assert len(names) == len(set(names))
    for rule in ALERTS:
        name = rule["alert"]
        assert re.fullmatch(r"CDNetworks[A-Z][A-Za-z]+", name), name
        assert parse_duration(rule["for"]) > 0, f"{name}: needs a for"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert "{{" not in notes["summary"], f"{name}: the summary must be static (it groups notifications)"
        assert "{{" in notes["description"], f"{name}: the description must say which series and value"
        url, _, anchor = notes["runbook_url"].partition("#")
        assert url.endswith("docs/runbook.md"), name
        assert anchor in anchors, f"{name}: docs/runbook.md has no heading for #{anchor}"


def test_recording_rules_are_named_level_metric_operation() -> None:
    for rule in RECORDS:
        level, metric, operation = rule["record"].split(":")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level), rule["record"]
        assert metric.startswith("cdnetworks_") and not metric.endswith("_total"), rule["record"]
        assert re.fullmatch(r"[a-z0-9_]+", operation), rule["record"]
        # The level names the labels the result keeps (besides the quantile of a histogram_quantile rule).
        kept = re.search(r"sum by \(([^)]*)\)", rule["expr"])
        assert kept is not None, rule["record"]
        labels = {label.strip() for label in kept.group(1).split(",")} - {"le"}
        assert labels | set(rule.get("labels", {})) == set(level.split("_")), rule["record"]


def selectors_of(expr: str) -> list[str]:
    """The label matchers that follow each metric name in an expression."""
    found = []
    for name in GEN.metric_names(expr):
        for match in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])(\{{[^}}]*\}})?", expr):
            found.append(match.group(1) or "")
    return found


def test_every_rule_selects_the_job() -> None:
    for rule in ALERTS + RECORDS:
        selectors = selectors_of(rule["expr"])
        assert selectors, rule
        for sel in selectors:
            assert sel.startswith("{" + JOB_SELECTOR), f"{rule.get('alert') or rule['record']}: {sel!r}"


def test_rules_use_only_contract_metrics() -> None:
    allowed = GEN.CONTRACT_METRICS | GEN.PROMETHEUS_METRICS | {rule["record"] for rule in RECORDS}
    for rule in ALERTS + RECORDS:
        used = GEN.metric_names(rule["expr"])
        assert used, rule
        assert used <= allowed, f"{rule.get('alert') or rule['record']}: {sorted(used - allowed)}"
    # Recording rules read only the exporter's own series.
    for rule in RECORDS:
        assert GEN.metric_names(rule["expr"]) <= GEN.CONTRACT_METRICS, rule["record"]


def test_metric_name_extraction() -> None:
    """The check above is only as good as this extractor."""
    assert GEN.metric_names('sum by (api, le) (rate(a_bucket{x=~"b|c"}[5m])) / on (job) group_left b') == {
        "a_bucket", "b",
    }
    assert GEN.metric_names('time() - ts{job="x"} > 1e3 and absent(up) unless c offset 5m') == {"ts", "up", "c"}


# --------------------------------------------------------------------------------------------------
# The generator


def test_generated_rule_files_are_up_to_date(tmp_path: Path) -> None:
    result = run(sys.executable, RULES_DIR / "generate.py", "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("alerts.yml", "recording.yml"):
        assert (tmp_path / name).read_bytes() == (RULES_DIR / name).read_bytes(), (
            f"prometheus/{name} is stale: run python prometheus/generate.py"
        )
    assert run(sys.executable, RULES_DIR / "generate.py", "--check").returncode == 0


def test_generator_check_detects_a_stale_file(tmp_path: Path) -> None:
    assert run(sys.executable, RULES_DIR / "generate.py", "--out-dir", tmp_path).returncode == 0
    (tmp_path / "alerts.yml").write_text("groups: []\n", encoding="utf-8")
    result = run(sys.executable, RULES_DIR / "generate.py", "--out-dir", tmp_path, "--check")
    assert result.returncode == 1
    assert "alerts.yml" in result.stderr


def test_job_selector_is_one_setting(tmp_path: Path) -> None:
    result = run(sys.executable, RULES_DIR / "generate.py", "--out-dir", tmp_path,
                 "--job-selector", 'job="cdn-prod"', "--cdn-success-ratio-min", "0.9")
    assert result.returncode == 0, result.stderr
    for name in ("alerts.yml", "recording.yml"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "cdnetworks\"" not in text.replace("job=\"cdn-prod\"", ""), name
        assert text.count('job="cdn-prod"') >= len(yaml.safe_load(text)["groups"][0]["rules"]), name
    alerts = (tmp_path / "alerts.yml").read_text(encoding="utf-8")
    assert 'cdnetworks_prefetch_success_ratio{job="cdn-prod", window="1h"} < 0.9' in alerts
    assert "(threshold 90%)" in alerts


def test_threshold_formatting() -> None:
    assert GEN.duration(3600) == "1h"
    assert GEN.duration(1800) == "30m"
    assert GEN.duration(90) == "90s"
    assert GEN.percent(0.95) == "95%"
    assert GEN.percent(0.905) == "90.5%"
