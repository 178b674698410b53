"""prometheus/slo.yml: the SLO rules generated from the ``slo:`` section of config.yml. Their promtool scenarios
are prometheus/tests/slo_test.yml (run with the others by tests/test_rules.py, also as two replicas); here: the
names Sloth gives them, what they read, the generator's ``--config``, and that the scenarios can fail."""

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
SLO_FILE = RULES_DIR / "slo.yml"
SLO_TEST = RULES_DIR / "tests" / "slo_test.yml"
GEN = load_rules_generator()
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)


def groups(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data["groups"], list)
    return data["groups"]


def test_one_group_per_objective_with_sloths_names_and_labels() -> None:
    found = groups(SLO_FILE)
    assert [g["name"] for g in found] == ["cdnetworks-slo-prefetch", "cdnetworks-slo-purge", "cdnetworks-slo-fmgr"]
    for group in found:
        slo = group["name"].removeprefix("cdnetworks-slo-")
        records = [r for r in group["rules"] if "record" in r]
        assert [r["record"] for r in records] == [
            *(f"slo:sli_error:ratio_rate{w}" for w in (*WINDOWS, "28d")),
            "slo:error_budget:ratio", "slo:objective:ratio", "slo:current_burn_rate:ratio",
            "slo:period_burn_rate:ratio", "slo:period_error_budget_remaining:ratio"]
        ids = {"sloth_service": "cdnetworks", "sloth_slo": slo, "sloth_id": f"cdnetworks-{slo}"}
        for record in records:
            window = record["record"].removeprefix("slo:sli_error:ratio_rate")
            assert record["labels"] == ({**ids, "sloth_window": window} if "sli_error" in record["record"] else ids)
        alerts = [r for r in group["rules"] if "alert" in r]
        assert [(a["labels"]["severity"], a["labels"]["sloth_severity"]) for a in alerts] == [
            ("critical", "page"), ("warning", "ticket")]
        # The alerts come after the ratios they read, in the same group: the same evaluation's values.
        assert group["rules"].index(alerts[0]) > max(group["rules"].index(r) for r in records)


def test_ratios_read_the_event_counters_never_the_window_gauges() -> None:
    counters = {"cdnetworks_prefetch_tasks_finished_total", "cdnetworks_purge_tasks_finished_total",
                "cdnetworks_fmgr_items_finished_total"}
    for group in groups(SLO_FILE):
        for rule in group["rules"]:
            names = GEN.metric_names(rule["expr"])
            exporter_series = {n for n in names if n.startswith("cdnetworks_")}
            assert exporter_series <= counters, (rule.get("record") or rule["alert"], exporter_series)
            if rule.get("record", "").startswith("slo:sli_error"):
                assert len(exporter_series) == 1 and not names - exporter_series, rule["record"]


@pytest.mark.parametrize(("alert", "pairs"), [
    ("CDNetworksPrefetchErrorBudgetFastBurn", [("14.4", "1h", "5m"), ("6", "6h", "30m")]),
    ("CDNetworksPrefetchErrorBudgetSlowBurn", [("3", "1d", "2h"), ("1", "3d", "6h")]),
])
def test_the_workbooks_burn_rates_over_both_windows_with_the_minimum_events(alert: str, pairs: list[Any]) -> None:
    rule = next(r for g in groups(SLO_FILE) for r in g["rules"] if r.get("alert") == alert)
    branches = rule["expr"].split("\nor\n")
    assert len(branches) == 2
    for branch, (factor, long, short) in zip(branches, pairs, strict=True):
        assert f"slo:sli_error:ratio_rate{long}{{" in branch and f"> ({factor} * 0.005)" in branch
        assert f"slo:sli_error:ratio_rate{short}{{" in branch
        assert re.search(rf"increase\(cdnetworks_prefetch_tasks_finished_total\{{[^}}]*\}}\[{long}\]\)", branch)
        assert branch.rstrip(")\n ").endswith(">= 20"), branch


def test_the_committed_file_is_what_the_example_config_generates(tmp_path: Path) -> None:
    # config.example.yml writes the defaults out: generating from it changes nothing.
    result = run(sys.executable, RULES_DIR / "generate.py", "--config", ROOT / "config.example.yml", "--check")
    assert result.returncode == 0, result.stderr


