"""Reloading the configuration: ``POST /-/reload`` (and SIGHUP, through the same ``Exporter.reload``).

A real exporter (``exporter.app.Exporter`` with its config loader reading a file, HTTP server and pollers
started) against the simulator, on the real clock with a one-second poll interval; everything is observed
over HTTP. A reload that cannot be applied (bad file, a store that cannot be opened) must leave the running
configuration serving and polling, and say so in ``cdnetworks_config_last_reload_successful``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config import load_config
from exporter.http.webconfig import load_web_config
from exporter.simulator import Simulator

TIMEOUT = 5
WAIT = 30.0
RELOAD = "/-/reload"


def write_config(path: Path, sim_url: str, windows: list[str], **extra: Any) -> None:
    path.write_text(yaml.safe_dump({
        "accounts": [{"name": "acme", "username": "acme", "api_key": "acme-key", "endpoint": sim_url}],
        "prefetch": {"windows": windows, "poll_interval": "1s", "lookback": "1h",
                     "rate_limit": {"requests": 100, "per": "1s"}, "request_timeout": "5s"},
        "fmgr": {"enabled": False},
        "storage": {"path": str(path.parent / "store.db")},
        **extra,
    }))


@pytest.fixture
def running(tmp_path: Path, simulator: Simulator) -> Iterator[Callable[..., tuple[Exporter, Path]]]:
    started: list[Exporter] = []

    def start(web_config: Path | None = None) -> tuple[Exporter, Path]:
        config = tmp_path / "config.yml"
        write_config(config, simulator.url, ["15m", "1h"])
        exporter = Exporter(load_config(config), listen_address="127.0.0.1:0",
                            web_config=load_web_config(web_config) if web_config else None,
                            config_loader=lambda: load_config(config))
        exporter.start()
        started.append(exporter)
        return exporter, config

    yield start
    for exporter in started:
        exporter.stop()


def scrape(url: str, **kwargs: Any) -> dict[tuple[str, frozenset], float]:
    response = requests.get(url + "/metrics", timeout=TIMEOUT, **kwargs)
    assert response.status_code == 200, response.text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(metrics: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in metrics.items() if n == name and want <= lab)


def windows(metrics: dict[tuple[str, frozenset], float]) -> set[str]:
    return {dict(lab)["window"] for (n, lab) in metrics if n == "cdnetworks_prefetch_tasks"}


def ok_requests(url: str) -> float:
    return value(scrape(url), "cdnetworks_api_requests_total", api="prefetch", result="ok")


def wait_until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def assert_still_polling(url: str) -> None:
    before = ok_requests(url)
    wait_until("the running pollers to make another successful request", lambda: ok_requests(url) > before)


# --------------------------------------------------------------------------------------------------


def test_post_reload_applies_the_new_config(running, simulator: Simulator) -> None:
    exporter, config = running()
    url = exporter.server.url
    first = scrape(url)
    assert windows(first) == {"15m", "1h"}
    assert value(first, "cdnetworks_config_last_reload_successful") == 1
    loaded_at = value(first, "cdnetworks_config_last_reload_success_timestamp_seconds")
    assert loaded_at > 0

    write_config(config, simulator.url, ["15m", "6h"])
    time.sleep(0.01)  # the success timestamp must visibly move
    response = requests.post(url + RELOAD, timeout=WAIT)
    assert response.status_code == 200, response.text
    # The answer comes once the new configuration serves: no waiting needed.
    after = scrape(url)
    assert windows(after) == {"15m", "6h"}
    assert value(after, "cdnetworks_config_last_reload_successful") == 1
    assert value(after, "cdnetworks_config_last_reload_success_timestamp_seconds") > loaded_at
    assert_still_polling(url)


def test_reload_only_answers_post(running) -> None:
    exporter, _ = running()
    for method in ("GET", "PUT", "DELETE"):
        response = requests.request(method, exporter.server.url + RELOAD, timeout=TIMEOUT)
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "POST"


def test_a_broken_config_keeps_the_running_one(running, simulator: Simulator) -> None:
    exporter, config = running()
    url = exporter.server.url
    wait_until("a successful poll", lambda: ok_requests(url) > 0)
    loaded_at = value(scrape(url), "cdnetworks_config_last_reload_success_timestamp_seconds")

    config.write_text("prefetch:\n  windows: [2x]\n")
    response = requests.post(url + RELOAD, timeout=WAIT)
    assert response.status_code == 500
    assert "prefetch.windows[0]" in response.text

    metrics = scrape(url)
    assert windows(metrics) == {"15m", "1h"}
    assert value(metrics, "cdnetworks_config_last_reload_successful") == 0
    assert value(metrics, "cdnetworks_config_last_reload_success_timestamp_seconds") == loaded_at
    assert requests.get(url + "/readyz", timeout=TIMEOUT).status_code == 200
    assert_still_polling(url)

    # Fixed, the next reload succeeds and the gauge says so.
    write_config(config, simulator.url, ["1h"])
    assert requests.post(url + RELOAD, timeout=WAIT).status_code == 200
    metrics = scrape(url)
    assert windows(metrics) == {"1h"}
    assert value(metrics, "cdnetworks_config_last_reload_successful") == 1


def test_a_store_that_cannot_be_opened_keeps_the_running_one(running, simulator: Simulator, tmp_path: Path) -> None:
    # A database written by a newer exporter: opening it fails, after the configuration itself validated.
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(newer)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '999')")
    conn.commit()
    conn.close()

    exporter, config = running()
    url = exporter.server.url
    wait_until("a successful poll", lambda: ok_requests(url) > 0)
    write_config(config, simulator.url, ["6h"], storage={"path": str(newer)})
    response = requests.post(url + RELOAD, timeout=WAIT)
    assert response.status_code == 500
    assert "schema version 999" in response.text

    metrics = scrape(url)
    assert windows(metrics) == {"15m", "1h"}
    assert value(metrics, "cdnetworks_config_last_reload_successful") == 0
    assert requests.get(url + "/readyz", timeout=TIMEOUT).status_code == 200
    assert_still_polling(url)


def test_reload_can_move_the_store(running, simulator: Simulator, tmp_path: Path) -> None:
    exporter, config = running()
    url = exporter.server.url
    wait_until("a successful poll", lambda: ok_requests(url) > 0)
    moved = tmp_path / "moved" / "store.db"
    write_config(config, simulator.url, ["15m", "1h"], storage={"path": str(moved)})
    assert requests.post(url + RELOAD, timeout=WAIT).status_code == 200
    assert exporter.store.path == str(moved)
    # The new pollers write to the new file.
    wait_until("tasks in the new store", lambda: moved.exists() and sqlite3.connect(moved).execute(
        "SELECT count(*) FROM cdn_tasks").fetchone()[0] > 0)
    assert requests.get(url + "/readyz", timeout=TIMEOUT).status_code == 200


def test_reload_needs_the_basic_auth_credentials(running, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {
        "ops": bcrypt.hashpw(b"reload-me", bcrypt.gensalt(4)).decode()}}))
    exporter, _ = running(web_config=web)
    url = exporter.server.url
    assert requests.post(url + RELOAD, timeout=TIMEOUT).status_code == 401
    assert requests.post(url + RELOAD, auth=("ops", "wrong"), timeout=TIMEOUT).status_code == 401
    assert requests.post(url + RELOAD, auth=("ops", "reload-me"), timeout=WAIT).status_code == 200
    metrics = scrape(url, auth=("ops", "reload-me"))
    assert value(metrics, "cdnetworks_config_last_reload_successful") == 1


def test_scrapes_during_reloads_see_one_config_or_the_other(running, simulator: Simulator) -> None:
    exporter, config = running()
    url = exporter.server.url
    seen: list[frozenset[str]] = []
    failures: list[str] = []
    done = threading.Event()

    def scraper() -> None:
        with requests.Session() as session:
            while not done.is_set():
                response = session.get(url + "/metrics", timeout=TIMEOUT)
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:200]}")
                    continue
                names = frozenset(
                    s.labels["window"] for f in text_string_to_metric_families(response.text) for s in f.samples
                    if s.name == "cdnetworks_prefetch_tasks")
                seen.append(names)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for i in range(6):
            write_config(config, simulator.url, ["15m", "6h"] if i % 2 == 0 else ["15m", "1h"])
            assert requests.post(url + RELOAD, timeout=WAIT).status_code == 200
    finally:
        done.set()
        thread.join(timeout=WAIT)
    assert not failures
    assert seen
    assert set(seen) <= {frozenset({"15m", "1h"}), frozenset({"15m", "6h"})}
