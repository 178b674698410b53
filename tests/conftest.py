"""Shared fixtures: a fake clock shared by the simulator and the exporter, a started simulator, and a
config builder that goes through the real config parser."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from exporter.config import Config, parse_config
from exporter.simulator import ManualClock, Simulator

ROOT = Path(__file__).resolve().parent.parent

T0 = 1795334400.0  # 2026-11-22 08:00:00 UTC, on a minute boundary


class Clock(ManualClock):
    """The shared fake clock, starting at T0 unless told otherwise."""

    def __init__(self, t: float = T0) -> None:
        super().__init__(t)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim_factory(clock):
    started: list[Simulator] = []

    def make(**kwargs: Any) -> Simulator:
        kwargs.setdefault("clock", clock)
        sim = Simulator(**kwargs)
        sim.add_account("acme", "acme-key")
        sim.add_account("globex", access_key="globex-ak", secret_key="globex-sk")
        sim.start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


BASE: dict[str, Any] = {
    "accounts": [
        {"name": "acme", "username": "acme", "api_key": "acme-key"},
        {"name": "globex", "auth": "aksk", "access_key": "globex-ak", "secret_key": "globex-sk"},
    ],
    "prefetch": {"windows": ["15m", "1h", "24h"], "poll_interval": "5m", "lookback": "24h", "page_size": 100,
                 "rate_limit": {"requests": 1000, "per": "1s"}, "request_timeout": "2s"},
    "purge": {"enabled": False},
    "fmgr": {"enabled": False},
}


def make_config(sim_url: str, storage: str, **overrides: Any) -> Config:
    """BASE pointed at the simulator, with top-level sections shallow-merged from ``overrides``."""
    data = copy.deepcopy(BASE)
    for acct in data["accounts"]:
        acct["endpoint"] = sim_url
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    data["storage"] = {"path": storage}
    return parse_config(data)


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A simulator on the real clock, for tests that run the exporter as a process: 120 prefetch tasks an hour
    for account "acme" over the last two hours and on."""
    sim = Simulator(seed=7)
    sim.add_account("acme", "acme-key")
    sim.add_cdn_stream("acme", "prefetch", per_hour=120, failure_ratio=0.1, start_ts=time.time() - 7200)
    sim.start()
    yield sim
    sim.stop()


def require_tool(binary: str, package: str = "prometheus") -> str:
    """A binary a test needs (promtool, prometheus, podman-compose): missing, it fails the test under CI=true,
    where the test command installs it (from the Debian ``package``), and skips it elsewhere."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{binary} is not installed (CI=true): install the Debian '{package}' package")
        pytest.skip(f"{binary} is not installed")
    return path


def load_rules_generator() -> ModuleType:
    """prometheus/generate.py (a script, not a package module), loaded once under one name."""
    name = "cdnetworks_rules_generate"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "prometheus" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def assert_counts_match_what_was_served(sim: Simulator, shown: dict[str, int], user: str, kind: str, start: float,
                                        end: float, what: str = "") -> None:
    """``shown`` (tasks created in [start, end] by status) is exactly what the vendor served: every task it
    serves is there (except those it served late, after their range was read), each by its status when last
    served; a success may also have been learnt from a sweep by state, never more of them than really
    succeeded since they were last served, and failures only ever from a read."""
    known = sim.cdn_known_truth(user, kind, start, end)
    served = sim.cdn_truth(user, kind, start, end)["total"]
    late = sim.cdn_late_count(user, kind, start, end)
    shown = {s: shown.get(s, 0) for s in ("wait", "run", "success", "failure")}
    inferred = shown["success"] - known["success"]
    assert served - late <= known["total"] <= served, (what, "missing tasks", known, served, late)
    assert shown["failure"] == known["failure"], (what, shown, known)
    assert 0 <= inferred <= known["succeeded_since"], (what, shown, known)
    assert shown["wait"] + shown["run"] == known["wait"] + known["run"] - inferred, (what, shown, known)


# ---------------------------------------------------------------------- PostgreSQL: a throwaway cluster
def postgres_bindir() -> Path | None:
    """The directory of initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/VERSION/bin (the newest)."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).parent
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if (p.parent / "pg_ctl").exists()]
    versions = [(tuple(int(x) for x in p.parent.name.split(".") if x.isdigit()), p) for p in found]
    return max(versions)[1] if versions else None


def require_postgres() -> Path:
    """The PostgreSQL server binaries: missing, they fail the test under CI=true, where the test command
    installs them, and skip it elsewhere (as ``require_tool``)."""
    bindir = postgres_bindir()
    missing = "PostgreSQL server binaries (initdb, pg_ctl) are not installed" if bindir is None else None
    if missing is None and os.geteuid() == 0 and not _user_exists("postgres"):
        missing = "running as root, and there is no 'postgres' user to run the PostgreSQL server as"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} (CI=true): install the Debian 'postgresql' package")
        pytest.skip(missing)
    assert bindir is not None
    return bindir


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """A PostgreSQL cluster of its own: a temporary directory, a free loopback port, trust authentication,
    fsync off (a test never survives a power cut). The server refuses to run as root: when the tests do, it
    runs as the ``postgres`` user."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="cdnx-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._databases = 0
        self.port = 0
        try:
            if self._as:
                shutil.chown(self.dir, "postgres", "postgres")
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
                      "--locale=C", "--no-sync")
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} exited {done.returncode}: {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        """Start the server, on the port it had before if it had one (clients reconnect to the same URL)."""
        for attempt in range(3):
            port = self.port or free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={self.dir} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                          "start")
            except RuntimeError:
                if self.port or attempt == 2:  # a port taken meanwhile is tried again with another one
                    raise
                continue
            self.port = port
            return

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def sql(self, query: str, *args: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """One statement as the superuser, in autocommit; its rows (none for a statement without)."""
        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cur = conn.execute(query, args or None)
            return cur.fetchall() if cur.description is not None else []

    def create_database(self) -> str:
        """A new empty database; its name."""
        self._databases += 1
        name = f"test_{self._databases}"
        # Copying the template's files is several times faster than WAL-logging them (15's default) with fsync
        # off; older servers know only the file copy and not the option.
        newer = int(self.sql("SHOW server_version_num")[0][0]) >= 150000
        self.sql(f"CREATE DATABASE {name}" + (" STRATEGY = FILE_COPY" if newer else ""))
        return name

    def drop_database(self, name: str) -> None:
        self.sql(f"DROP DATABASE {name} WITH (FORCE)")

    def create_schema(self) -> str:
        """A new empty schema in the ``postgres`` database (milliseconds, where a database takes a tenth of a
        second or more); the URL of a client that sees only it (``search_path`` set by the URL)."""
        self._databases += 1
        name = f"test_{self._databases}"
        self.sql(f"CREATE SCHEMA {name}")
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def drop_schema(self, url: str) -> None:
        self.sql(f"DROP SCHEMA {url.rpartition('%3D')[2]} CASCADE")

    def terminate(self, dbname: str) -> int:
        """Cut every client connection to ``dbname`` (as a server restart or a failover does); how many."""
        rows = self.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", dbname)
        return int(rows[0][0])

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.dir)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the whole session, stopped and removed at its end, failed tests or not."""
    cluster = PostgresCluster(require_postgres())
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL store on the session's cluster (a schema of its own), dropped after
    the test."""
    url = postgres_cluster.create_schema()
    yield url
    postgres_cluster.drop_schema(url)
