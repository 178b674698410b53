"""The container image, built from the top-level Dockerfile and run with podman: ``scripts/test-container``.

It takes a minute or two (a few more the first time, to make the Debian base image), so it runs under
``CI=true`` (where ``scripts/test`` installs podman and a missing podman is a failure) or when asked with
``CDNETWORKS_TEST_CONTAINER=1``; elsewhere it is skipped with a message. The script's own output says what it
checks; the static checks of the Dockerfile below run everywhere.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
TIMEOUT = 20 * 60  # the first run makes the base image with debootstrap


def test_the_image_builds_runs_stops_and_keeps_its_store() -> None:
    if os.environ.get("CI") != "true" and os.environ.get("CDNETWORKS_TEST_CONTAINER") != "1":
        pytest.skip("container test runs under CI=true or CDNETWORKS_TEST_CONTAINER=1 (needs root and podman)")
    require_tool("podman")
    if os.geteuid() != 0:
        pytest.fail("the container test needs root (podman with runc and cgroupfs, debootstrap)")
    result = subprocess.run([str(ROOT / "scripts" / "test-container")], capture_output=True, text=True,
                            timeout=TIMEOUT, check=False, cwd=ROOT)
    print(result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test-container: OK" in result.stderr


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(.*)$", DOCKERFILE, flags=re.M)
    assert match, name
    return match.group(1)


def test_dockerfile_version_label_follows_the_package() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert dockerfile_arg("VERSION") == version


def test_dockerfile_uses_the_documented_paths_and_port() -> None:
    assert re.search(r"^EXPOSE 9891$", DOCKERFILE, flags=re.M)
    assert re.search(r'^VOLUME \["/data"\]$', DOCKERFILE, flags=re.M)
    assert "CDNETWORKS_EXPORTER_STORAGE_PATH=/data/" in DOCKERFILE
    assert "CDNETWORKS_EXPORTER_CONFIG_FILE=/etc/cdnetworks-exporter/config.yml" in DOCKERFILE
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", DOCKERFILE, flags=re.M) and dockerfile_arg("UID") == "10001"
    assert re.search(r'^ENTRYPOINT \["cdnetworks-exporter"\]$', DOCKERFILE, flags=re.M)
    readme = (ROOT / "README.md").read_text()
    for documented in ("/etc/cdnetworks-exporter/config.yml", "/data/cdnetworks-exporter.db", "10001"):
        assert documented in readme, documented
