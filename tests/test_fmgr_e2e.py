"""Fmgr end to end: the simulated vendor and the real exporter talking HTTP on 127.0.0.1.

The exporter is built by ``exporter.app.Exporter`` (the path the CLI takes) and its HTTP server is
started; its pollers are not: tests step ``exporter.pollers.fmgr`` with the fake clock that the
simulator shares, so every delivery, poll and window is exact. Metrics are read from the exporter's
own registry or from ``GET /metrics``.
"""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import T0, Clock, make_config
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config import Config
from exporter.simulator import Simulator
from exporter.vendor import signing

AK, SK = "AK1", "fmgr-secret-1"
TOKEN = "register-token-e2e"
NOTIFY_PATH = "/notify/fmgr"
MAX_BODY = 2048
NOTIFY_RESULTS = ("accepted", "duplicate", "bad_signature", "unknown_key", "malformed", "too_large")
HOUR = 3600.0
TIMEOUT = 5


# --------------------------------------------------------------------------------------------------
# Harness


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fmgr_config(sim_url: str, storage: str, notify_url: str, *, max_body: int = MAX_BODY, **fmgr: Any) -> Config:
    section = {
        "enabled": True, "endpoint": sim_url, "poll_interval": "30s", "request_timeout": "2s",
        "rate_limit": {"requests": 100, "per": "1s"}, "register_token": TOKEN,
        "notify": {"path": NOTIFY_PATH, "url": notify_url, "max_body_bytes": max_body,
                   "keys": [{"access_key": AK, "secret_key": SK}]},
        **fmgr,
    }
    return make_config(sim_url, storage, prefetch={"enabled": False}, fmgr=section)


class Exporters:
    """Starts real exporters (HTTP server only) and stops whatever is still running at teardown."""

    def __init__(self, clock: Clock, storage: str) -> None:
        self.clock = clock
        self.storage = storage
        self.running: list[Exporter] = []

    def start(self, sim: Simulator, *, signed_url: str | None = None, **fmgr: Any) -> Exporter:
        """An exporter polling ``sim``. The notify URL it expects signed is ``signed_url`` (``{own}`` stands
        for its own notify address, the default). The port is chosen first because that URL is config."""
        for _ in range(5):
            port = free_port()
            url = f"http://127.0.0.1:{port}{NOTIFY_PATH}"
            config = fmgr_config(sim.url, self.storage, (signed_url or "{own}").format(own=url), **fmgr)
            exporter = Exporter(config, listen_address=f"127.0.0.1:{port}", clock=self.clock)
            try:
                exporter.server.start()
            except OSError:  # somebody took the port in between: try another
                exporter.store.close()
                continue
            self.running.append(exporter)
            return exporter
        raise RuntimeError("no free port for the exporter")

    def restart(self, old: Exporter) -> Exporter:
        """Stop ``old`` and build a new exporter from its config, storage and address (the vendor still
        posts to the notify URL it was given)."""
        port = old.server.port
        self.stop(old)
        new = Exporter(old.config, listen_address=f"127.0.0.1:{port}", clock=self.clock)
        new.server.start()
        self.running.append(new)
        return new

    def stop(self, exporter: Exporter) -> None:
        self.running.remove(exporter)
        exporter.stop()

    def stop_all(self) -> None:
        for exporter in list(self.running):
            self.stop(exporter)


@pytest.fixture
def exporters(clock: Clock, tmp_path) -> Iterator[Exporters]:
    rig = Exporters(clock, str(tmp_path / "exporter.db"))
    yield rig
    rig.stop_all()


def notify_url(exporter: Exporter) -> str:
    return exporter.server.url + NOTIFY_PATH


def add_notified_task(sim: Simulator, exporter: Exporter, pid: str, ops: list[str], *,
                      key: tuple[str, str] = (AK, SK), **kwargs: Any) -> None:
    """A vendor task whose notification goes to ``exporter``, signed with ``key``. Done after 25 s."""
    sim.add_fmgr_task(pid, ops, notify_url=notify_url(exporter), notify_key=key, **kwargs)


def metric(exporter: Exporter, name: str, **labels: str) -> float | None:
    return exporter.registry.get_sample_value(name, labels)


def notifications(exporter: Exporter) -> dict[str, float]:
    """cdnetworks_fmgr_notifications_total by result, only the non-zero ones."""
    values = {r: metric(exporter, "cdnetworks_fmgr_notifications_total", result=r) for r in NOTIFY_RESULTS}
    assert None not in values.values(), "every result must be exported, zeros included"
    return {r: v for r, v in values.items() if v}


