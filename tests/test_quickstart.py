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


def registry_of(image: str) -> str | None:
    """The registry an image name names, as docker and podman read it: the first component, when it has a dot
    or a port or is ``localhost``; None for a short name (``prom/prometheus``), which podman refuses to pull
    unless its registries.conf resolves it ("short-name ... did not resolve to an alias")."""
    first, sep, _ = image.partition("/")
    return first if sep and ("." in first or ":" in first or first == "localhost") else None


def test_every_image_name_is_fully_qualified() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        assert registry_of(image), f"{name}: {image} is a short name; name its registry (docker.io/...)"
        if "build" in service:
            assert registry_of(image) == "localhost", f"{name}: a locally built image is localhost/..."
    # The Dockerfile's default base image too (a compose build uses it).
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M)
    assert base is not None and registry_of(base.group(1)) == "docker.io", base


def test_the_qualification_check_can_fail() -> None:
    assert registry_of("prom/prometheus:v2.53.0") is None
    assert registry_of("grafana:11") is None
    assert registry_of("quay.io/prometheus/prometheus:v2.53.0") == "quay.io"
    assert registry_of("localhost:5000/x:1") == "localhost:5000"


def test_every_build_argument_has_a_default() -> None:
    # A compose build passes no --build-arg; podman warns about each ARG without a value ("missing PIP_CERT
    # build argument").
    args = re.findall(r"^ARG\s+(\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M)
    assert args
    assert [a for a in args if "=" not in a] == []


def podman_compose(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("podman-compose", package="podman-compose")
    require_tool("podman", package="podman")  # podman-compose asks it for its version first
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


def test_podman_compose_accepts_the_file(tmp_path: Path) -> None:
    help_text = podman_compose("--help").stdout
    if re.search(r"\bconfig\b", help_text.split("command", 1)[-1]):
        # podman-compose >= 1.1: `config` reads, validates and prints the file.
        result = podman_compose("-f", str(COMPOSE_FILE), "config")
        assert result.returncode == 0, result.stdout + result.stderr
        for service in compose()["services"].values():
            assert service["image"] in result.stdout
        broken_command = "config"
    else:
        # Debian 12's podman-compose 1.0.3 has no `config`: every command reads and normalises the file first,
        # and `--dry-run ps` then only prints the podman command it would run (nothing is created).
        result = podman_compose("--dry-run", "-f", str(COMPOSE_FILE), "ps")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "podman ps" in result.stdout, result.stdout
        broken_command = "ps"
    # And it is a check that can fail: the same file with its services as a list is refused.
    broken = compose()
    broken["services"] = list(broken["services"])
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(broken))
    refused = podman_compose(*(["--dry-run"] if broken_command == "ps" else []), "-f", str(path), broken_command)
    assert refused.returncode != 0, refused.stdout


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
    # Every rule file was found and read (promtool names each one it checks).
    for name in ("recording.yml", "alerts.yml", "slo.yml"):
        assert name in result.stdout, result.stdout


def test_readme_walks_through_the_stack() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try the full stack", 1)
    if len(section) < 2:
        pytest.fail("README.md has no 'Try the full stack' section")
    text = section[1].split("\n## ", 1)[0]
    assert "docker compose -f examples/quickstart/compose.yml up" in text
    assert "podman-compose -f examples/quickstart/compose.yml up" in text
    assert "podman compose -f" not in text  # no such command in Debian 12's podman
    for url in ("http://localhost:3000", "http://localhost:9090", "http://localhost:9891/metrics"):
        assert url in text, url
