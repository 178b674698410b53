"""Prometheus rules: promtool validity and unit tests, coverage of every alert by those unit tests, the
conventions (severity, summary, description, runbook), the single job selector, and the generator."""

from __future__ import annotations

import copy
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
SLO_FILE = RULES_DIR / "slo.yml"  # the SLO rules, a file of their own (tests/test_slo_rules.py)
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


ALERTS = rules(RULES_DIR / "alerts.yml", "alert") + rules(SLO_FILE, "alert")
RECORDS = rules(RULES_DIR / "recording.yml", "record")
SLO_RECORDS = rules(SLO_FILE, "record")


# --------------------------------------------------------------------------------------------------
# promtool


@pytest.mark.prometheus
def test_promtool_check_rules() -> None:
    result = run(require_tool("promtool"), "check", "rules", *RULE_FILES, SLO_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES) + 1


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
        # Every alert about tasks links to the exporter's page of those tasks (tests/test_browser.py opens each).
        about_tasks = re.search(r"SuccessRatioLow|TasksStuck|NotificationsFailing|ErrorBudget", name) is not None
        assert set(notes) == {"summary", "description", "runbook_url", *(["tasks_url"] if about_tasks else [])}, name
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
        kept = re.search(r"(?:sum|max) by \(([^)]*)\)", rule["expr"])
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
    for rule in ALERTS + RECORDS + SLO_RECORDS:
        selectors = selectors_of(rule["expr"])
        assert selectors, rule
        for sel in selectors:
            assert sel.startswith("{" + JOB_SELECTOR), f"{rule.get('alert') or rule['record']}: {sel!r}"


def test_rules_use_only_contract_metrics() -> None:
    allowed = GEN.CONTRACT_METRICS | GEN.PROMETHEUS_METRICS | {rule["record"] for rule in RECORDS + SLO_RECORDS}
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
    for name in ("alerts.yml", "recording.yml", "slo.yml"):
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
    for name in ("alerts.yml", "recording.yml", "slo.yml"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert "cdnetworks\"" not in text.replace("job=\"cdn-prod\"", ""), name
        assert text.count('job="cdn-prod"') >= len(yaml.safe_load(text)["groups"][0]["rules"]), name
    alerts = (tmp_path / "alerts.yml").read_text(encoding="utf-8")
    assert 'max by (job, account, window) (cdnetworks_prefetch_success_ratio{job="cdn-prod", window="1h"}) < 0.9' \
        in alerts
    assert "(threshold 90%)" in alerts


def test_threshold_formatting() -> None:
    assert GEN.duration(3600) == "1h"
    assert GEN.duration(1800) == "30m"
    assert GEN.duration(90) == "90s"
    assert GEN.percent(0.95) == "95%"
    assert GEN.percent(0.905) == "90.5%"


# --------------------------------------------------------------------------------------------------
# Several replicas: the same rules for one exporter and for replicas sharing a store


def test_every_family_has_one_meaning_across_replicas() -> None:
    groups = [GEN.SHARED, GEN.PER_POLLER, GEN.ADDITIVE, GEN.PER_REPLICA]
    placed = [family.name for group in groups for family in group]
    assert len(placed) == len(set(placed)), "a family in two groups"
    assert set(placed) == {family.name for family in GEN.M.ALL}, "a family of the catalogue in no group"
    # The lease filter joins on these labels: every per-poller family must have them.
    for family in GEN.PER_POLLER:
        assert set(family.labels) == {"account", "api"}, family.name
    assert set(GEN.M.REPLICA_LEASES.labels) == {"account", "api"}


def test_every_rule_reads_replicas_right() -> None:
    for rule in ALERTS + RECORDS + SLO_RECORDS:
        assert not GEN.replica_problems(rule["expr"]), (rule.get("alert") or rule["record"], rule["expr"])


def test_replica_problems_finds_what_reads_replicas_wrong() -> None:
    """The check above is only as good as this: it knows the forms that double count or read a stale value."""
    ok = [
        'max by (job, account) (cdnetworks_prefetch_oldest_unfinished_age_seconds{job="x"}) > 3600',
        'max by (job, op) (increase(cdnetworks_fmgr_processed_bytes_total{job="x"}[1h]))',
        'max(cdnetworks_fmgr_pending_tasks{job="x"})',
        'histogram_quantile(0.5, max by (job, account, le) (rate(cdnetworks_purge_duration_seconds_bucket[1h])))',
        'cdnetworks_poll_lag_seconds{job="x"} > 1800\nunless on (job, instance, account, api)\n'
        '  cdnetworks_replica_leases{job="x"} == 0',
        'max by (api) (time() - (cdnetworks_last_successful_poll_timestamp_seconds{job="x"} '
        'unless on (job, instance, account, api) cdnetworks_replica_leases{job="x"} == 0))',
        'sum by (job, api) (rate(cdnetworks_api_requests_total{job="x"}[30m]))',  # each replica's own: summed
        'max by (job, account, kind, unit) (predict_linear(cdnetworks_quota_remaining{job="x"}[1h], 3600)) <= 0',
    ]
    for expr in ok:
        assert GEN.replica_problems(expr) == [], expr
    wrong = [
        'cdnetworks_prefetch_oldest_unfinished_age_seconds{job="x"} > 3600',
        'sum by (job, op) (increase(cdnetworks_fmgr_processed_bytes_total{job="x"}[1h]))',
        'sum(max by (job) (cdnetworks_fmgr_pending_tasks)) + cdnetworks_fmgr_pending_tasks',
        'max by (job) (sum by (job, account) (cdnetworks_purge_tasks))',
        'max by (job, instance) (cdnetworks_fmgr_pending_tasks{job="x"})',
        'cdnetworks_poll_lag_seconds{job="x"} > 1800',
        'cdnetworks_up{job="x"} and on (job, instance) cdnetworks_replica_leases == 0',
        'predict_linear(cdnetworks_quota_remaining{job="x"}[1h], 3600) <= 0',
    ]
    for expr in wrong:
        assert GEN.replica_problems(expr), expr


REPLICAS = ("a:9891", "b:9891")
SINGLE = "exporter:9891"
SHARED_NAMES = {name for family in GEN.SHARED for name in family.sample_names}
POLLER_NAMES = {name for family in GEN.PER_POLLER for name in family.sample_names}
ADDITIVE_NAMES = {name for family in GEN.ADDITIVE for name in family.sample_names}
# What a replica that does not run a poller may show for it: values that would fire the alerts if read.
STALE = {GEN.M.UP.name: "0", GEN.M.LAST_SUCCESSFUL_POLL.name: "0", GEN.M.POLL_LAG.name: "1e6",
         GEN.M.POLL_BACKFILL_REMAINING.name: "1e6", GEN.M.POLL_STALENESS.name: "1e6"}
_NUMBER = r"[-+]?(?:[0-9]*\.)?[0-9]+(?:e[-+]?[0-9]+)?"
_EXPANDING = re.compile(rf"(?P<a>{_NUMBER})(?:(?P<op>[-+])(?P<b>{_NUMBER}))?x(?P<n>[0-9]+)")


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    match = re.fullmatch(r"([a-zA-Z_:][\w:]*)\{(.*)\}", text.strip())
    assert match, text
    return match.group(1), dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))