def samples(exporter: Exporter, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for family in exporter.registry.collect() for s in family.samples if s.name == name]


def tracked(exporter: Exporter) -> dict[str, str]:
    return {t["persistentId"]: t["state"] for t in exporter.store.list_fmgr_tasks(None, 1000)}


def delivery_log(sim: Simulator) -> list[tuple[str, int, int | None, bool, bool]]:
    return [(e["id"], e["attempt"], e["status_code"], e["forged"], e["duplicate"]) for e in sim.notify_log]


def polls(sim: Simulator, persistent_id: str) -> list[float]:
    return [r["ts"] for r in sim.request_log if r["api"] == "fmgr" and r["body"].get("persistentId") == persistent_id]


def run_poller(exporter: Exporter, clock: Clock, until: float, max_steps: int = 5000) -> None:
    """Step the exporter's own Fmgr poller whenever it asks to, moving the clock there."""
    poller = exporter.pollers.fmgr
    steps = 0
    while (due := poller.next_run()) <= until:
        clock.t = max(clock.t, due)
        poller.step()
        steps += 1
        assert steps < max_steps, "the poller keeps asking to run: hot loop"
    clock.t = max(clock.t, until)


def encode(payload: object) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode())


def post_signed(exporter: Exporter, body: bytes, *, key: tuple[str, str] = (AK, SK)) -> requests.Response:
    """A notification sent by hand, signed over ``body`` for the URL the exporter is configured with."""
    signed_url = exporter.config.fmgr.notify.url
    assert signed_url is not None
    auth = signing.fmgr_notify_authorization(key[0], key[1], signed_url, body)
    return requests.post(notify_url(exporter), data=body, headers={"Authorization": auth}, timeout=TIMEOUT)


def api(exporter: Exporter, method: str, query: str = "", *, token: str | None = TOKEN,
        **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.request(method, f"{exporter.server.url}/api/v1/fmgr/tasks{query}", headers=headers,
                            timeout=TIMEOUT, **kwargs)


def listed(exporter: Exporter, state: str | None = None) -> dict[str, str]:
    response = api(exporter, "GET", f"?state={state}" if state else "")
    assert response.status_code == 200, response.text
    return {t["persistentId"]: t["source"] for t in response.json()["tasks"]}


HAND_STATUS = {"id": "hand-1", "code": 3, "desc": "fileOperateSucceed", "separate": 0,
               "items": [{"cmd": "fetch/aHR0cDovL2V4YW1wbGUuY29tL2EubXA0", "code": 3, "fsize": 1000}]}


# --------------------------------------------------------------------------------------------------
# Notifications from the vendor


def test_a_signed_notification_is_accepted_stored_and_counted_once(sim_factory, clock, exporters):
    sim = sim_factory()
    exporter = exporters.start(sim)
    add_notified_task(sim, exporter, "job-1", ["fetch", "copy"], fail_items=[1], fsize=4096)
    clock.advance(30)

    assert sim.deliver_due_notifications() == 1
    clock.advance(5)
    assert sim.deliver_due_notifications() == 0  # answered 200: the vendor is done with it

    assert delivery_log(sim) == [("job-1", 1, 200, False, False)]
    assert notifications(exporter) == {"accepted": 1}
    task = exporter.store.fmgr_task("job-1")
    assert task is not None
    assert (task["source"], task["state"], task["confirmed"]) == ("notify", "completed", False)
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="fetch") == 4096
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="copy") is None  # it failed
    assert metric(exporter, "cdnetworks_fmgr_items", window="1h", op="fetch", code="3", state="succeeded") == 1
    assert metric(exporter, "cdnetworks_fmgr_items", window="1h", op="copy", code="2", state="failed") == 1
    assert metric(exporter, "cdnetworks_fmgr_success_ratio", window="1h") == 0.5


def test_vendor_duplicates_answer_200_and_count_only_as_duplicates(sim_factory, clock, exporters):
    sim = sim_factory()
    sim.configure_notifier(duplicate_ratio=1.0, forged_ratio=0.0)
    exporter = exporters.start(sim)
    add_notified_task(sim, exporter, "job-1", ["fetch"], fsize=100)
    add_notified_task(sim, exporter, "job-2", ["copy"], fsize=7)
    clock.advance(30)

    assert sim.deliver_due_notifications() == 4

    assert sorted(delivery_log(sim)) == [
        ("job-1", 1, 200, False, False), ("job-1", 1, 200, False, True),
        ("job-2", 1, 200, False, False), ("job-2", 1, 200, False, True),
    ]
    assert notifications(exporter) == {"accepted": 2, "duplicate": 2}
    assert tracked(exporter) == {"job-1": "completed", "job-2": "completed"}
    # Each item's bytes once, not once per delivery.
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="fetch") == 100
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="copy") == 7
    assert metric(exporter, "cdnetworks_fmgr_tasks", window="1h", code="3", state="completed") == 2


