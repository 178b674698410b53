"""The shared vendor HTTP layer: the classifier and Retry-After parser (pure), and both clients over real HTTP
against the simulator, which must read the same failure the same way and count it the same way."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import requests
from conftest import T0, make_config

from exporter.fmgr import wire as fmgr
from exporter.fmgr.wire import FmgrClient
from exporter.metrics.health import RESULTS, ApiHealth
from exporter.vendor import cdn
from exporter.vendor.cdn import CdnClient
from exporter.vendor.http import (
    VendorError,
    classify_message,
    classify_status,
    http_date_in,
    observed,
    parse_retry_after,
)

# ---------------------------------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "bad_request"), (401, "auth"), (403, "auth"), (404, "not_found"), (405, "bad_request"),
        (418, "bad_request"), (429, "rate_limited"), (499, "bad_request"), (500, "server_error"),
        (503, "server_error"), (599, "server_error"), (200, "malformed"), (302, "malformed"), (600, "malformed"),
        (0, "malformed"),
    ],
)
def test_classify_status(status, kind):
    assert classify_status(status) == kind
    assert kind in RESULTS


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 503, 302])
def test_the_two_apis_differ_only_in_what_a_404_means(status):
    shared = classify_status(status)
    assert fmgr.kind_for_code(status) == shared  # an Fmgr 404 failure body: the id is unknown
    assert cdn.classify_http(status) == ("bad_request" if status == 404 else shared)  # no id to be unknown


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("page size error", "bad_request"),
        ("  PAGE SIZE ERROR ", "bad_request"),
        ("username is invalid", "auth"),
        ("signature mismatch", "auth"),
        ("Forbidden: no permission", "auth"),
        ("Too many requests", "rate_limited"),
        ("request frequency exceeded", "rate_limited"),
        ("something nobody documented", "unknown"),
        ("", "unknown"),
    ],
)
def test_classify_message(message, kind):
    known = {"page size error": "bad_request", "username is invalid": "auth"}
    assert classify_message(message, known) == kind


def test_documented_message_wins_over_its_words():
    # "auth" in the text, but documented as a refused request: the table decides.
    assert classify_message("auth token format error", {"auth token format error": "bad_request"}) == "bad_request"
    assert classify_message("auth token format error") == "auth"


NOW = T0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None), ("", None), ("   ", None), ("0", 0.0), ("7", 7.0), (" 30 ", 30.0), ("1.5", 1.5),
        ("-1", None), ("soon", None), ("inf", None), ("nan", None), ("1e3", None), ("9" * 400, None),
        ("0x10", None),
        # HTTP-dates, all three forms RFC 9110 accepts, 90 s after NOW (2026-11-22 08:00:00 UTC).
        ("Sun, 22 Nov 2026 08:01:30 GMT", 90.0),
        ("Sunday, 22-Nov-26 08:01:30 GMT", 90.0),
        ("Sun Nov 22 08:01:30 2026", 90.0),
        # A date in the past means "now".
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("Sun, 32 Nov 2026 08:01:30 GMT", None),
    ],
)
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


def test_http_date_round_trip():
    assert http_date_in(90, now=NOW) == "Sun, 22 Nov 2026 08:01:30 GMT"
    assert parse_retry_after(http_date_in(3600, now=NOW), now=NOW) == 3600.0


def test_retry_after_date_against_the_wall_clock():
    seconds = parse_retry_after(http_date_in(120))
    assert seconds is not None and 115 <= seconds <= 120


def test_error_carries_kind_message_status_retry_after():
    err = VendorError("rate_limited", "HTTP 429: slow down", status=429, retry_after=3.0)
    assert (err.kind, err.message, err.status, err.retry_after, str(err)) == (
        "rate_limited", "HTTP 429: slow down", 429, 3.0, "HTTP 429: slow down")
    assert cdn.ApiError is VendorError and fmgr.FmgrApiError is VendorError


def test_observed_counts_ok_errors_and_surprises():
    health = ApiHealth()
    ticks = iter([0.0, 0.2, 1.0, 1.5, 2.0, 14.0])
    clock = lambda: next(ticks)  # noqa: E731
    with observed(health, "prefetch", clock):
        pass
    with pytest.raises(VendorError), observed(health, "prefetch", clock):
        raise VendorError("timeout", "slow")
    with pytest.raises(KeyError), observed(health, "prefetch", clock):
        raise KeyError("a bug")
    counts = health.requests()
    assert counts[("prefetch", "ok")] == 1
    assert counts[("prefetch", "timeout")] == 1
    assert counts[("prefetch", "unknown")] == 1
    _buckets, total, n = health.durations()["prefetch"]
    assert n == 3 and total == pytest.approx(0.2 + 0.5 + 12.0)


# ------------------------------------------------------------------------------------ over real HTTP


@pytest.fixture
def rig(sim_factory, clock, tmp_path) -> Iterator[tuple]:
    sim = sim_factory()
    sim.timeout_fault_seconds = 1.0
    sim.add_fmgr_task("job-1", ["fetch"], created_ts=T0 - 60)
    cfg = make_config(sim.url, str(tmp_path / "db.sqlite"))
    health = ApiHealth()
    session = requests.Session()
    session.trust_env = False
    cdn_client = CdnClient(cfg.accounts[0], session=session, clock=clock, timeout=0.4, health=health)
    fmgr_client = FmgrClient(sim.url, session=session, timeout=0.4, health=health)
    yield sim, cdn_client, fmgr_client, health
    session.close()


def cdn_error(client: CdnClient) -> VendorError:
    with pytest.raises(VendorError) as info:
        client.query("prefetch", T0 - 600, T0)
    return info.value


def fmgr_error(client: FmgrClient, pid: str = "job-1") -> VendorError:
    with pytest.raises(VendorError) as info:
        client.status(pid)
    return info.value


@pytest.mark.parametrize(
    ("fault", "kind", "status", "retry_after"),
    [
        ("http500", "server_error", 500, None),
        ("http503", "server_error", 503, 2.0),
        ("http429", "rate_limited", 429, 1.0),
        ("timeout", "timeout", None, None),
        ("malformed", "malformed", None, None),
        ("wrong_types", "malformed", None, None),
    ],
)
def test_both_clients_read_a_fault_the_same_way(rig, fault, kind, status, retry_after):
    sim, cdn_client, fmgr_client, health = rig
    sim.inject("prefetch", fault)
    sim.inject("fmgr", fault)
    for err in (cdn_error(cdn_client), fmgr_error(fmgr_client)):
        assert (err.kind, err.retry_after) == (kind, retry_after)
        if status is not None:
            assert err.status == status
        assert err.message
    counts = health.requests()
    for api in ("prefetch", "fmgr"):
        assert counts[(api, kind)] == 1
        assert sum(v for (a, _), v in counts.items() if a == api) == 1
        assert health.durations()[api][2] == 1
    # The next request is answered normally, and counted as ok.
    assert cdn_client.query("prefetch", T0 - 600, T0).count >= 0
    assert fmgr_client.status("job-1").id == "job-1"
    counts = health.requests()
    assert counts[("prefetch", "ok")] == 1 and counts[("fmgr", "ok")] == 1


def test_cdn_auth_failure_is_auth(rig):
    _, cdn_client, _, health = rig
    cdn_client.account = dataclasses.replace(cdn_client.account, api_key="wrong")
    err = cdn_error(cdn_client)
    assert (err.kind, err.status) == ("auth", 401)
    assert health.requests()[("prefetch", "auth")] == 1


def test_cdn_code0_message_is_classified(rig):
    sim, cdn_client, _, health = rig
    sim.inject("prefetch", "code0:page size error")
    err = cdn_error(cdn_client)
    assert err.kind == "bad_request" and err.page_size_error
    assert health.requests()[("prefetch", "bad_request")] == 1


def test_fmgr_unknown_id_is_not_found(rig):
    _, _, fmgr_client, health = rig
    err = fmgr_error(fmgr_client, "no-such-job")
    assert (err.kind, err.status) == ("not_found", 404)
    assert health.requests()[("fmgr", "not_found")] == 1


def test_rate_limiter_retry_after_reaches_both_clients(sim_factory, clock, tmp_path):
    sim = sim_factory(rate_limits={"prefetch": (1, 60.0), "fmgr": (1, 60.0)})
    sim.add_fmgr_task("job-1", ["fetch"], created_ts=T0 - 60)
    cfg = make_config(sim.url, str(tmp_path / "db.sqlite"))
    cdn_client = CdnClient(cfg.accounts[0], clock=clock, timeout=2)
    fmgr_client = FmgrClient(sim.url, timeout=2)
    cdn_client.query("prefetch", T0 - 600, T0)
    fmgr_client.status("job-1")
    for err in (cdn_error(cdn_client), fmgr_error(fmgr_client)):
        assert (err.kind, err.status, err.retry_after) == ("rate_limited", 429, 60.0)
