"""Helpers shared by the benchmark scripts.

Machines are noisy, so every timing benchmark measures its two sides interleaved in one run (A then B,
then B then A, ...) and compares medians; a slow moment of the machine then hits both sides alike.
Each script records its goals with :class:`Goals` and exits non-zero when one is missed; the
``RESULT`` lines it prints are what ``run_all.sh`` collects into its summary.
"""

from __future__ import annotations

import base64
import gc
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from exporter.simulator import ManualClock
from exporter.vendor import signing

ROOT = Path(__file__).resolve().parent.parent
T0 = 1795334400.0  # 2026-11-22 08:00:00 UTC, on a minute boundary (as in the tests)
DAY = 86400.0


class Clock(ManualClock):
    """The shared fake clock, starting at T0 unless told otherwise."""

    def __init__(self, t: float = T0) -> None:
        super().__init__(t)


def time_interleaved(
    sides: dict[str, Callable[[], object]],
    repeats: int,
    before_each: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each side, ``repeats`` times, alternating the order of the sides every round.

    ``before_each[name]`` (untimed) runs right before each timed call of that side, e.g. to change the
    store so that the call after it starts cold.
    """
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    before_each = before_each or {}
    gc.collect()
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            prep = before_each.get(name)
            if prep is not None:
                prep()
            started = time.perf_counter()
            sides[name]()
            out[name].append(time.perf_counter() - started)
    return out


def median_ms(samples: Sequence[float]) -> float:
    return statistics.median(samples) * 1000.0


def p90_ms(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000.0


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        # Headers and the first column (row names) read left to right; numbers line up on the right.
        padded = (v.rjust(w) if n and i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True)))
        print("  ".join(padded))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


class StaticCollector(Collector):
    """Yields pre-built metric families: the cheapest possible source of a given exposition."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def static_registry(exposition: str) -> CollectorRegistry:
    """A registry that serves exactly the series of ``exposition`` (text format), parsed once up front."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StaticCollector(list(text_string_to_metric_families(exposition))))
    return registry


def samples_of(exposition: str) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    """Every sample of an exposition as (name, sorted labels, value), for comparing two renders."""
    return {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


class Goals:
    """Goal checks of one benchmark; ``exit_code()`` is 1 when any was missed."""

    def __init__(self, bench: str) -> None:
        self.bench = bench
        self.results: list[tuple[str, str]] = []

    def check(self, ok: bool, text: str) -> bool:
        self.results.append(("PASS" if ok else "FAIL", text))
        return ok

    def note(self, text: str) -> None:
        """A measured number that has no goal but belongs in the summary."""
        self.results.append(("INFO", text))

    def exit_code(self) -> int:
        print()
        for verdict, text in self.results:
            print(f"RESULT {self.bench}: {verdict} {text}")
        return 1 if any(verdict == "FAIL" for verdict, _ in self.results) else 0


def signed_notification(n: int, *, prefix: str, ops: Sequence[str], access_key: str, secret_key: str,
                        notify_url: str, cmds: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The ``n``-th distinct Fmgr notification (seed 001's shape, 1 to 3 items, 10% failed) and its signature:
    a body and an ``Authorization`` the exporter accepts for ``notify_url`` and that key."""
    rng = random.Random(n)
    items = []
    for i in range(1 + n % 3):
        failed = rng.random() < 0.1
        op = ops[(n + i) % len(ops)]
        items.append({
            "cmd": (cmds or {}).get(op, f"{op}/aHR0cDovL29yaWdpbi5leGFtcGxlLmNvbS97bn0=/bucket/YnVja2V0"),
            "code": 2 if failed else 3, "desc": "fileOperateFailed" if failed else "fileOperateSucceed",
            "error": "source file not found" if failed else None, "hash": f"h{n:08x}{i}",
            "fsize": 0 if failed else rng.randrange(1, 1 << 30), "key": f"{prefix}/{n}/{i}.mp4",
            "url": f"http://origin.example.com/{prefix}/{n}/{i}.mp4",
        })
    status = {"id": f"{prefix}{n:09d}{rng.getrandbits(48):012x}", "code": 3, "desc": "fileOperateSucceed",
              "separate": 0, "items": items}
    body = base64.urlsafe_b64encode(json.dumps(status, separators=(",", ":")).encode())
    return body, signing.fmgr_notify_authorization(access_key, secret_key, notify_url, body)


# ---------------------------------------------------------------------- PostgreSQL: a throwaway cluster
def _test_support() -> ModuleType:
    """tests/conftest.py, loaded once under a name of its own: its throwaway PostgreSQL cluster
    (``PostgresCluster``, ``postgres_bindir``) is the one the test suite uses, not a copy."""
    name = "cdnetworks_tests_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def postgres_missing() -> str | None:
    """Why no throwaway PostgreSQL cluster can be started here (None when one can)."""
    try:
        support = _test_support()
    except ImportError as exc:  # pytest: the cluster code lives with the tests
        return f"cannot load tests/conftest.py ({exc}); install the test extras: pip install -e '.[test]'"
    if support.postgres_bindir() is None:
        return "the PostgreSQL server binaries (initdb, pg_ctl) are not installed: install Debian's 'postgresql'"
    if os.geteuid() == 0:
        import pwd  # POSIX only, as is running as root

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the PostgreSQL server as"
    return None


@contextmanager
def postgres_cluster() -> Iterator[Any]:
    """The test suite's throwaway cluster (tests/conftest.py ``PostgresCluster``): a temporary directory, a free
    loopback port, trust authentication, fsync off; stopped and removed at the end. Check
    ``postgres_missing()`` first."""
    support = _test_support()
    cluster = support.PostgresCluster(support.postgres_bindir())
    try:
        yield cluster
    finally:
        cluster.destroy()


def cluster_cpu_seconds(cluster: Any) -> float:
    """CPU time (user + system) used so far by a cluster's server processes still running: the postmaster
    and its children (one backend per client connection)."""
    try:
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(stat.parent.name) == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def wait_ready(url: str, proc: Any, log: Path, timeout: float = 60.0) -> None:
    """Until the exporter process at ``url`` answers /readyz 200; RuntimeError when it exits or takes too long."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url + "/readyz", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the exporter did not start; see {log}")
        time.sleep(0.2)


def stop_process(proc: Any) -> None:
    """SIGTERM an exporter process and wait for it; SIGKILL when it does not stop within 15 s."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