def test_forged_copies_get_401_and_the_task_is_stored_from_the_genuine_one(sim_factory, clock, exporters):
    sim = sim_factory()
    sim.configure_notifier(duplicate_ratio=0.0, forged_ratio=1.0)
    exporter = exporters.start(sim)
    add_notified_task(sim, exporter, "job-1", ["fetch"])
    clock.advance(30)

    assert sim.deliver_due_notifications() == 2

    # The forged copy (same body, wrong secret) comes first and is refused. Had it been stored, the
    # genuine, byte-identical copy after it would have counted as a duplicate, not as accepted.
    assert delivery_log(sim) == [("job-1", 1, 401, True, False), ("job-1", 1, 200, False, False)]
    assert notifications(exporter) == {"bad_signature": 1, "accepted": 1}
    assert tracked(exporter) == {"job-1": "completed"}


@pytest.mark.parametrize(
    ("key", "reason"),
    [((AK, "not-the-secret"), "bad_signature"), (("AK-unknown", SK), "unknown_key")],
    ids=["wrong-secret", "unknown-access-key"],
)
def test_a_notification_that_does_not_verify_is_refused_on_every_attempt(sim_factory, clock, exporters,
                                                                          key, reason):
    sim = sim_factory()
    sim.configure_notifier(duplicate_ratio=0.0, forged_ratio=0.0, max_attempts=3)
    exporter = exporters.start(sim)
    add_notified_task(sim, exporter, "job-1", ["fetch"], key=key)
    clock.advance(30)

    for _ in range(4):
        sim.deliver_due_notifications()
        clock.advance(5)

    assert [(a, s) for _, a, s, _, _ in delivery_log(sim)] == [(1, 401), (2, 401), (3, 401)]  # then gave up
    assert notifications(exporter) == {reason: 3}
    assert tracked(exporter) == {}
    assert metric(exporter, "cdnetworks_fmgr_pending_tasks") == 0


@pytest.mark.parametrize(
    "signed_url",
    [
        "https://exporter.example.com/notify/fmgr",  # what the operator gave the vendor, not where it posts
        "{own}?tenant=a",  # the query string is signed too
        "{own}/",
    ],
)
def test_a_signature_over_another_url_is_a_bad_signature(sim_factory, clock, exporters, signed_url):
    sim = sim_factory()
    exporter = exporters.start(sim, signed_url=signed_url)
    assert exporter.config.fmgr.notify.url != notify_url(exporter)
    # The vendor signs the URL it posts to, which is not the one this exporter was told it signs.
    add_notified_task(sim, exporter, "job-1", ["fetch"])
    clock.advance(30)

    sim.deliver_due_notifications()

    assert [s for _, _, s, _, _ in delivery_log(sim)] == [401]
    assert notifications(exporter) == {"bad_signature": 1}
    assert tracked(exporter) == {}


def _truncated_base64(body: bytes) -> bytes:
    cut = max(n for n in range(len(body)) if n % 4 == 1)  # no base64 string has this length
    return body[:cut]


