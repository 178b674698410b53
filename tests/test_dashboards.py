"""Grafana dashboards: JSON structure (uids, schema, variables, panels, datasources), the generator's
reproducibility, and that every metric a panel reads is one the exporter promises (or a recording rule).
There is no Grafana here: tests/test_prometheus_integration.py runs every panel query on a real Prometheus."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import load_rules_generator

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS_DIR = ROOT / "dashboards"
EXPECTED = {
    "overview.json": "cdnetworks-overview",
    "cdn-tasks.json": "cdnetworks-cdn-tasks",
    "fmgr.json": "cdnetworks-fmgr",
    "exporter-health.json": "cdnetworks-exporter-health",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MIN_SCHEMA_VERSION = 39
# Grafana's own variables that panels may use.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range"}


RULES_GEN = load_rules_generator()


def _load_dashboards_generator() -> Any:
    spec = importlib.util.spec_from_file_location("cdnetworks_dashboards_generate", DASHBOARDS_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


DASHBOARDS_GEN = _load_dashboards_generator()


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(DASHBOARDS_DIR.glob("*.json"))}


DASHBOARDS = load_dashboards()


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def query_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Panels that show data (rows are layout only)."""
    return (p for p in panels(dash) if p["type"] != "row")


def variables(dash: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dash["templating"]["list"]}


def used_variables(text: str) -> set[str]:
    return set(re.findall(r"\$\{?(\w+)", text))


def recording_rule_names() -> set[str]:
    names = set()
    for name in ("recording.yml", "slo.yml"):
        data = yaml.safe_load((ROOT / "prometheus" / name).read_text(encoding="utf-8"))
        names |= {rule["record"] for group in data["groups"] for rule in group["rules"] if "record" in rule}
    return names


