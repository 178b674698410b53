"""``--demo``: the exporter against the built-in simulator, with a generated configuration.

Two CDN accounts (one per auth scheme) with a steady stream of tasks of every CDN task kind, Fmgr jobs
that notify the exporter with signed callbacks (a few duplicated or forged, as in real life), and a
small "job runner" that registers other Fmgr ids through the registration API: jobs without a notifyURL
(they stay at code 3) and jobs whose notifyURL the vendor sometimes cannot reach (they end at code 5,
so the dashboards and CDNetworksFmgrNotificationsFailing show notification failures). The daily quotas of both
accounts are polled too; the tasks the streams submit use them up over the vendor's day. Rate budgets are set
generously so that things move within seconds, and the simulator enforces them.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

import requests

from exporter.http.web import parse_listen_address
from exporter.kinds import KINDS
from exporter.quotas import QUOTA_KINDS
from exporter.simulator import Simulator

log = logging.getLogger(__name__)

DEMO_TOKEN = "demo-register-token"
DEMO_NOTIFY_KEY = ("demo-access-key", "demo-secret-key")
BUDGET_REQUESTS = 5  # per second, for each CDN task kind
BUDGET = {"requests": BUDGET_REQUESTS, "per": "1s"}
QUOTA_BUDGET = (2, 10.0)  # each quota query: 2 requests per 10 seconds
REGISTERED = ("job-", "hook-")  # the Fmgr streams whose ids the job runner registers


def fixed_port(listen_address: str) -> str:
    """``listen_address`` with port 0 replaced by a port free now: the simulator is told where to send its
    notifications before the exporter listens, so the demo cannot wait for the kernel's choice."""
    host, port = parse_listen_address(listen_address)
    if port != 0:
        return listen_address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
        port = probe.getsockname()[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def local_base_url(listen_address: str) -> str:
    host, port = parse_listen_address(listen_address)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


def start_simulator(exporter_url: str, *, now: float | None = None) -> Simulator:
    now = time.time() if now is None else now
    sim = Simulator(seed=42, max_page_size=200,
                    rate_limits={**{kind.name: (BUDGET_REQUESTS, 1.0) for kind in KINDS},
                                 **{kind.api: QUOTA_BUDGET for kind in QUOTA_KINDS}})
    sim.add_account("acme", "acme-demo-api-key")
    sim.add_account("globex", access_key="globex-demo-ak", secret_key="globex-demo-sk")
    for user, per_hour, failing in (("acme", 600.0, 0.03), ("globex", 240.0, 0.12)):
        for kind in KINDS:
            # The kinds on by default are what most accounts use: theirs are the busy streams, the others a
            # quarter as busy and failing half as often.
            share, fails = (1.0, 1.0) if kind.enabled else (0.25, 0.5)
            sim.add_cdn_stream(user, kind.name, per_hour=per_hour * share, failure_ratio=failing * fails,
                               start_ts=now - 2 * 86400)
    sim.add_fmgr_stream(per_minute=20, start_ts=now - 600, failure_ratio=0.08,
                        notify_url=exporter_url + "/notify/fmgr", notify_key=DEMO_NOTIFY_KEY, id_prefix="notify")
    sim.add_fmgr_stream(per_minute=6, start_ts=now - 300, failure_ratio=0.15, id_prefix="job")
    sim.add_fmgr_stream(per_minute=6, start_ts=now - 300, failure_ratio=0.1, notify_failure_ratio=0.2,
                        notify_url=exporter_url + "/notify/fmgr", notify_key=DEMO_NOTIFY_KEY, id_prefix="hook")
    sim.start()
    sim.start_notifier(duplicate_ratio=0.1, forged_ratio=0.02)
    return sim


def demo_config(sim_url: str, exporter_url: str, storage_path: str) -> dict[str, Any]:
    section = {"enabled": True, "windows": ["15m", "1h", "24h"], "poll_interval": "10s", "lookback": "24h",
               "page_size": 400, "rate_limit": BUDGET}
    return {
        "accounts": [
            {"name": "acme", "username": "acme", "api_key": "acme-demo-api-key", "endpoint": sim_url},
            {"name": "globex", "auth": "aksk", "access_key": "globex-demo-ak", "secret_key": "globex-demo-sk",
             "endpoint": sim_url},
        ],
        **{kind.name: dict(section) for kind in KINDS},
        "fmgr": {
            "enabled": True, "endpoint": sim_url, "windows": ["1h", "24h"], "poll_interval": "5s",
            "register_token": DEMO_TOKEN, "rate_limit": {"requests": 20, "per": "1s"},
            # Things move within seconds here: settle the notification phase quickly too.
            "notify_grace": "30s", "confirm_delay": "3s",
            "notify": {"url": exporter_url + "/notify/fmgr",
                       "keys": [{"access_key": DEMO_NOTIFY_KEY[0], "secret_key": DEMO_NOTIFY_KEY[1]}]},
        },
        # Read every 10 seconds here (the default is 5 minutes), within the simulator's budget for them.
        "quota": {"enabled": True, "poll_interval": "10s",
                  "rate_limit": {"requests": QUOTA_BUDGET[0], "per": f"{QUOTA_BUDGET[1]:g}s"}},
        "storage": {"path": storage_path},
    }


class JobRunner:
    """Registers the simulator's ``job-*`` and ``hook-*`` Fmgr ids with the exporter, like a CI job would after
    submitting."""

    def __init__(self, sim: Simulator, exporter_url: str, interval: float = 2.0) -> None:
        self.sim, self.url, self.interval = sim, exporter_url, interval
        self.sent: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-job-runner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.wait(self.interval):
            ids = [i for i in self.sim.fmgr_ids() if i.startswith(REGISTERED) and i not in self.sent]
            if not ids:
                continue
            try:
                resp = session.post(self.url + "/api/v1/fmgr/tasks", data=json.dumps({"persistentIds": ids[:500]}),
                                    headers={"Authorization": f"Bearer {DEMO_TOKEN}",
                                             "Content-Type": "application/json"}, timeout=5)
                if resp.status_code == 200:
                    self.sent.update(ids[:500])
                else:
                    log.warning("demo job runner: registration answered %s: %s", resp.status_code, resp.text[:200])
            except requests.RequestException as exc:
                log.warning("demo job runner: %s", exc)