GOOD_BODY = encode(HAND_STATUS)
BAD_BODIES = {
    "truncated-base64": (_truncated_base64(GOOD_BODY), 400, "malformed"),
    "truncated-json": (base64.urlsafe_b64encode(json.dumps(HAND_STATUS).encode()[:40]), 400, "malformed"),
    "not-base64": (b"%%% this is not base64 %%%", 400, "malformed"),
    "not-json": (base64.urlsafe_b64encode(b"hello, vendor"), 400, "malformed"),
    "not-utf8": (base64.urlsafe_b64encode(b"\xff\xfe\xfd"), 400, "malformed"),
    "json-not-an-object": (encode([HAND_STATUS]), 400, "malformed"),
    "no-id": (encode({"code": 3, "items": []}), 400, "malformed"),
    "items-not-a-list": (encode({**HAND_STATUS, "items": "none"}), 400, "malformed"),
    "empty": (b"", 400, "malformed"),
    # Verified, well-formed JSON, but values no store or counter can hold, or an id no one registers.
    "fsize-2**63": (encode({**HAND_STATUS, "items": [{**HAND_STATUS["items"][0], "fsize": 2**63}]}), 400,
                    "malformed"),
    "fsize-2**64": (encode({**HAND_STATUS, "items": [{**HAND_STATUS["items"][0], "fsize": 2**64}]}), 400,
                    "malformed"),
    "fsize-string-2**63": (encode({**HAND_STATUS, "items": [{**HAND_STATUS["items"][0], "fsize": str(2**63)}]}),
                           400, "malformed"),
    "fsize-negative": (encode({**HAND_STATUS, "items": [{**HAND_STATUS["items"][0], "fsize": -1}]}), 400,
                       "malformed"),
    "item-code-2**64": (encode({**HAND_STATUS, "items": [{**HAND_STATUS["items"][0], "code": 2**64}]}), 400,
                        "malformed"),
    "code-10**30": (encode({**HAND_STATUS, "code": 10**30}), 400, "malformed"),
    "separate-2**63": (encode({**HAND_STATUS, "separate": 2**63}), 400, "malformed"),
    "id-nul": (encode({**HAND_STATUS, "id": "hand\u00001"}), 400, "malformed"),
    "id-newline": (encode({**HAND_STATUS, "id": "hand-1\nx"}), 400, "malformed"),
    "id-129": (encode({**HAND_STATUS, "id": "h" * 129}), 400, "malformed"),
    "id-slash": (encode({**HAND_STATUS, "id": "hand/1"}), 400, "malformed"),
    "oversized": (encode({**HAND_STATUS, "pad": "x" * MAX_BODY}), 413, "too_large"),
}


@pytest.mark.parametrize(("body", "status", "result"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_a_bad_body_with_a_valid_signature_is_refused_and_nothing_is_stored(sim_factory, exporters,
                                                                            body, status, result):
    exporter = exporters.start(sim_factory())

    response = post_signed(exporter, body)

    assert response.status_code == status
    assert response.json()["result"] == result
    assert notifications(exporter) == {result: 1}
    assert exporter.store.list_fmgr_tasks(None, 10) == []
    # Control: the same sender, key and URL with a good body is accepted.
    assert post_signed(exporter, GOOD_BODY).status_code == 200
    assert tracked(exporter) == {"hand-1": "completed"}


def test_a_huge_id_in_a_verified_notification_is_malformed(sim_factory, exporters):
    exporter = exporters.start(sim_factory(), max_body=1048576)
    body = encode({**HAND_STATUS, "id": "x" * 500_000})
    assert len(body) < 1048576

    response = post_signed(exporter, body)

    assert (response.status_code, response.json()["result"]) == (400, "malformed")
    assert notifications(exporter) == {"malformed": 1}
    assert exporter.store.list_fmgr_tasks(None, 10) == []


def test_a_store_write_failure_answers_5xx_and_the_vendor_retries(sim_factory, clock, exporters):
    sim = sim_factory()
    exporter = exporters.start(sim)
    add_notified_task(sim, exporter, "job-1", ["fetch"], fsize=100)
    clock.advance(30)

    # Break the real database under the exporter: its dedup table disappears for one delivery.
    side = sqlite3.connect(exporter.store.path, isolation_level=None)
    side.execute("ALTER TABLE fmgr_notifications RENAME TO fmgr_notifications_away")
    try:
        assert sim.deliver_due_notifications() == 1
    finally:
        side.execute("ALTER TABLE fmgr_notifications_away RENAME TO fmgr_notifications")
        side.close()

    assert delivery_log(sim) == [("job-1", 1, 503, False, False)]
    assert notifications(exporter) == {}  # neither accepted nor rejected: nothing was acknowledged
    assert tracked(exporter) == {}
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="fetch") is None

    clock.advance(1)  # the vendor's retry delay after a first failed attempt
    assert sim.deliver_due_notifications() == 1

    assert delivery_log(sim) == [("job-1", 1, 503, False, False), ("job-1", 2, 200, False, False)]
    assert notifications(exporter) == {"accepted": 1}
    assert tracked(exporter) == {"job-1": "completed"}
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="fetch") == 100


def test_a_notified_final_task_gets_exactly_one_confirming_poll(sim_factory, clock, exporters):
    sim = sim_factory()
    exporter = exporters.start(sim)
    add_notified_task(sim, exporter, "job-n", ["fetch"], fsize=100)  # known only from its notification
    add_notified_task(sim, exporter, "job-r", ["copy"], fsize=50)  # also registered, so polled before
    assert api(exporter, "POST", json={"persistentIds": ["job-r"]}).status_code == 200
    run_poller(exporter, clock, T0 + 10)
    assert [len(polls(sim, "job-n")), len(polls(sim, "job-r"))] == [0, 1]

    clock.t = T0 + 30
    notified_at = clock()
    assert sim.deliver_due_notifications() == 2
    run_poller(exporter, clock, T0 + 6 * HOUR)

    for pid in ("job-n", "job-r"):
        assert [t >= notified_at for t in polls(sim, pid)].count(True) == 1, pid
        task = exporter.store.fmgr_task(pid)
        assert task is not None
        assert (task["state"], task["code"], task["confirmed"]) == ("notified", 6, True)
    assert notifications(exporter) == {"accepted": 2}
    # The confirming poll does not count the bytes a second time.
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="fetch") == 100
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="copy") == 50