def test_the_four_dashboards_exist_with_fixed_uids() -> None:
    assert {name: d["uid"] for name, d in DASHBOARDS.items()} == EXPECTED
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_top_level(name: str) -> None:
    dash = DASHBOARDS[name]
    assert dash["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert dash["id"] is None, "an id would clash on import; the uid identifies the dashboard"
    assert dash["title"].startswith("CDNetworks / ")
    assert dash["description"]
    assert "cdnetworks" in dash["tags"]
    assert dash["time"]["from"].startswith("now-")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_variables(name: str) -> None:
    dash = DASHBOARDS[name]
    found = variables(dash)
    assert dash["templating"]["list"][0]["name"] == "datasource", "the datasource variable comes first"
    ds = found["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for var in found.values():
        if var["type"] != "query":
            continue
        assert var["datasource"] == DATASOURCE, var["name"]
        query = var["query"]["query"]
        assert re.fullmatch(r"label_values\((.+), (\w+)\)", query), f"{var['name']}: {query}"
        assert query.endswith(f", {var['name']})"), var["name"]
        assert var["definition"] == query
    exprs = " ".join(t["expr"] for p in query_panels(dash) for t in p["targets"])
    var_queries = " ".join(v["query"]["query"] for v in found.values() if v["type"] == "query")
    used = used_variables(exprs + " " + var_queries) - BUILTIN_VARIABLES
    assert used <= set(found), f"undefined variables: {sorted(used - set(found))}"
    assert set(found) - {"datasource"} <= used, "a variable that no query uses"
    # The brief's variables, wherever the dashboard has per-account or per-window series.
    if "account=~" in exprs:
        assert "account" in found
    if "window=~" in exprs:
        assert "window" in found


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels(name: str) -> None:
    dash = DASHBOARDS[name]
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = [p["title"] for p in query_panels(dash)]
    assert len(titles) == len(set(titles)), "two panels with the same title"
    for panel in query_panels(dash):
        title = panel.get("title", "")
        assert title.strip(), panel
        description = panel.get("description", "")
        assert description.strip() and "\n" not in description, f"{title}: one-line description"
        assert panel["datasource"] == DATASOURCE, title
        assert panel["targets"], title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for tgt in panel["targets"]:
            assert tgt["expr"].strip(), title
            assert tgt["datasource"] == DATASOURCE, title
            assert tgt["expr"].count("(") == tgt["expr"].count(")"), f"{title}: {tgt['expr']}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_grid_positions_fit_and_do_not_overlap(name: str) -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels(DASHBOARDS[name]):
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                 for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_hard_coded_datasource(name: str) -> None:
    for key, value in walk(DASHBOARDS[name]):
        if key != "datasource":
            continue
        if isinstance(value, dict):
            # The built-in annotation query is the only thing allowed to name a fixed datasource.
            assert value.get("uid") in {"${datasource}", "-- Grafana --"}, value
        else:
            assert value in {"${datasource}", None}, value
    assert "__inputs" not in DASHBOARDS[name], "an export for sharing would bind a datasource on import"


def test_every_metric_a_panel_reads_is_in_the_contract() -> None:
    allowed = RULES_GEN.CONTRACT_METRICS | RULES_GEN.PROMETHEUS_METRICS | recording_rule_names()
    used_anywhere: set[str] = set()
    for name, dash in DASHBOARDS.items():
        for panel in query_panels(dash):
            for tgt in panel["targets"]:
                used = RULES_GEN.metric_names(tgt["expr"])
                assert used, f"{name} / {panel['title']}: no metric in {tgt['expr']!r}"
                assert used <= allowed, f"{name} / {panel['title']}: not in the contract: {sorted(used - allowed)}"
                used_anywhere |= used
        for var in variables(dash).values():
            if var["type"] == "query":
                selector = re.fullmatch(r"label_values\((.+), \w+\)", var["query"]["query"]).group(1)
                names = RULES_GEN.metric_names(selector) | name_regex_metrics(selector)
                assert names, f"{name} variable {var['name']}: no metric in {selector!r}"
                assert names <= allowed, f"{name} variable {var['name']}: {sorted(names - allowed)}"
    # The issue asks for these views: their metrics must be on some dashboard.
    for metric in ("cdnetworks_prefetch_success_ratio", "cdnetworks_fmgr_success_ratio", "cdnetworks_up",
                   "cdnetworks_fmgr_items", "cdnetworks_fmgr_notifications_total",
                   "cdnetworks_prefetch_oldest_unfinished_age_seconds", "scrape_samples_scraped"):
        assert metric in used_anywhere, metric


def test_every_panel_reads_replicas_right() -> None:
    """Shared series deduplicated, per-poller series filtered by the lease (prometheus/generate.py's check)."""
    for name, dash in DASHBOARDS.items():
        for panel in query_panels(dash):
            for tgt in panel["targets"]:
                assert not RULES_GEN.replica_problems(tgt["expr"]), (name, panel["title"], tgt["expr"])


def test_per_replica_panels_name_the_replica() -> None:
    """A per-replica panel tells its replicas apart (by instance); every other panel aggregates the replicas
    away, so its series never carry one."""
    found = set()
    for dash in DASHBOARDS.values():
        for panel in query_panels(dash):
            for tgt in panel["targets"]:
                if panel["title"] in DASHBOARDS_GEN.PER_REPLICA_PANELS:
                    found.add(panel["title"])
                    assert "{{instance}}" in tgt["legendFormat"], panel["title"]
                else:
                    assert "instance" not in tgt["legendFormat"], panel["title"]
    assert found == DASHBOARDS_GEN.PER_REPLICA_PANELS, "a per-replica panel that no dashboard has"


def name_regex_metrics(selector: str) -> set[str]:
    """Metric names a ``{__name__=~"prefix_(a|b)_suffix"}`` selector matches (the one regex form used)."""
    names: set[str] = set()
    for pattern in re.findall(r'__name__=~"([^"]*)"', selector):
        head, alternatives, tail = re.fullmatch(r"(\w*)\(([\w|]+)\)(\w*)", pattern).groups()
        names |= {head + alt + tail for alt in alternatives.split("|")}
    return names


def test_dashboards_are_generated_reproducibly(tmp_path: Path) -> None:
    def generate(out: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(DASHBOARDS_DIR / "generate.py"), "--out-dir", str(out)],
                              capture_output=True, text=True, timeout=60, check=False)

    assert generate(tmp_path / "a").returncode == 0
    assert generate(tmp_path / "b").returncode == 0
    generated = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert generated == sorted(EXPECTED)
    for name in generated:
        fresh = (tmp_path / "a" / name).read_bytes()
        assert fresh == (tmp_path / "b" / name).read_bytes(), f"{name}: two runs differ"
        assert fresh == (DASHBOARDS_DIR / name).read_bytes(), f"dashboards/{name} is stale: run dashboards/generate.py"
    check = subprocess.run([sys.executable, str(DASHBOARDS_DIR / "generate.py"), "--check"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr


def test_generator_check_detects_a_stale_file(tmp_path: Path) -> None:
    script = str(DASHBOARDS_DIR / "generate.py")
    assert subprocess.run([sys.executable, script, "--out-dir", str(tmp_path)], timeout=60).returncode == 0
    (tmp_path / "fmgr.json").write_text("{}\n", encoding="utf-8")
    check = subprocess.run([sys.executable, script, "--out-dir", str(tmp_path), "--check"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert check.returncode == 1
    assert "fmgr.json" in check.stderr


def test_threshold_lines_are_the_alert_thresholds() -> None:
    """A dashed line at 95% on a success-ratio panel means the same thing as the alert."""
    settings = RULES_GEN.Settings()
    overview = DASHBOARDS["overview.json"]
    ratio = next(p for p in query_panels(overview) if p["title"] == "Prefetch success ratio")
    step_values = [s["value"] for s in ratio["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert step_values == [None, settings.cdn_success_ratio_min]
    health = DASHBOARDS["exporter-health.json"]
    lag = next(p for p in query_panels(health) if p["title"] == "Poll lag")
    assert lag["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == settings.poll_lag_seconds


def test_provisioning_files() -> None:
    ds = yaml.safe_load((DASHBOARDS_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]
    prov = yaml.safe_load((DASHBOARDS_DIR / "provisioning" / "dashboards" / "cdnetworks.yml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def test_name_regex_expansion() -> None:
    assert name_regex_metrics('{__name__=~"cdnetworks_(prefetch|fmgr)_tasks", job=~"$job"}') == {
        "cdnetworks_prefetch_tasks", "cdnetworks_fmgr_tasks",
    }


def test_variable_extraction() -> None:
    assert used_variables('rate(x{a=~"$account|", w="${window}"}[$__rate_interval])') == {
        "account", "window", "__rate_interval",
    }
