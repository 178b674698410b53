"""What pip users get: the sdist built from this tree, and the wheel built from that sdist, as ``pip install``
and ``python -m build`` make them (PEP 517, isolated build environments).

Both carry the licence text and its SPDX metadata; the sdist holds what its tests need, and a few of those
tests run from the unpacked sdist against the wheel installed in a fresh virtual environment (the whole suite
would take too long for every CI run; these cover the config example, the dashboards, the rules' generator
and the wire code). The build downloads setuptools into its isolated environment, like any pip install.
"""

from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # tomllib is 3.11+; the project supports 3.10


def project_key(key: str) -> str:
    match = re.search(rf'^{re.escape(key)} = (.+)$', PYPROJECT.split("[project]", 1)[1], flags=re.M)
    assert match is not None, key
    return match.group(1).strip()


DIST = project_key("name").strip('"').replace("-", "_")
VERSION = project_key("version").strip('"')

# What the sdist must hold for its tests (and its users) besides the package.
SDIST_FILES = (
    "LICENSE", "README.md", "pyproject.toml", "config.example.yml", "Dockerfile",
    "tests/conftest.py", "tests/fixtures/expected.prom", "tests/fixtures/fmgr_notify_example.b64",
    "tests/schemas/compose-spec/compose-spec.json",
    "dashboards/overview.json", "dashboards/generate.py", "dashboards/provisioning/datasources/prometheus.yml",
    "prometheus/recording.yml", "prometheus/alerts.yml", "prometheus/slo.yml", "prometheus/generate.py",
    "prometheus/tests/tasks_test.yml",
    "examples/quickstart/compose.yml", "deploy", "docs/metrics.md", "scripts/test", ".ci/run",
)
# Run from the unpacked sdist against the installed wheel.
SUBSET = ("tests/test_config.py", "tests/test_dashboards.py", "tests/test_signing.py", "tests/test_cdn_pure.py")
# Local state that is no part of a source tree.
IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".venv", "data",
                                ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis", "*.db", "*.db-*")


def build(what: str, source: Path, out: Path) -> Path:
    """``python -m build --<what>`` of ``source`` into ``out``; the one file it made."""
    result = subprocess.run([sys.executable, "-m", "build", f"--{what}", "--outdir", str(out), str(source)],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (made,) = out.glob("*.tar.gz" if what == "sdist" else "*.whl")
    return made


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(sdist, wheel built from the unpacked sdist, the unpacked sdist)."""
    pytest.importorskip("build", reason="the build frontend is a test dependency (pip install .[test])")
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=IGNORE)  # building writes egg-info next to the sources: not here
    sdist = build("sdist", source, work / "sdist")
    with tarfile.open(sdist) as tar:
        tar.extractall(work / "unpacked", filter="data")
    unpacked = work / "unpacked" / f"{DIST}-{VERSION}"
    wheel = build("wheel", unpacked, work / "wheel")
    return sdist, wheel, unpacked


def test_the_sdist_holds_the_licence_and_what_its_tests_need(dists) -> None:
    sdist, _, _ = dists
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        licence = tar.extractfile(f"{DIST}-{VERSION}/LICENSE")
        assert licence is not None
        assert licence.read() == (ROOT / "LICENSE").read_bytes()
    for path in SDIST_FILES:
        assert path in names, f"the sdist has no {path}"
    # Every test module goes with it, and no local state does.
    assert {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".db"))]


def test_the_wheel_carries_the_licence_and_its_spdx_metadata(dists) -> None:
    _, wheel, _ = dists
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        assert whl.read(f"{DIST}-{VERSION}.dist-info/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        metadata = email.parser.Parser().parsestr(whl.read(f"{DIST}-{VERSION}.dist-info/METADATA").decode())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["License"] is None  # the deprecated free-text field is gone
    assert metadata["Author"]
    classifiers = metadata.get_all("Classifier") or []
    assert "Topic :: System :: Monitoring" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the SPDX expression says it
    assert "exporter/py.typed" in names
    assert not [n for n in names if n.startswith("tests/")]


def test_the_licence_is_the_apache_license_2() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert project_key("license") == '"Apache-2.0"' and project_key("license-files") == '["LICENSE"]'
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in (ROOT / "Dockerfile").read_text()


def test_tests_from_the_sdist_pass_against_the_wheel(dists, tmp_path: Path) -> None:
    _, wheel, unpacked = dists
    # A fresh environment that sees this interpreter's packages (the dependencies and pytest, no network
    # needed) but not the sources: the exporter it imports is the wheel's.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--disable-pip-version-check", str(wheel)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(unpacked / "exporter")  # so that nothing can import the sdist's copy
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")
           and not k.startswith("CDNETWORKS_EXPORTER_")}
    where = subprocess.run([str(python), "-c", "import exporter; print(exporter.__file__)"], cwd=unpacked,
                           capture_output=True, text=True, timeout=60, check=False, env=env)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout
    result = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUBSET], cwd=unpacked,
                            capture_output=True, text=True, timeout=300, check=False, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.rsplit("\n", 2)[-2], result.stdout[-500:]