def codes_polled(sim: Simulator, persistent_id: str) -> list[int]:
    """The task code each poll of ``persistent_id`` was answered with (the vendor's truth at that moment)."""
    return [sim.fmgr_status(persistent_id, at=t)["code"] for t in polls(sim, persistent_id)]


def test_a_notification_after_3_was_taken_as_final_is_confirmed_by_polling(sim_factory, clock, exporters):
    sim = sim_factory()
    exporter = exporters.start(sim, notify_grace="5m", confirm_delay="10s")
    # A vendor slower than the grace period: completed at T0 + 25, notifying only 10 minutes later.
    add_notified_task(sim, exporter, "slow-hook", ["fetch"], fsize=10, notify_delay=600)
    assert api(exporter, "POST", json={"persistentIds": ["slow-hook"]}).status_code == 200
    run_poller(exporter, clock, T0 + 500)
    assert tracked(exporter) == {"slow-hook": "completed"}
    assert exporter.store.fmgr_task("slow-hook")["confirmed"] is True  # 3 for longer than the grace period
    assert codes_polled(sim, "slow-hook")[-1] == 3

    clock.t = T0 + 625
    assert sim.deliver_due_notifications() == 1
    run_poller(exporter, clock, T0 + HOUR)

    # The notification proved a notifyURL: polled again once the vendor had recorded the delivery.
    after = [t for t in polls(sim, "slow-hook") if t >= T0 + 625]
    assert after == [T0 + 635]
    task = exporter.store.fmgr_task("slow-hook")
    assert (task["state"], task["code"], task["confirmed"]) == ("notified", 6, True)


def test_a_confirming_poll_that_still_sees_4_is_repeated(sim_factory, clock, exporters):
    sim = sim_factory()
    sim.notify_record_delay = 20.0  # the vendor records the delivery after the confirming poll
    exporter = exporters.start(sim, confirm_delay="5s")
    add_notified_task(sim, exporter, "hook", ["fetch", "copy"], fail_items=[1], fsize=10)
    clock.t = T0 + 30
    assert sim.deliver_due_notifications() == 1
    run_poller(exporter, clock, T0 + HOUR)

    assert codes_polled(sim, "hook") == [4, 6]
    assert polls(sim, "hook") == [T0 + 35, T0 + 65]  # confirm_delay, then poll_interval
    assert metric(exporter, "cdnetworks_fmgr_items", window="24h", op="fetch", code="6",
                  state="succeeded_notified") == 1
    assert metric(exporter, "cdnetworks_fmgr_items", window="24h", op="copy", code="20", state="failed_notified") == 1
    assert metric(exporter, "cdnetworks_fmgr_notify_failures_total", scope="task") == 0


def test_a_task_whose_notifications_never_arrive_is_seen_failing_by_polling(sim_factory, clock, exporters):
    sim = sim_factory()
    exporter = exporters.start(sim)
    add_notified_task(sim, exporter, "lost", ["fetch", "copy"], fail_items=[1], notify_fails=True)
    assert api(exporter, "POST", json={"persistentIds": ["lost"]}).status_code == 200
    while clock.t < T0 + 600:
        sim.deliver_due_notifications()
        run_poller(exporter, clock, clock.t + 1)

    assert notifications(exporter) == {}
    assert tracked(exporter) == {"lost": "notify_failed"}
    assert 4 in codes_polled(sim, "lost") and codes_polled(sim, "lost")[-1] == 5
    assert metric(exporter, "cdnetworks_fmgr_notify_failures_total", scope="task") == 1
    assert metric(exporter, "cdnetworks_fmgr_notify_failures_total", scope="item") == 2
    assert metric(exporter, "cdnetworks_fmgr_tasks", window="1h", code="5", state="notify_failed") == 1


# --------------------------------------------------------------------------------------------------
# Registration API


