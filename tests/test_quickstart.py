"""examples/quickstart: the compose file against the compose specification's JSON schema (vendored in
tests/schemas/compose-spec), every path it mounts or builds from, pinned image tags, and its Prometheus config
checked by ``promtool check config`` with the repository's rule files laid out where the compose file mounts
them. No container engine runs the stack here (no registry for the Prometheus and Grafana images); the
exporter's image itself is built and run by tests/test_container.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from conftest import load_rules_generator, require_tool

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart"
COMPOSE_FILE = QUICKSTART / "compose.yml"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec" / "compose-spec.json"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of the service's bind mounts; named volumes are left out."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((QUICKSTART / source).resolve(), target))
    return out


def validator() -> jsonschema.Draft7Validator:
    import json

    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def test_compose_file_follows_the_compose_specification() -> None:
    errors = sorted(validator().iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_schema_check_can_fail() -> None:
    broken = compose()
    broken["services"]["exporter"]["portz"] = ["9891:9891"]
    assert list(validator().iter_errors(broken))


def test_every_mounted_and_built_path_exists() -> None:
    services = compose()["services"]
    mounts = [m for s in services.values() for m in bind_mounts(s)]
    assert len(mounts) >= 6
    for host, target in mounts:
        assert host.exists(), f"{host} (mounted at {target}) does not exist"
        assert host.is_relative_to(ROOT), host
    build = services["exporter"]["build"]
    context = (QUICKSTART / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()


def test_images_are_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
        if "build" not in service:
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image}: pin an exact version"


def test_the_stack_is_wired_together() -> None:
    services = compose()["services"]
    assert services["exporter"]["command"] == ["--demo"]
    assert any(p.endswith(":9891") for p in services["exporter"]["ports"])
    assert any(t == "/data" for v in services["exporter"]["volumes"] for t in [v.split(":")[1]])
    # Prometheus scrapes the exporter's service under the job the rules select.
    config = yaml.safe_load((QUICKSTART / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert f'job="{job["job_name"]}"' == load_rules_generator().Settings().job_selector
    assert job["static_configs"][0]["targets"] == ["exporter:9891"]
    # Grafana's provisioned datasource is this Prometheus; its dashboard provider reads the mounted dashboards.
    grafana = {target: host for host, target in bind_mounts(services["grafana"])}
    datasources = yaml.safe_load((grafana["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((grafana["/etc/grafana/provisioning/dashboards"] / "cdnetworks.yml").read_text())
    dashboards_dir = providers["providers"][0]["options"]["path"]
    assert grafana[dashboards_dir] == ROOT / "dashboards"
    assert len(list((ROOT / "dashboards").glob("*.json"))) == 4
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_dir + "/") and (ROOT / "dashboards" / Path(home).name).is_file()


def test_prometheus_config_checks_with_the_rules_where_compose_mounts_them(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    prometheus = compose()["services"]["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config_path = config_flag.split("=", 1)[1]
    # The container's file system, as far as the mounts make it: /etc/prometheus/... -> tmp_path/etc/...
    for host, target in bind_mounts(prometheus):
        dest = tmp_path / target.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(host, dest)
    result = subprocess.run([promtool, "check", "config", str(tmp_path / config_path.lstrip("/"))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    # Both rule files were found and read (promtool names each one it checks).
    assert "recording.yml" in result.stdout and "alerts.yml" in result.stdout, result.stdout


def test_readme_walks_through_the_stack() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try the full stack", 1)
    if len(section) < 2:
        pytest.fail("README.md has no 'Try the full stack' section")
    text = section[1].split("\n## ", 1)[0]
    assert "docker compose -f examples/quickstart/compose.yml up" in text
    for url in ("http://localhost:3000", "http://localhost:9090", "http://localhost:9891/metrics"):
        assert url in text, url
