"""The simulator's daily quotas: what tasks take of them as they are submitted, the day that starts at midnight
UTC+8, the signed POST and its answer (a lowercase ``code``, 0 for success), and the faults of the quota query."""

from __future__ import annotations

import json

import pytest
import requests
from conftest import T0

from exporter.simulator import ManualClock, Simulator
from exporter.vendor import signing

DAY = 86400.0
# T0 is 2026-11-22 08:00 UTC, 16:00 in UTC+8: the vendor's day began at 16:00 UTC the day before.
DAY_START = T0 - 16 * 3600


def post(sim: Simulator, path: str, user: str = "acme", key: str = "acme-key") -> requests.Response:
    date = signing.http_date(sim._clock())
    return requests.post(sim.url + path, data=b"{}", timeout=5, headers={
        "Date": date, "Authorization": signing.basic_authorization(user, key, date),
        "Content-Type": "application/json"})


def test_quotas_drop_as_tasks_are_submitted_and_start_over_at_midnight_utc8(sim_factory, clock):
    sim = sim_factory()
    assert sim.quota_truth("acme", "prefetch") == {"urls": (20_000, 20_000), "bytes": (200 * 10**9, 200 * 10**9)}
    assert sim.quota_truth("acme", "purge") == {"urls": (5000, 5000), "directories": (500, 500),
                                                "regexes": (500, 500), "tags": (500, 500)}
    # Submitted today (from DAY_START on) counts, whether the API serves the task yet or not; yesterday's does not.
    sim.add_cdn_task("acme", "prefetch", "https://a.example/1", T0 - 60, size=3 * 10**9)
    sim.add_cdn_task("acme", "prefetch", "https://a.example/2", DAY_START, size=10**9, visible_after=3600)
    sim.add_cdn_task("acme", "prefetch", "https://a.example/old", DAY_START - 1, size=50 * 10**9)
    sim.add_cdn_task("acme", "prefetch", "https://a.example/later", T0 + 60, size=10**9)  # not submitted yet
    sim.add_cdn_task("acme", "purge", "https://a.example/dir/", T0 - 5, target="directories")
    sim.add_cdn_task("acme", "purge", "https://a.example/x", T0 - 5)
    sim.add_cdn_task("acme", "purge", "https://a.example/(.*).png", T0 - 5, target="regexes")
    assert sim.quota_truth("acme", "prefetch") == {"urls": (20_000, 19_998), "bytes": (200 * 10**9, 196 * 10**9)}
    assert sim.quota_truth("acme", "purge") == {"urls": (5000, 4999), "directories": (500, 499),
                                                "regexes": (500, 499), "tags": (500, 500)}
    assert sim.quota_truth("globex", "prefetch")["urls"] == (20_000, 20_000)  # another account's own quota
    clock.advance(61)
    assert sim.quota_truth("acme", "prefetch")["urls"] == (20_000, 19_997)
    # Midnight UTC (8:00 in UTC+8) is no day boundary; midnight UTC+8 (16:00 UTC) is.
    clock.t = DAY_START + DAY - 1
    assert sim.quota_truth("acme", "prefetch")["urls"] == (20_000, 19_997)
    clock.t = DAY_START + DAY
    assert sim.quota_truth("acme", "prefetch") == {"urls": (20_000, 20_000), "bytes": (200 * 10**9, 200 * 10**9)}


def test_a_stream_takes_as_much_of_the_quota_as_its_tasks(sim_factory, clock):
    """One URL (and its size) per prefetch, one of its target per purge; whole minutes are summed from the slots'
    summaries, partial ones from their tasks, and the two agree."""
    sim = sim_factory()
    # Within the limits (16 hours of the day have passed): a quota left at 0 no longer says how much was taken.
    sim.add_cdn_stream("acme", "prefetch", per_hour=1000, start_ts=T0 - 2 * DAY)
    sim.add_cdn_stream("acme", "purge", per_hour=200, start_ts=T0 - 2 * DAY)
    clock.advance(37)
    for kind in ("prefetch", "purge"):
        tasks = len(sim.cdn_tasks_at("acme", kind, DAY_START, clock()))  # every task submitted today (none late)
        assert tasks > 2000
        used = {unit: limit - left for unit, (limit, left) in sim.quota_truth("acme", kind).items()}
        if kind == "prefetch":
            assert used["urls"] == tasks and 0.7 < used["bytes"] / tasks / (10 * 2**20) < 1.3  # 10 MiB on average
        else:
            assert sum(used.values()) == tasks
            assert used["urls"] > 5 * used["directories"] > 0 and used["directories"] > used["regexes"] > 0
    # Cut anywhere (inside minutes), the parts add up to the whole: summaries and tasks count the same.
    cdn = sim._cdn
    whole = cdn.usage("acme", "purge", DAY_START, clock())
    for cut in (DAY_START + 30.5 * 60 + 7, T0 - 3600 - 13):
        first, second = cdn.usage("acme", "purge", DAY_START, cut), cdn.usage("acme", "purge", cut + 1, clock())
        assert {u: first.get(u, 0) + second.get(u, 0) for u in whole} == whole