def test_the_registration_api_needs_the_bearer_token(sim_factory, exporters):
    exporter = exporters.start(sim_factory())
    body = {"persistentIds": ["job-1"]}
    for token in (None, "wrong-token", TOKEN + "x", ""):
        for method in ("POST", "GET"):
            response = api(exporter, method, token=token, json=body if method == "POST" else None)
            assert response.status_code == 401, (token, method)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    basic = base64.b64encode(f"user:{TOKEN}".encode()).decode()
    response = requests.post(f"{exporter.server.url}/api/v1/fmgr/tasks", json=body, timeout=TIMEOUT,
                             headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 401
    assert tracked(exporter) == {}


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"ids": ["job-1"]}',
        b'{"persistentIds": "job-1"}',
        b'{"persistentIds": []}',
        b'{"persistentIds": [1]}',
        b'{"persistentIds": ["has space"]}',
        b'{"persistentIds": ["' + b"x" * 129 + b'"]}',
        b'{"persistentIds": ["a", "b", "c", "d"]}',  # over max_register_ids
    ],
)
def test_a_bad_registration_is_400_and_tracks_nothing(sim_factory, exporters, body):
    exporter = exporters.start(sim_factory(), max_register_ids=3)

    response = api(exporter, "POST", data=body)

    assert response.status_code == 400
    assert response.json()["error"]
    assert tracked(exporter) == {}


def test_registered_ids_are_tracked_polled_and_listed_by_state(sim_factory, clock, exporters):
    sim = sim_factory()
    sim.add_fmgr_task("job-fast", ["fetch"], pending=2, processing=10)
    sim.add_fmgr_task("job-slow", ["copy"], pending=2, processing=10 * HOUR)
    exporter = exporters.start(sim)

    response = api(exporter, "POST", json={"persistentIds": ["job-fast", "job-slow", "job-fast", "ghost"]})
    assert (response.status_code, response.json()) == (200, {"received": 3, "registered": 3, "already_tracked": 0})
    again = api(exporter, "POST", json={"persistentIds": ["job-slow", "job-new"]})
    assert (again.status_code, again.json()) == (200, {"received": 2, "registered": 1, "already_tracked": 1})
    assert listed(exporter, "unknown") == {"job-fast": "api", "job-slow": "api", "ghost": "api", "job-new": "api"}
    assert pending_in_api(exporter) == {"job-fast", "job-slow", "ghost", "job-new"}
    assert metric(exporter, "cdnetworks_fmgr_pending_tasks") == 4

    run_poller(exporter, clock, T0 + 120)

    assert listed(exporter, "completed") == {"job-fast": "api"}
    assert listed(exporter, "processing") == {"job-slow": "api"}
    assert listed(exporter, "unknown") == {"ghost": "api", "job-new": "api"}  # the vendor does not know them
    assert listed(exporter, "notified") == {}
    assert set(listed(exporter)) == {"job-fast", "job-slow", "ghost", "job-new"}
    one = api(exporter, "GET", "?limit=1")
    assert one.status_code == 200 and len(one.json()["tasks"]) == 1
    assert api(exporter, "GET", "?state=no%20such").status_code == 400
    bogus = api(exporter, "GET", "?state=bogus")
    assert bogus.status_code == 400 and "unknown, pending, processing" in bogus.json()["error"]
    # The API's "pending" is exactly what cdnetworks_fmgr_pending_tasks counts.
    assert pending_in_api(exporter) == {"job-slow", "ghost", "job-new"}
    assert metric(exporter, "cdnetworks_fmgr_pending_tasks") == 3
    not_pending = api(exporter, "GET", "?pending=false").json()["tasks"]
    assert {t["persistentId"] for t in not_pending} == {"job-fast"}
    assert all(t["pending"] is False for t in not_pending)


def pending_in_api(exporter: Exporter) -> set[str]:
    """The ids the registration API calls pending: by the field of every task, and by the filter (the same)."""
    by_field = {t["persistentId"] for t in api(exporter, "GET", "?limit=1000").json()["tasks"] if t["pending"]}
    by_filter = {t["persistentId"] for t in api(exporter, "GET", "?pending=true&limit=1000").json()["tasks"]}
    assert by_field == by_filter
    return by_field


def test_config_persistent_ids_are_tracked(sim_factory, clock, exporters):
    sim = sim_factory()
    sim.add_fmgr_task("cfg-1", ["move"], pending=1, processing=5)
    exporter = exporters.start(sim, persistent_ids=["cfg-1", "cfg-2"])

    assert listed(exporter) == {"cfg-1": "config", "cfg-2": "config"}
    assert metric(exporter, "cdnetworks_fmgr_tasks", window="1h", code="none", state="unknown") == 2
    run_poller(exporter, clock, T0 + 60)
    assert listed(exporter, "completed") == {"cfg-1": "config"}
    assert polls(sim, "cfg-1") and polls(sim, "cfg-2")