def format_series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def sample_count(values: str) -> int:
    """How many samples promtool's series notation stands for (``axn`` is n+1 of them, ``_xn`` n)."""
    count = 0
    for token in values.split():
        if token.startswith("_x"):
            count += int(token[2:])
        elif (match := _EXPANDING.fullmatch(token)) is not None:
            count += int(match.group("n")) + 1
        else:
            count += 1
    return count


def halve(values: str) -> str:
    """The series notation with every value halved: two replicas that made half of the requests each."""
    def half(number: str) -> str:
        return repr(float(number) / 2)

    out = []
    for token in values.split():
        if (match := _EXPANDING.fullmatch(token)) is not None:
            step = f"{match.group('op')}{half(match.group('b'))}" if match.group("op") else ""
            out.append(f"{half(match.group('a'))}{step}x{match.group('n')}")
        elif re.fullmatch(_NUMBER, token):
            out.append(half(token))
        else:
            out.append(token)  # _ , _xn, stale
    return " ".join(out)


def test_series_notation_helpers() -> None:
    assert sample_count("0+60x10 600x50") == 62
    assert sample_count("_x3 7 stale") == 5
    assert halve("0+1x60 3 _x2 1e6-2x3") == "0.0+0.5x60 1.5 _x2 500000.0-1.0x3"


