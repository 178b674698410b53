"""Secrets never leave the exporter: not in its logs, /metrics, error answers, the landing page or
``--check-config``.

A real exporter process (``python -m exporter.cli``, debug logging) runs with every kind of secret set to a
distinctive value: an account API key, an AK/SK secret key, a notify secret key, the registration token and a
basic-auth password. Then everything that reports an error is exercised: the vendor refuses both accounts
(wrong key, wrong secret), wrong passwords, notifications with bad signatures, unknown keys and bad bodies,
registrations with wrong tokens, a reload of a broken config file (SIGHUP and ``POST /-/reload``), and
``--check-config`` of that file. None of the secret strings may appear anywhere the exporter wrote or answered.
"""

from __future__ import annotations

import base64
import re
import signal
import time
from pathlib import Path

import bcrypt
import requests
import test_cli
from test_cli import DEMO_WAIT, free_port, posix_signals, run_cli, stop, wait_for

from exporter.simulator import Simulator
from exporter.vendor import signing

start_exporter = test_cli.start_exporter  # the fixture, shared with the CLI tests

API_KEY = "SeCrEt-ApiKey-5f1e9c"
SECRET_KEY = "SeCrEt-AkSk-8b2d7a"
NOTIFY_SECRET = "SeCrEt-Notify-3c6e0f"
TOKEN = "SeCrEt-Token-9a4b1d"
PASSWORD = "SeCrEt-Password-7e2c5b"
SECRETS = (API_KEY, SECRET_KEY, NOTIFY_SECRET, TOKEN, PASSWORD)
USER = "prometheus"
NOTIFY_URL = "https://exporter.example.com/notify/fmgr"


def config_text(sim_url: str, *, broken: bool = False) -> str:
    return f"""\
accounts:
  - name: acme
    username: acme
    api_key: {API_KEY}
    endpoint: {sim_url}
  - name: globex
    auth: aksk
    access_key: AK-GLOBEX
    secret_key: {SECRET_KEY}
    endpoint: {sim_url}
prefetch:
  windows: [15m]
  lookback: 1h
  page_size: {"-5" if broken else "100"}
  rate_limit: {{requests: 100, per: 1s}}
fmgr:
  enabled: true
  endpoint: {sim_url}
  register_token: {TOKEN}
  notify:
    url: {NOTIFY_URL}
    keys:
      - access_key: AK-NOTIFY
        secret_key: {NOTIFY_SECRET}
{"  bogus_key: " + API_KEY if broken else ""}
"""


def auth_failures(metrics: str) -> float:
    match = re.search(r'cdnetworks_api_requests_total\{api="prefetch",result="auth"\} (\S+)', metrics)
    return float(match.group(1)) if match else 0.0


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@posix_signals
def test_no_secret_reaches_logs_metrics_errors_or_the_landing_page(tmp_path: Path, start_exporter) -> None:
    sim = Simulator(seed=3)
    sim.add_account("acme", "the-vendor-expects-another-key")  # every request of acme is refused
    sim.add_account("globex", access_key="AK-GLOBEX", secret_key="another-secret")  # and of globex
    sim.add_cdn_stream("acme", "prefetch", per_hour=60, start_ts=time.time() - 3600)
    sim.start()
    try:
        config = tmp_path / "config.yml"
        config.write_text(config_text(sim.url))
        web = tmp_path / "web.yml"
        web.write_text(f"basic_auth_users:\n  {USER}: {bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        auth = (USER, PASSWORD)
        proc, log = start_exporter("--config.file", str(config), "--web.config.file", str(web),
                                   "--web.listen-address", f"127.0.0.1:{port}", "--storage.path",
                                   str(tmp_path / "s.db"), "--log.level", "debug")
        answers: list[str] = []
        session = requests.Session()
        session.trust_env = False

        def call(method: str, path: str, **kwargs) -> requests.Response:
            r = session.request(method, url + path, timeout=10, **kwargs)
            answers.append(f"{method} {path} -> {r.status_code} {r.headers} {r.text}")
            return r

        wait_for("the exporter to serve", lambda: call("GET", "/readyz", auth=auth).ok, DEMO_WAIT, log, proc)
        # The vendor refuses both accounts: wait until both failures were counted (and logged).
        wait_for("the vendor's refusals", lambda: sim.requests[("prefetch", "acme")] >= 1
                 and sim.requests[("prefetch", "globex")] >= 1
                 and auth_failures(call("GET", "/metrics", auth=auth).text) >= 2, 30, log, proc)
        # Wrong and missing passwords.
        for wrong in (PASSWORD[:-1], PASSWORD + "x", ""):
            assert call("GET", "/metrics", auth=(USER, wrong)).status_code == 401
        call("GET", "/", auth=(USER, PASSWORD[:-1]))
        # Notifications: a bad signature, an unknown key, the secret itself as the signature, a good signature
        # over a bad body, a signature made with the secret over another URL.
        body = base64.urlsafe_b64encode(b'{"id":"t1","code":3,"items":[]}')
        for authorization, raw in [
            ("AK-NOTIFY:" + base64.urlsafe_b64encode(b"0" * 40).decode(), body),
            (f"AK-UNKNOWN:{NOTIFY_SECRET}", body),  # the access key is named back (it is not secret); not the rest
            (f"AK-NOTIFY:{NOTIFY_SECRET}", body),
            (signing.fmgr_notify_authorization("AK-NOTIFY", NOTIFY_SECRET, NOTIFY_URL, b"!!not base64!!"),
             b"!!not base64!!"),
            (signing.fmgr_notify_authorization("AK-NOTIFY", NOTIFY_SECRET, "https://elsewhere/n", body), body),
        ]:
            r = call("POST", "/notify/fmgr", data=raw, headers={"Authorization": authorization}, auth=None)
            assert r.status_code in (400, 401), r.status_code
        # Registrations with wrong tokens, and a good token with a bad body.
        for token in (TOKEN[:-1], TOKEN.lower(), ""):
            r = call("POST", "/api/v1/fmgr/tasks", json={"persistentIds": ["a"]},
                     headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401
        call("POST", "/api/v1/fmgr/tasks", data=b"{", headers={"Authorization": f"Bearer {TOKEN}"})
        call("GET", "/api/v1/fmgr/tasks?limit=%C2%B2", headers={"Authorization": f"Bearer {TOKEN}"})
        # A broken config (it names a secret next to an unknown key), by SIGHUP and by POST /-/reload.
        config.write_text(config_text(sim.url, broken=True))
        proc.send_signal(signal.SIGHUP)
        wait_for("the failed reload", lambda: "cdnetworks_config_last_reload_successful 0.0"
                 in call("GET", "/metrics", auth=auth).text, 15, log, proc)
        r = call("POST", "/-/reload", auth=auth)
        assert r.status_code >= 400, r.status_code
        checked = run_cli("--check-config", "--config.file", str(config))
        assert checked.returncode == 2, checked.stderr
        # What the exporter shows.
        landing = call("GET", "/", auth=auth)
        assert landing.status_code == 200
        metrics = call("GET", "/metrics", auth=auth)
        assert auth_failures(metrics.text) >= 2
        assert stop(proc, log) == 0
        logged = log.read_text(errors="replace")
        # The errors were really reported (so the checks below look at real error text).
        assert "reload" in logged and "auth" in logged.lower(), logged[-2000:]
        assert "bogus_key" in checked.stderr + checked.stdout
        assert not leaks(logged), leaks(logged)
        assert not leaks(checked.stdout + checked.stderr), checked.stderr
        for answer in answers:
            assert not leaks(answer), answer[:500]
    finally:
        sim.stop()