# --------------------------------------------------------------------------------------------------
# Restart and window truth


def fmgr_series(exporter: Exporter) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every cdnetworks_fmgr_* sample of GET /metrics."""
    response = requests.get(exporter.server.url + "/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
        if s.name.startswith("cdnetworks_fmgr_")
    }


def test_a_restart_keeps_tracked_ids_their_states_and_the_counters(sim_factory, clock, exporters):
    sim = sim_factory()
    sim.configure_notifier(duplicate_ratio=1.0, forged_ratio=0.0)
    exporter = exporters.start(sim, persistent_ids=["cfg-slow"])
    sim.add_fmgr_task("cfg-slow", ["compress"], pending=5, processing=2 * HOUR, fsize=300)
    add_notified_task(sim, exporter, "job-1", ["fetch", "copy"], fail_items=[1], fsize=1000)
    assert api(exporter, "POST", json={"persistentIds": ["job-2"]}).status_code == 200
    sim.add_fmgr_task("job-2", ["move"], pending=5, processing=10, fsize=20)
    assert post_signed(exporter, GOOD_BODY).status_code == 200
    assert post_signed(exporter, b"not base64!").status_code == 400
    clock.advance(30)
    sim.deliver_due_notifications()
    run_poller(exporter, clock, T0 + 10 * 60)

    before = fmgr_series(exporter)
    tasks_before = api(exporter, "GET").json()["tasks"]
    # Not a vacuous comparison: there are states and counters to lose.
    assert {t["persistentId"]: t["state"] for t in tasks_before} == {
        "cfg-slow": "processing", "job-1": "notified", "job-2": "completed", "hand-1": "completed",
    }
    assert before[("cdnetworks_fmgr_notifications_total", (("result", "accepted"),))] == 2
    assert before[("cdnetworks_fmgr_notifications_total", (("result", "duplicate"),))] == 1
    assert before[("cdnetworks_fmgr_notifications_total", (("result", "malformed"),))] == 1
    assert before[("cdnetworks_fmgr_processed_bytes_total", (("op", "fetch"),))] == 2000
    assert before[("cdnetworks_fmgr_pending_tasks", ())] == 1

    restarted = exporters.restart(exporter)

    assert fmgr_series(restarted) == before
    assert api(restarted, "GET").json()["tasks"] == tasks_before
    # Dedup keys survive: a repeat of a delivery accepted before the restart is a duplicate.
    assert post_signed(restarted, GOOD_BODY).json()["result"] == "duplicate"
    # The unfinished id is still polled, the finished ones are not; the vendor's notifications still verify.
    finished = {pid: len(polls(sim, pid)) for pid in ("job-1", "job-2")}
    add_notified_task(sim, restarted, "job-3", ["delete"], fsize=0)
    run_poller(restarted, clock, T0 + 3 * HOUR)
    sim.deliver_due_notifications()
    assert delivery_log(sim)[-1][:3] == ("job-3", 1, 200)
    assert tracked(restarted)["cfg-slow"] == "completed"
    assert tracked(restarted)["job-3"] == "completed"
    assert {pid: len(polls(sim, pid)) for pid in finished} == finished
    assert metric(restarted, "cdnetworks_fmgr_processed_bytes_total", op="compress") == 300
    assert notifications(restarted) == {"accepted": 3, "duplicate": 3, "malformed": 1}


def test_a_pruned_config_id_is_not_counted_again_after_a_restart(sim_factory, clock, exporters):
    sim = sim_factory()
    sim.add_fmgr_task("cfg-1", ["move"], pending=1, processing=5, fsize=500)
    exporter = exporters.start(sim, persistent_ids=["cfg-1"], max_task_age="1d")
    run_poller(exporter, clock, T0 + 10 * 60)
    assert metric(exporter, "cdnetworks_fmgr_processed_bytes_total", op="move") == 500
    # Older than every window and max_task_age: maintenance may forget the finished task, but the
    # config still lists it, and a restart must not make it new again.
    run_poller(exporter, clock, T0 + 26 * HOUR)
    polled = len(polls(sim, "cfg-1"))

    restarted = exporters.restart(exporter)
    run_poller(restarted, clock, clock() + HOUR)

    assert metric(restarted, "cdnetworks_fmgr_processed_bytes_total", op="move") == 500
    assert len(polls(sim, "cfg-1")) == polled


def vendor_truth(sim: Simulator, ids: list[str]) -> dict[str, Any]:
    """What the vendor says about ``ids``: tasks by code, items by (op, code), bytes of succeeded items."""
    tasks: Counter[str] = Counter()
    items: Counter[tuple[str, str]] = Counter()
    processed: Counter[str] = Counter()
    for pid in ids:
        status = sim.fmgr_status(pid)
        assert status is not None
        tasks[str(status["code"])] += 1
        for item in status["items"]:
            op, code = item["cmd"].split("/", 1)[0], int(item["code"])
            items[(op, str(code))] += 1
            if code == 3:
                processed[op] += int(item["fsize"] or 0)
    return {"tasks": tasks, "items": items, "processed": processed}


# Without a notify URL the vendor's tasks end in code 3; their items in 3 (succeeded) or 2 (failed).
TASK_STATE = {"3": "completed"}
ITEM_STATE = {"3": "succeeded", "2": "failed"}


def test_window_gauges_match_the_vendor_truth(sim_factory, clock, exporters):
    sim = sim_factory()
    sim.add_fmgr_stream(per_minute=1.0, start_ts=T0 - 20 * 60, failure_ratio=0.3)
    exporter = exporters.start(sim, windows=["1h", "24h"])

    # Two batches, two hours apart: the 1h window holds only the second, the 24h window both.
    old = sim.fmgr_ids()
    assert api(exporter, "POST", json={"persistentIds": old}).status_code == 200
    run_poller(exporter, clock, T0 + 2 * HOUR)
    new = sim.fmgr_ids()[-15:]  # created within the last quarter hour
    assert api(exporter, "POST", json={"persistentIds": new}).status_code == 200
    run_poller(exporter, clock, clock() + 10 * 60)
    assert metric(exporter, "cdnetworks_fmgr_pending_tasks") == 0

    for window, ids in (("1h", new), ("24h", old + new)):
        truth = vendor_truth(sim, ids)
        assert set(truth["tasks"]) <= set(TASK_STATE) and {c for _, c in truth["items"]} <= set(ITEM_STATE)
        got_tasks: Counter[tuple[str, str]] = Counter()
        for labels, value in samples(exporter, "cdnetworks_fmgr_tasks"):
            if labels["window"] == window and value:
                got_tasks[(labels["code"], labels["state"])] += int(value)
        assert got_tasks == {(c, TASK_STATE[c]): n for c, n in truth["tasks"].items()}, window
        got_items: Counter[tuple[str, str, str]] = Counter()
        for labels, value in samples(exporter, "cdnetworks_fmgr_items"):
            if labels["window"] == window and value:
                got_items[(labels["op"], labels["code"], labels["state"])] += int(value)
        assert got_items == {(op, c, ITEM_STATE[c]): n for (op, c), n in truth["items"].items()}, window
        ok = sum(n for (_, c), n in truth["items"].items() if c == "3")
        failed = sum(n for (_, c), n in truth["items"].items() if c == "2")
        assert ok and failed, "the stream should produce both outcomes"
        assert metric(exporter, "cdnetworks_fmgr_success_ratio", window=window) == pytest.approx(ok / (ok + failed))

    processed = vendor_truth(sim, old + new)["processed"]
    got = {labels["op"]: value for labels, value in samples(exporter, "cdnetworks_fmgr_processed_bytes_total")}
    assert {op: v for op, v in got.items() if v} == {op: float(v) for op, v in processed.items() if v}


def test_a_removed_database_is_not_acknowledged_into_and_readyz_says_why(sim_factory, clock, exporters, tmp_path):
    sim = sim_factory()
    exporter = exporters.start(sim)
    add_notified_task(sim, exporter, "job-before", ["fetch"])
    clock.advance(30)
    assert sim.deliver_due_notifications() == 1
    pending = metric(exporter, "cdnetworks_fmgr_pending_tasks")
    assert requests.get(exporter.server.url + "/readyz", timeout=TIMEOUT).status_code == 200
    for suffix in ("", "-wal", "-shm"):
        Path(exporter.store.path + suffix).unlink(missing_ok=True)
    add_notified_task(sim, exporter, "job-after", ["fetch"])
    clock.advance(30)
    sim.deliver_due_notifications()
    # Refused with a 5xx (the vendor delivers again later), not acknowledged into a file that is gone.
    assert [status for pid, _, status, *_ in delivery_log(sim) if pid == "job-after"] == [503]
    ready = requests.get(exporter.server.url + "/readyz", timeout=TIMEOUT)
    assert ready.status_code == 503 and "removed" in ready.text
    # The failed transaction left the derived gauge where the database has it.
    assert metric(exporter, "cdnetworks_fmgr_pending_tasks") == pending