def test_objectives_come_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("accounts: [{name: acme, username: acme, api_key: '${NOT_NEEDED}'}]\n"
                      "slo:\n  prefetch: {objective: '99.9%', period: 30d, min_events: 50}\n"
                      "  purge: {enabled: false}\n", encoding="utf-8")
    result = run(sys.executable, RULES_DIR / "generate.py", "--config", config, "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    found = groups(tmp_path / "slo.yml")
    assert [g["name"] for g in found] == ["cdnetworks-slo-prefetch", "cdnetworks-slo-fmgr"]
    prefetch = {r.get("record") or r["alert"]: r for r in found[0]["rules"]}
    assert "slo:sli_error:ratio_rate30d" in prefetch and "slo:sli_error:ratio_rate28d" not in prefetch
    assert prefetch["slo:error_budget:ratio"]["expr"].endswith("+ 0.001")
    assert prefetch["slo:objective:ratio"]["expr"].endswith("+ 0.999")
    fast = prefetch["CDNetworksPrefetchErrorBudgetFastBurn"]
    assert "> (14.4 * 0.001)" in fast["expr"] and ">= 50" in fast["expr"]
    assert "objective: 99.9% succeed over 30d, an error budget of 0.1%, at least 50 events" in \
        fast["annotations"]["description"]
    check = run(require_tool("promtool"), "check", "rules", tmp_path / "slo.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    # The header says what the file holds; the other files are the same as without --config.
    assert "# SLOs (the slo: section of config.yml): prefetch 99.9% over 30d, at least 50 events; fmgr 99% over " \
        "28d, at least 20 events\n" in (tmp_path / "slo.yml").read_text(encoding="utf-8")
    for name in ("alerts.yml", "recording.yml"):
        assert (tmp_path / name).read_bytes() == (RULES_DIR / name).read_bytes()


def test_a_bad_slo_section_is_refused_with_its_key_path(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("slo: {fmgr: {objective: 0.99, window: 7d}}\n", encoding="utf-8")
    result = run(sys.executable, RULES_DIR / "generate.py", "--config", config, "--out-dir", tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}: slo.fmgr.window: unknown key (expected one of: enabled, min_events, objective, period)",
        f"{config}: slo.fmgr.objective: 0.99 is read as 0.99%; write the objective as a percentage (99 for 99%)"]
    assert not (tmp_path / "slo.yml").exists()


def test_no_objective_gives_an_empty_file_promtool_accepts(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("slo: {prefetch: {enabled: false}, purge: {enabled: false}, fmgr: {enabled: false}}\n")
    assert run(sys.executable, RULES_DIR / "generate.py", "--config", config, "--out-dir", tmp_path).returncode == 0
    assert groups(tmp_path / "slo.yml") == []
    assert "# SLOs (the slo: section of config.yml): none\n" in (tmp_path / "slo.yml").read_text()
    check = run(require_tool("promtool"), "check", "rules", tmp_path / "slo.yml")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.prometheus
@pytest.mark.parametrize(("mutation", "culprit"), [
    # Without the minimum, globex's 9 failures among 12 tasks page and open a ticket.
    (lambda text: re.sub(r">= 20\b", ">= 0", text), 'account="globex"'),
    # The 1h window twice (no short window): the page outlives the failures, while the hour still shows them.
    (lambda text: text.replace("slo:sli_error:ratio_rate5m{", "slo:sli_error:ratio_rate1h{"), "time: 1h5m"),
], ids=["no minimum of events", "no short window"])
def test_the_slo_scenarios_fail_on_wrong_rules(tmp_path: Path, mutation: Any, culprit: str) -> None:
    text = SLO_FILE.read_text(encoding="utf-8")
    changed = mutation(text)
    assert changed != text
    (tmp_path / "slo.yml").write_text(changed, encoding="utf-8")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "slo_test.yml").write_text(SLO_TEST.read_text(encoding="utf-8"), encoding="utf-8")
    result = run(require_tool("promtool"), "test", "rules", tmp_path / "tests" / "slo_test.yml")
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr and culprit in result.stderr, result.stderr
