"""Shared fixtures: a fake clock shared by the simulator and the exporter, a started simulator, and a
config builder that goes through the real config parser."""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

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


def require_tool(binary: str) -> str:
    """A binary a test needs (promtool, prometheus): missing, it fails the test under CI=true, where the test
    command installs it, and skips it elsewhere."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{binary} is not installed (CI=true): install the Debian 'prometheus' package")
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
