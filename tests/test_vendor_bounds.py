"""Every vendor answer is bounded in time and in size, whatever the vendor does, for both APIs.

Real HTTP against the simulator's paced and streamed faults:

* ``trickle`` (headers, then the body a byte a second), ``stall`` (headers, then nothing) and ``trickle_headers``
  (the status line and headers a byte a second): requests' own timeout bounds each socket read only, so each of
  these would hold a poller for minutes; the request's deadline ends every one of them within
  ``request_timeout`` (plus a small margin), counted as ``timeout``, on the real clock (the CDN client's clock
  is a fake one that does not move);
* ``huge`` (a valid-looking 400 MB answer with its Content-Length) and ``huge_chunked`` (the same, chunked):
  refused as ``too_large`` (the first unread, the second at the first byte over the cap), and peak memory
  stays flat (measured in a subprocess);
* the simulator's thread of a paced answer ends when the client hangs up, and when the simulator stops.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import ROOT, T0, make_config
from test_web import make_self_signed

from exporter.fmgr.wire import FmgrClient
from exporter.metrics.health import ApiHealth
from exporter.simulator import Simulator
from exporter.vendor.cdn import CdnClient
from exporter.vendor.http import DEFAULT_MAX_RESPONSE_BYTES, VendorError

TIMEOUT = 0.6  # request_timeout of both clients
PACE = 0.1  # a paced answer's byte every this many seconds: well within the per-read timeout, which never trips
MARGIN = 0.35  # what a bounded request may take beyond it (a loaded machine, the store's writes excluded)
CAP = 1 << 20  # max_response_bytes of both clients here

PACED = ["trickle", "stall", "trickle_headers"]
HUGE = ["huge", "huge_chunked"]


@pytest.fixture
def rig(sim_factory, clock, tmp_path) -> Iterator[tuple]:
    sim = sim_factory()
    sim.pace_fault_interval = PACE
    sim.add_fmgr_task("job-1", ["fetch"], created_ts=T0 - 60)
    cfg = make_config(sim.url, str(tmp_path / "db.sqlite"))
    health = ApiHealth()
    session = requests.Session()
    session.trust_env = False
    cdn_client = CdnClient(cfg.accounts[0], session=session, clock=clock, timeout=TIMEOUT, health=health,
                           max_response_bytes=CAP)
    fmgr_client = FmgrClient(sim.url, session=session, timeout=TIMEOUT, health=health, max_response_bytes=CAP)
    yield sim, cdn_client, fmgr_client, health
    session.close()


def call(api: str, cdn_client: CdnClient, fmgr_client: FmgrClient) -> object:
    if api == "fmgr":
        return fmgr_client.status("job-1")
    return cdn_client.query(api, T0 - 600, T0)


@pytest.mark.parametrize("api", ["prefetch", "fmgr"])
@pytest.mark.parametrize("fault", PACED + HUGE)
def test_a_slow_or_huge_answer_ends_within_the_timeout_and_the_cap(rig, api, fault):
    sim, cdn_client, fmgr_client, health = rig
    call(api, cdn_client, fmgr_client)  # a kept-alive connection: the fault comes on a reused one
    sim.inject(api, fault)
    started = time.monotonic()
    with pytest.raises(VendorError) as info:
        call(api, cdn_client, fmgr_client)
    took = time.monotonic() - started
    kind = "timeout" if fault in PACED else "too_large"
    assert info.value.kind == kind, info.value
    if fault in PACED:
        assert TIMEOUT - 0.05 <= took <= TIMEOUT + MARGIN, took
        assert f"within {TIMEOUT:g}s" in info.value.message
    else:
        assert took <= MARGIN, took  # refused at once, not after reading 400 MB
        assert str(CAP) in info.value.message
    counts = health.requests()
    assert (counts[(api, "ok")], counts[(api, kind)]) == (1, 1)
    assert sum(n for (a, _), n in counts.items() if a == api) == 2
    # The vendor's side of the answer ends with the client's (no thread left trickling to nobody).
    assert sim.wait_answers_closed(2.0), f"{sim.open_answers} answer(s) still being written"
    entry = sim.request_log[-1]
    assert entry["fault"] == fault and "ended" in entry
    # And the next request is answered normally.
    call(api, cdn_client, fmgr_client)
    assert health.requests()[(api, "ok")] == 2


@pytest.mark.parametrize("fault", ["trickle", "trickle_headers"])
def test_a_paced_answer_within_the_deadline_is_read(rig, fault):
    """Bounded is not impatient: an answer that trickles in completely before the deadline is a good one."""
    sim, _, fmgr_client, health = rig
    sim.pace_fault_interval = 0.0005  # a byte every half millisecond: about 0.4 s for the whole answer
    fmgr_client.timeout = 5.0
    sim.inject("fmgr", fault)
    assert fmgr_client.status("job-1").id == "job-1"
    assert health.requests()[("fmgr", "ok")] == 1


def test_a_declared_length_over_the_cap_is_refused_unread_and_a_body_at_the_cap_is_read(rig):
    sim, _, fmgr_client, health = rig
    sim.huge_fault_bytes = 3 * CAP
    sim.inject("fmgr", "huge")
    with pytest.raises(VendorError) as info:
        fmgr_client.status("job-1")
    assert info.value.kind == "too_large" and "declares" in info.value.message
    # A status answer of exactly the cap is one byte too few to be refused.
    body = json.dumps(sim.fmgr_status("job-1"), separators=(",", ":")).encode()
    fmgr_client.max_response_bytes = len(body)
    assert fmgr_client.status("job-1").id == "job-1"
    fmgr_client.max_response_bytes = len(body) - 1
    with pytest.raises(VendorError) as info:
        fmgr_client.status("job-1")
    assert info.value.kind == "too_large"
    assert health.requests()[("fmgr", "too_large")] == 2


def test_a_deadline_never_cuts_the_next_request_on_its_kept_alive_connection(rig):
    """A request's deadline passes while the next request, on the same pooled connection, is still waiting for
    its answer: that one goes on to its own deadline."""
    sim, _, fmgr_client, health = rig
    fmgr_client.status("job-1")  # deadline: now + TIMEOUT
    time.sleep(TIMEOUT / 2)
    sim.timeout_fault_seconds = TIMEOUT * 0.8  # answered after the first request's deadline
    sim.inject("fmgr", "timeout")
    assert fmgr_client.status("job-1").id == "job-1"
    assert health.requests()[("fmgr", "ok")] == 2


def test_the_deadline_runs_on_the_real_clock_not_the_clients(rig, clock):
    """The CDN client signs with an injected clock; a fake clock that stands still (or jumps) changes nothing
    about when a request gives up."""
    sim, cdn_client, _, _ = rig
    clock.t = T0
    sim.inject("prefetch", "trickle")
    started = time.monotonic()
    with pytest.raises(VendorError) as info:
        cdn_client.query("prefetch", T0 - 600, T0)
    assert info.value.kind == "timeout"
    assert time.monotonic() - started <= TIMEOUT + MARGIN
    assert clock() == T0


@pytest.mark.parametrize("fault", ["trickle_headers", "trickle"])
def test_the_deadline_holds_over_tls(tmp_path, clock, fault):
    """The vendor's endpoints are HTTPS: the deadline cuts a TLS connection the same way."""
    cert, key = make_self_signed(tmp_path)
    sim = Simulator(clock=clock)
    sim.pace_fault_interval = PACE
    sim.add_fmgr_task("job-1", ["fetch"], created_ts=T0 - 60)
    sim.start(tls=(str(cert), str(key)))
    session = requests.Session()
    session.trust_env = False
    session.verify = str(cert)
    try:
        assert sim.url.startswith("https://")
        client = FmgrClient(sim.url, session=session, timeout=TIMEOUT, max_response_bytes=CAP)
        assert client.status("job-1").id == "job-1"
        sim.inject("fmgr", fault)
        started = time.monotonic()
        with pytest.raises(VendorError) as info:
            client.status("job-1")
        assert info.value.kind == "timeout"
        assert time.monotonic() - started <= TIMEOUT + MARGIN
        assert sim.wait_answers_closed(2.0)
        assert client.status("job-1").id == "job-1"
    finally:
        session.close()
        sim.stop()