def two_replicas(case: dict[str, Any]) -> dict[str, Any]:
    """One test group of a single exporter (instance exporter:9891) as two replicas sharing its store: shared
    series on both; vendor requests split between them; each poller run by one of them (alternately, by
    account and api), the other showing a stale value for it; each replica's own state on both. The expected
    alerts follow: shared ones unchanged (they name no replica), a poller's alert on the replica running it,
    a replica's own alert on each replica."""
    case = copy.deepcopy(case)
    single = [s for s in case["input_series"] if parse_series(s["series"])[1].get("instance") == SINGLE]
    length = max(sample_count(s["values"]) for s in case["input_series"])
    pollers = sorted({(labels.get("account", ""), labels["api"]) for name, labels in map(parse_series, (
        s["series"] for s in single)) if name in POLLER_NAMES | {GEN.M.REPLICA_LEASES.name}})
    holder = {poller: REPLICAS[i % 2] for i, poller in enumerate(pollers)}
    series = [s for s in case["input_series"] if s not in single]
    for item in single:
        name, labels = parse_series(item["series"])
        for replica in REPLICAS:
            labelled = format_series(name, {**labels, "instance": replica})
            if name == GEN.M.REPLICA_LEASES.name:
                continue  # replaced by the split below
            if name in POLLER_NAMES:
                runs = holder[(labels.get("account", ""), labels["api"])] == replica
                values = item["values"] if runs else f"{STALE[name]}x{length - 1}"
            elif name in ADDITIVE_NAMES:
                values = halve(item["values"])
            else:  # shared, or each replica's own state
                values = item["values"]
            series.append({"series": labelled, "values": values})
    for (account, api), runner in holder.items():
        for replica in REPLICAS:
            labels = {"job": "cdnetworks", "instance": replica, "account": account, "api": api}
            series.append({"series": format_series(GEN.M.REPLICA_LEASES.name, labels),
                           "values": f"{int(replica == runner)}x{length - 1}"})
    case["input_series"] = series
    for check in case.get("alert_rule_test", []):
        expected = []
        for alert in check.get("exp_alerts") or []:
            labels = alert.get("exp_labels", {})
            if labels.get("instance") != SINGLE:
                expected.append(alert)
                continue
            poller = (labels.get("account", ""), labels["api"]) if "api" in labels else None
            for replica in [holder[poller]] if poller in holder else REPLICAS:
                moved = copy.deepcopy(alert)
                moved["exp_labels"]["instance"] = replica
                moved["exp_annotations"] = {k: v.replace(SINGLE, replica)
                                            for k, v in alert.get("exp_annotations", {}).items()}
                expected.append(moved)
        check["exp_alerts"] = expected
    for check in case.get("promql_expr_test", []):
        for sample in check.get("exp_samples") or []:
            assert SINGLE not in sample["labels"], "a recorded series that names the exporter instance"
    return case


def single_exporter_unit_tests() -> list[Path]:
    """The unit tests written for one exporter (the others are about replicas already)."""
    return [path for path in UNIT_TESTS if SINGLE in path.read_text(encoding="utf-8")
            and "a:9891" not in path.read_text(encoding="utf-8")]


def run_as_two_replicas(tmp_path: Path, recording: Path, alerts: Path,
                        slo: Path = SLO_FILE) -> subprocess.CompletedProcess[str]:
    """Every single-exporter unit test, turned into two replicas, run by promtool against these rule files."""
    files = []
    for path in single_exporter_unit_tests():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        sources = {"recording.yml": recording, "alerts.yml": alerts, "slo.yml": slo}
        data["rule_files"] = [str(sources[Path(name).name]) for name in data["rule_files"]]
        data["tests"] = [two_replicas(case) for case in data["tests"]]
        out = tmp_path / f"two_replicas_{path.name}"
        out.write_text(yaml.safe_dump(data, sort_keys=False, width=4096), encoding="utf-8")
        files.append(out)
    return run(require_tool("promtool"), "test", "rules", *files)


@pytest.mark.prometheus
def test_single_exporter_unit_tests_pass_unchanged_with_two_replicas(tmp_path: Path) -> None:
    """Every scenario of the single-exporter tests, played by two replicas: the same alerts at the same times
    (a poller's on the replica running it, each replica's own on each), the same recorded values."""
    paths = single_exporter_unit_tests()
    assert {p.name for p in paths} >= {"api_test.yml", "exporter_test.yml", "recording_test.yml", "tasks_test.yml",
                                        "slo_test.yml", "quota_test.yml"}
    result = run_as_two_replicas(tmp_path, RULE_FILES[0], RULE_FILES[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(paths)


@pytest.mark.prometheus
@pytest.mark.parametrize("mutation", ["sum over replicas", "no lease filter"])
def test_two_replica_scenarios_fail_on_rules_that_read_replicas_wrong(tmp_path: Path, mutation: str) -> None:
    """The derived scenarios can fail: with the shared series summed instead of deduplicated, or the per-poller
    series read from every replica, promtool reports failures."""
    files = {}
    for source in [*RULE_FILES, SLO_FILE]:
        text = source.read_text(encoding="utf-8")
        if mutation == "sum over replicas":
            changed = text.replace("max by (", "sum by (")
        else:
            changed = re.sub(r"\n\s*unless on \(job, instance, account, api\)\n\s*cdnetworks_replica_leases\{[^}]*\} "
                             r"== 0", "", text)
        files[source.name] = tmp_path / source.name
        files[source.name].write_text(changed, encoding="utf-8")
    assert files["alerts.yml"].read_text(encoding="utf-8") != RULE_FILES[1].read_text(encoding="utf-8")
    result = run_as_two_replicas(tmp_path, files["recording.yml"], files["alerts.yml"], files["slo.yml"])
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
    if mutation == "sum over replicas":
        # The SLO rules too: summed, a low-volume account's events reach the minimum and it pages.
        assert files["slo.yml"].read_text(encoding="utf-8") != SLO_FILE.read_text(encoding="utf-8")
        assert 'account="globex", alertname="CDNetworksPrefetchErrorBudget' in result.stderr, result.stderr