def test_the_signed_query_answers_a_lowercase_code_zero(sim_factory, clock):
    sim = sim_factory()
    sim.add_cdn_task("acme", "prefetch", "https://a.example/1", T0 - 60, size=2 * 10**9 + 1)
    resp = post(sim, "/ccm/prefetch/quota")
    assert resp.status_code == 200
    assert resp.json() == {"code": 0, "message": "success", "prefetchQuota": 20000, "remainingPrefetchQuota": 19999,
                           "prefetchVolumeQuota": 200, "remainingPrefetchVolumeQuota": 197}  # GB, rounded down
    assert post(sim, "/ccm/purge/quota").json() == {
        "code": 0, "message": "success", "urlQuota": 5000, "remainingUrlQuota": 5000, "dirQuota": 500,
        "remainingDirQuota": 500, "regexQuota": 500, "remainingRegexQuota": 500, "tagQuota": 500,
        "remainingTagQuota": 500}
    sim.set_quota("acme", "purge", "tags", 0)
    sim.quota_volume_unit = 2**30
    sim.string_numbers = True
    assert post(sim, "/ccm/purge/quota").json()["tagQuota"] == "0"
    assert post(sim, "/ccm/prefetch/quota").json()["prefetchVolumeQuota"] == str(200 * 10**9 // 2**30)
    # Unsigned or wrongly signed: refused like the status query.
    assert requests.post(sim.url + "/ccm/prefetch/quota", data=b"{}", timeout=5).status_code == 401
    assert post(sim, "/ccm/prefetch/quota", key="wrong").status_code == 401
    assert (sim.requests[("prefetch_quota", "acme")], sim.requests[("prefetch_quota", None)]) == (3, 1)


def test_the_quota_query_has_its_own_rate_limit(sim_factory, clock):
    sim = sim_factory(rate_limits={"prefetch_quota": (1, 60.0)})
    assert post(sim, "/ccm/prefetch/quota").status_code == 200
    assert post(sim, "/ccm/purge/quota").status_code == 200  # another API
    limited = post(sim, "/ccm/prefetch/quota")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "60"
    clock.advance(60)
    assert post(sim, "/ccm/prefetch/quota").status_code == 200


@pytest.mark.parametrize(("fault", "status", "body"), [
    ("code0:account not allowed", 200, {"code": 1, "message": "account not allowed"}),
    ("failure:401@200", 200, {"code": 401, "message": "authentication failed"}),
    ("failure:503", 503, {"code": 503, "message": "Service Unavailable"}),
    ("empty_page", 200, {"code": 0, "message": "success"}),
    ("wrong_types", 200, {"code": 0, "message": "success", "prefetchQuota": [20000], "remainingPrefetchQuota": [1],
                          "urlQuota": [5000], "remainingUrlQuota": [1]}),
    ("http500", 500, None),
    ("malformed", 200, None),
])
def test_quota_faults_in_the_quota_answers_shape(sim_factory, fault, status, body):
    sim = sim_factory()
    sim.inject("prefetch_quota", fault)
    resp = post(sim, "/ccm/prefetch/quota")
    assert resp.status_code == status
    if body is not None:
        assert resp.json() == body
    elif fault == "malformed":
        with pytest.raises(json.JSONDecodeError):
            json.loads(resp.text)
    assert post(sim, "/ccm/prefetch/quota").json()["code"] == 0  # one request only
    assert [e["fault"] for e in sim.request_log] == [fault, None]


def test_a_manual_clock_moves_the_day(sim_factory):
    clock = ManualClock(DAY_START + DAY - 10)
    sim = sim_factory(clock=clock)
    sim.add_cdn_task("acme", "purge", "https://a.example/tag", DAY_START + DAY - 20, target="tags")
    assert sim.quota_truth("acme", "purge")["tags"] == (500, 499)
    assert sim.quota_truth("acme", "purge", at=DAY_START + DAY)["tags"] == (500, 500)
    with pytest.raises(ValueError):
        sim.add_cdn_task("acme", "prefetch", "https://a.example/d/", T0, target="directories")
    with pytest.raises(ValueError):
        sim.set_quota("acme", "prefetch", "tags", 10)