def test_stopping_the_simulator_ends_its_paced_answers(sim_factory):
    """A client that never hangs up does not keep a simulator thread: stop() ends the answer."""
    sim = sim_factory()
    sim.add_fmgr_task("job-1", ["fetch"], created_ts=T0 - 60)
    sim.inject("fmgr", "stall")
    host, port = sim.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"GET /fmgr/status?persistentId=job-1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(12) == b"HTTP/1.1 200"
        deadline = time.monotonic() + 2
        while sim.open_answers != 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 1.0
        assert sim.open_answers == 0


# ------------------------------------------------------------------------------------------- memory

RSS_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from exporter.fmgr.wire import FmgrClient
    from exporter.vendor.cdn import CdnClient
    from exporter.config import parse_config
    from exporter.simulator import Simulator
    from exporter.vendor.http import VendorError

    def hwm_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    cap, size = int(sys.argv[1]), int(sys.argv[2])
    sim = Simulator()
    sim.add_account("acme", "acme-key")
    sim.add_fmgr_task("job-1", ["fetch"])
    sim.huge_fault_bytes = size
    sim.start()
    account = parse_config({"accounts": [{"name": "acme", "username": "acme", "api_key": "acme-key",
                                          "endpoint": sim.url}], "storage": {"path": "x"}}).accounts[0]
    clients = {"fmgr": FmgrClient(sim.url, timeout=30, max_response_bytes=cap),
               "prefetch": CdnClient(account, timeout=30, max_response_bytes=cap)}
    def call(api):
        if api == "fmgr":
            return clients[api].status("job-1")
        return clients[api].query("prefetch", time.time() - 600, time.time())
    for api in clients:  # everything imported, connected and allocated once
        call(api)
    before = hwm_kib()
    results = []
    for api in clients:
        for fault in ("huge", "huge_chunked"):
            sim.inject(api, fault)
            try:
                call(api)
                results.append("ok")
            except VendorError as exc:
                results.append(exc.kind)
    after = hwm_kib()
    sim.stop()
    print(json.dumps({"before_kib": before, "after_kib": after, "results": results}))
""")


def peak_growth(cap: int, size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(cap), str(size)], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_a_400_mb_answer_leaves_peak_memory_flat():
    """Both APIs, the answer declared and chunked: peak RSS (client and simulator in one process, which also
    shows the simulator generates it as a stream) grows by the cap and a few pieces at most."""
    measured = peak_growth(CAP, 400 * 2**20)
    assert measured["results"] == ["too_large"] * 4, measured
    grew_mib = (measured["after_kib"] - measured["before_kib"]) / 1024
    assert grew_mib < 4, measured


def test_the_default_cap_is_the_documented_one():
    assert DEFAULT_MAX_RESPONSE_BYTES == 8 * 2**20
