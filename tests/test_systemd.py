"""deploy/systemd: ``systemd-analyze verify`` on the unit (where systemd-analyze exists; any warning it prints
counts as a failure, since it reports unknown keys only as warnings), its hardening and reload, and its config:
the secrets it loads with LoadCredential= are the files config.yml reads from $CREDENTIALS_DIRECTORY, and the
config is valid for the exporter itself.

Nothing here starts the service (no systemd runs on these machines): what ``systemd-analyze verify`` and the
exporter's --check-config see is what is checked.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SYSTEMD = ROOT / "deploy" / "systemd"
UNIT = SYSTEMD / "cdnetworks-exporter.service"
INSTALLED = "/opt/cdnetworks-exporter/bin/cdnetworks-exporter"


def directives() -> dict[str, list[str]]:
    """Key -> every value of it in the unit (continuation lines joined)."""
    text = UNIT.read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if re.match(r"^[A-Za-z]+=", line):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(" ".join(value.split()))
    return out


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart is executable: point it at the console script installed with this Python.
    script = Path(sys.executable).parent / "cdnetworks-exporter"
    if not script.exists():
        pytest.skip("cdnetworks-exporter is not installed next to this Python")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(script)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    if "Failed to" in result.stderr and "bus" in result.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), \
        result.stdout + result.stderr


def test_verify_would_notice_a_misspelt_key(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    script = Path(sys.executable).parent / "cdnetworks-exporter"
    if analyze is None or not script.exists():
        pytest.skip("systemd-analyze or the console script is missing")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(script)).replace("ProtectClock=", "ProtectClok="))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert "ProtectClok" in result.stderr


def test_unit_is_hardened_and_reloads_with_sighup() -> None:
    d = directives()
    assert d["ExecStart"][0].startswith(INSTALLED + " ")
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for key, value in {
        "DynamicUser": "yes", "StateDirectory": "cdnetworks-exporter", "ProtectSystem": "strict",
        "NoNewPrivileges": "yes", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes", "RestrictNamespaces": "yes", "SystemCallArchitectures": "native",
    }.items():
        assert d.get(key) == [value], key
    # The store is the only thing written, and it lives in the StateDirectory.
    assert "--storage.path=/var/lib/cdnetworks-exporter/" in d["ExecStart"][0]
    assert d["RestartPreventExitStatus"] == ["2"]  # a config error does not restart in a loop
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text().replace("\\\n", " "))
    assert parser.sections() == ["Unit", "Service", "Install"]


def test_credentials_are_what_the_config_reads(tmp_path: Path) -> None:
    loaded = {v.split(":", 1)[0] for v in directives()["LoadCredential"]}
    config_text = (SYSTEMD / "config.yml").read_text()
    read = set(re.findall(r"\$\{CREDENTIALS_DIRECTORY\}/(\w+)", config_text))
    assert loaded == read and len(read) == 3
    # As systemd hands them over: one file per credential in $CREDENTIALS_DIRECTORY.
    for name in loaded:
        (tmp_path / name).write_text(f"{name}-value\n")
    env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "exporter.cli", "--config.file", str(SYSTEMD / "config.yml"),
                             "--check-config"], capture_output=True, text=True, timeout=60, check=False, env=env,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr
    # Without the credentials (run outside the unit), every missing file is named.
    (tmp_path / "acme_api_key").unlink()
    result = subprocess.run([sys.executable, "-m", "exporter.cli", "--config.file", str(SYSTEMD / "config.yml"),
                             "--check-config"], capture_output=True, text=True, timeout=60, check=False, env=env,
                            cwd=ROOT)
    assert result.returncode == 2 and "accounts[0].api_key_file" in result.stderr, result.stderr
