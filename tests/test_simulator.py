"""The vendor simulator, exercised over real HTTP on 127.0.0.1 with a fake clock."""

from __future__ import annotations

import base64
import collections
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Clock as FakeClock

from exporter.simulator import Simulator
from exporter.vendor import signing

FIXTURES = Path(__file__).parent / "fixtures"
NOW = 1_795_334_400  # 2026-11-22 08:00:00 UTC, on a minute boundary
DAY = 86400
PATHS = {"prefetch": "/ccm/fetch/ItemIdQuery", "purge": "/ccm/purge/ItemIdQuery"}
USER, API_KEY, ACCESS_KEY, SECRET_KEY = "acme", "acme-api-key", "AK-acme", "SK-acme"


def local(ts: float, offset_hours: int = 8) -> str:
    return datetime.fromtimestamp(ts, timezone(timedelta(hours=offset_hours))).strftime("%Y-%m-%d %H:%M:%S")


class CdnClient:
    """Speaks the CDN API the way the vendor's own curl example does."""

    def __init__(self, sim: Simulator, clock: FakeClock, offset_hours: int = 8) -> None:
        self.sim, self.clock, self.offset_hours = sim, clock, offset_hours
        self.session = requests.Session()

    def post(self, body: dict[str, Any] | bytes, *, kind: str = "prefetch", user: str = USER,
             key: str = API_KEY, date: str | None = None, timeout: float = 5) -> requests.Response:
        date = signing.http_date(self.clock()) if date is None else date
        headers = {"Date": date, "Authorization": signing.basic_authorization(user, key, date),
                   "Content-Type": "application/json"}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.session.post(self.sim.url + PATHS[kind], data=data, headers=headers, timeout=timeout)

    def body(self, start: float, end: float, **extra: Any) -> dict[str, Any]:
        return {"startTime": local(start, self.offset_hours), "endTime": local(end, self.offset_hours), **extra}

    def query(self, start: float, end: float, **extra: Any) -> dict[str, Any]:
        response = self.post(self.body(start, end, **extra))
        assert response.status_code == 200, response.text
        payload = response.json()
        assert payload["Code"] == 1, payload
        return payload


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    simulator = Simulator(clock=clock, seed=7)
    simulator.add_account(USER, API_KEY, access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    simulator.start()
    yield simulator
    simulator.stop()


@pytest.fixture
def cdn(sim: Simulator, clock: FakeClock) -> Iterator[CdnClient]:
    client = CdnClient(sim, clock)
    yield client
    client.session.close()


class Receiver:
    """A tiny notify endpoint that records every POST and answers with scripted status codes."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.codes: collections.deque[int] = collections.deque()
        self.default_code = 200
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.posts.append({"path": self.path, "headers": dict(self.headers), "body": body})
                receiver.received.set()
                code = receiver.codes.popleft() if receiver.codes else receiver.default_code
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify/fmgr?tenant=t1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


# ------------------------------------------------------------------------------------------- auth


def test_basic_auth_ok_answers_in_the_seed_shape(sim: Simulator, cdn: CdnClient) -> None:
    sim.add_cdn_task(USER, "prefetch", "https://a.example.com/x.jpg", NOW - 600)
    response = cdn.post(cdn.body(NOW - 3600, NOW))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "charset=utf-8; charset=UTF-8"  # verbatim from seed 002
    payload = response.json()
    assert list(payload) == ["count", "Code", "message", "pageNo", "pageSize", "resultDetail"]
    assert (payload["count"], payload["Code"], payload["message"]) == (1, 1, "success")
    assert (payload["pageNo"], payload["pageSize"]) == (1, 20)
    assert list(payload["resultDetail"][0]) == ["beginTime", "createTime", "finishTime", "rate", "status", "url"]


def test_basic_auth_wrong_key_is_401(cdn: CdnClient) -> None:
    response = cdn.post(cdn.body(NOW - 60, NOW), key="not-the-key")
    assert response.status_code == 401
    assert response.json() == {"Code": 0, "Message": "authentication failed"}


def test_unknown_username_is_the_seed_error(cdn: CdnClient) -> None:
    response = cdn.post(cdn.body(NOW - 60, NOW), user="nobody")
    assert response.status_code == 200
    assert response.json() == {"Code": 0, "Message": "username is invalid"}


@pytest.mark.parametrize(
    ("date", "status"),
    [
        (signing.http_date(NOW - 900), 200),  # exactly at the allowed skew
        (signing.http_date(NOW + 900), 200),
        (signing.http_date(NOW - 901), 401),
        (signing.http_date(NOW + 901), 401),
        ("", 401),
        ("yesterday-ish", 401),
    ],
)
def test_date_header_must_be_fresh(cdn: CdnClient, date: str, status: int) -> None:
    assert cdn.post(cdn.body(NOW - 60, NOW), date=date).status_code == status


def _aksk_post(sim: Simulator, body: bytes, *, access_key: str = ACCESS_KEY, secret: str = SECRET_KEY,
               timestamp: float = NOW, sent_body: bytes | None = None) -> requests.Response:
    host = sim.url.removeprefix("http://")
    stamp = str(int(timestamp))
    signature = signing.aksk_signature(secret, method="POST", path=PATHS["prefetch"], query="", host=host,
                                       content_type="application/json", body=body, timestamp=stamp)
    headers = {"x-cnc-accessKey": access_key, "x-cnc-timestamp": stamp, "Content-Type": "application/json",
               "Authorization": signing.aksk_authorization(access_key, signature)}
    return requests.post(sim.url + PATHS["prefetch"], data=sent_body if sent_body is not None else body,
                         headers=headers, timeout=5)


def test_aksk_auth_ok_and_every_bad_variant_is_401(sim: Simulator) -> None:
    body = json.dumps({"startTime": local(NOW - 60), "endTime": local(NOW)}).encode()
    ok = _aksk_post(sim, body)
    assert ok.status_code == 200 and ok.json()["Code"] == 1
    assert sim.requests[("prefetch", USER)] == 1  # the access key maps to its user
    bad = [
        _aksk_post(sim, body, secret="wrong"),
        _aksk_post(sim, body, sent_body=body + b" "),  # body changed after signing
        _aksk_post(sim, body, timestamp=NOW - 301),
        _aksk_post(sim, body, access_key="AK-unknown"),
    ]
    assert [r.status_code for r in bad] == [401] * 4
    assert all(r.json() == {"Code": 0, "Message": "authentication failed"} for r in bad)
    assert _aksk_post(sim, body, timestamp=NOW - 300).status_code == 200


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "parse json error"),
        (b"[1, 2]", "parse json error"),
        ({"endTime": local(NOW)}, "startTime or endTime must not be empty"),
        ({"startTime": local(NOW - 60), "endTime": ""}, "startTime or endTime must not be empty"),
        ({"startTime": "2026/11/22 15:00:00", "endTime": local(NOW)}, "query time error"),
        ({"startTime": local(NOW - 60), "endTime": 1795334400}, "query time error"),
        ({"startTime": local(NOW), "endTime": local(NOW - 1)}, "endTime should not before startTime"),
        ({"startTime": local(NOW - DAY - 1), "endTime": local(NOW)}, "query time error"),
        ({"startTime": local(NOW - 3 * DAY - 1), "endTime": local(NOW - 3 * DAY)},
         "query create time should not before 3 days"),
        ({"startTime": local(NOW - 60), "endTime": local(NOW), "pageSize": 0}, "page size error"),
        ({"startTime": local(NOW - 60), "endTime": local(NOW), "pageSize": 501}, "page size error"),
        ({"startTime": local(NOW - 60), "endTime": local(NOW), "pageSize": "lots"}, "page size error"),
        ({"startTime": local(NOW - 60), "endTime": local(NOW), "pageNo": 0}, "page no error"),
        ({"startTime": local(NOW - 60), "endTime": local(NOW), "pageNo": "first"}, "page no error"),
        ({"startTime": local(NOW - 60), "endTime": local(NOW), "status": "done"},
         "task status error,eg: init wait run success failure"),
    ],
)
def test_every_seed_error_message(cdn: CdnClient, body: dict[str, Any] | bytes, message: str) -> None:
    response = cdn.post(body)
    assert response.status_code == 200
    assert response.json() == {"Code": 0, "Message": message}


def test_one_day_span_is_allowed_and_one_second_more_is_not(cdn: CdnClient) -> None:
    assert cdn.post(cdn.body(NOW - DAY, NOW)).json()["Code"] == 1
    assert cdn.post(cdn.body(NOW - DAY - 1, NOW)).json() == {"Code": 0, "Message": "query time error"}


def test_three_day_age_limit_at_the_boundary(cdn: CdnClient, clock: FakeClock) -> None:
    start = NOW - 3 * DAY
    assert cdn.post(cdn.body(start, start + 60)).json()["Code"] == 1
    clock.advance(1)  # now the same start is one second too old
    assert cdn.post(cdn.body(start, start + 60)).json()["Message"] == "query create time should not before 3 days"


def test_numbers_may_be_strings_in_the_request(sim: Simulator, cdn: CdnClient) -> None:
    for i in range(3):
        sim.add_cdn_task(USER, "prefetch", f"https://a.example.com/{i}.jpg", NOW - 600 + i)
    payload = cdn.query(NOW - 3600, NOW, pageNo="2", pageSize="2")
    assert (payload["count"], payload["pageNo"], payload["pageSize"]) == (3, 2, 2)
    assert [d["url"] for d in payload["resultDetail"]] == ["https://a.example.com/0.jpg"]


def test_string_numbers_option_sends_numbers_as_strings(clock: FakeClock) -> None:
    sim = Simulator(clock=clock, string_numbers=True)
    sim.add_account(USER, API_KEY)
    sim.add_cdn_task(USER, "prefetch", "https://a.example.com/x.jpg", NOW - 600)
    sim.start()
    try:
        payload = CdnClient(sim, clock).query(NOW - 3600, NOW, pageSize=5)
    finally:
        sim.stop()
    assert (payload["count"], payload["pageNo"], payload["pageSize"]) == ("1", "1", "5")


# ------------------------------------------------------------------------------------------ data


def test_pages_add_up_to_count_and_truth(sim: Simulator, cdn: CdnClient) -> None:
    sim.add_cdn_stream(USER, "prefetch", per_hour=600, start_ts=NOW - 6 * 3600)
    start, end = NOW - 3 * 3600 + 17, NOW  # not on slot boundaries on purpose
    truth = sim.cdn_truth(USER, "prefetch", start, end)
    assert truth["total"] > 1000
    seen: list[dict[str, Any]] = []
    page_no = 1
    while True:
        payload = cdn.query(start, end, pageNo=page_no, pageSize=37)
        assert payload["count"] == truth["total"]
        assert (payload["pageNo"], payload["pageSize"]) == (page_no, 37)
        if not payload["resultDetail"]:
            break
        seen.extend(payload["resultDetail"])
        page_no += 1
    assert len(seen) == truth["total"]
    assert page_no - 1 == -(-truth["total"] // 37)  # the first empty page is the one past the end
    assert len({(d["url"], d["createTime"]) for d in seen}) == len(seen)
    keys = [(d["createTime"], d["url"]) for d in seen]
    assert keys == sorted(keys, key=lambda k: (-datetime.strptime(k[0], "%Y-%m-%d %H:%M:%S").timestamp(), k[1]))
    assert min(d["createTime"] for d in seen) >= local(start)
    assert collections.Counter(d["status"] for d in seen) == {
        s: n for s, n in truth.items() if s != "total" and n}


def test_status_filters_count_like_the_truth(sim: Simulator, cdn: CdnClient) -> None:
    sim.add_cdn_stream(USER, "prefetch", per_hour=1200, failure_ratio=0.2, start_ts=NOW - 2 * 3600)
    truth = sim.cdn_truth(USER, "prefetch", NOW - 2 * 3600, NOW)
    assert min(truth.values()) > 0  # every state is present: recent tasks still wait or run
    for status in ("wait", "run", "success", "failure"):
        payload = cdn.query(NOW - 2 * 3600, NOW, status=status, pageSize=1)
        assert payload["count"] == truth[status], status
        assert all(d["status"] == status for d in payload["resultDetail"])
    assert cdn.query(NOW - 2 * 3600, NOW, status="init")["count"] == 0


def test_truth_agrees_with_the_built_tasks(sim: Simulator) -> None:
    # cdn_truth counts settled minutes from summaries; cdn_tasks_at builds every task.
    sim.add_cdn_stream(USER, "purge", per_hour=1500, failure_ratio=0.3, start_ts=NOW - DAY)
    tasks = sim.cdn_tasks_at(USER, "purge", NOW - 5 * 3600, NOW)
    truth = sim.cdn_truth(USER, "purge", NOW - 5 * 3600, NOW)
    counted = collections.Counter(t["status"] for t in tasks)
    assert truth == {**{s: counted[s] for s in ("wait", "run", "success", "failure")}, "total": len(tasks)}
    failed_rates = {int(t["rate"]) for t in tasks if t["status"] == "failure"}
    assert failed_rates and max(failed_rates) < 100
    assert {t["rate"] for t in tasks if t["status"] == "success"} == {"100"}
    assert all(t["create_ts"] <= NOW and local(t["create_ts"]) == t["createTime"] for t in tasks)


def test_streams_are_deterministic_per_seed(clock: FakeClock) -> None:
    def tasks(seed: int) -> list[dict[str, Any]]:
        sim = Simulator(clock=clock, seed=seed)
        sim.add_cdn_stream(USER, "prefetch", per_hour=600, start_ts=NOW - 3600)
        return sim.cdn_tasks_at(USER, "prefetch", NOW - 3600, NOW)

    assert tasks(3) == tasks(3)
    assert tasks(3) != tasks(4)


def test_url_and_item_id_filters(sim: Simulator, cdn: CdnClient) -> None:
    sim.add_cdn_task(USER, "prefetch", "https://a.example.com/1.jpg", NOW - 300, item_id="batch-1")
    sim.add_cdn_task(USER, "prefetch", "https://a.example.com/2.jpg", NOW - 300, item_id="batch-1")
    sim.add_cdn_task(USER, "prefetch", "https://a.example.com/1.jpg", NOW - 200, item_id="batch-2")
    assert cdn.query(NOW - 3600, NOW, itemId="batch-1")["count"] == 2
    by_url = cdn.query(NOW - 3600, NOW, url="https://a.example.com/1.jpg")
    assert [d["createTime"] for d in by_url["resultDetail"]] == [local(NOW - 200), local(NOW - 300)]
    assert cdn.query(NOW - 3600, NOW, url="https://a.example.com/1.jpg", itemId="batch-1")["count"] == 1


def test_purge_and_prefetch_are_separate(sim: Simulator, cdn: CdnClient) -> None:
    sim.add_cdn_task(USER, "purge", "https://a.example.com/dir/", NOW - 300)
    assert cdn.query(NOW - 3600, NOW)["count"] == 0
    payload = cdn.post(cdn.body(NOW - 3600, NOW), kind="purge").json()
    assert payload["count"] == 1 and payload["resultDetail"][0]["url"] == "https://a.example.com/dir/"


@pytest.mark.parametrize(("zone", "hours", "expected"), [("+08:00", 8, "2026-11-22 16:00:00"),
                                                          ("-05:00", -5, "2026-11-22 03:00:00")])
def test_times_speak_the_configured_zone(clock: FakeClock, zone: str, hours: int, expected: str) -> None:
    sim = Simulator(clock=clock, timezone=zone)
    sim.add_account(USER, API_KEY)
    created = NOW  # 08:00:00 UTC
    sim.add_cdn_task(USER, "prefetch", "https://a.example.com/z.jpg", created, wait=10, run=20)
    clock.advance(60)
    sim.start()
    try:
        client = CdnClient(sim, clock, offset_hours=hours)
        exact = client.query(created, created)  # the range is inclusive at both ends
        after = client.query(created + 1, created + 60)
        cdn_utc = CdnClient(sim, clock, offset_hours=0).query(created, created)  # wrong zone: misses it
    finally:
        sim.stop()
    detail = exact["resultDetail"][0]
    assert detail["createTime"] == expected
    assert detail["beginTime"] == local(created + 10, hours)
    assert detail["finishTime"] == local(created + 30, hours)
    assert after["count"] == 0
    assert cdn_utc["count"] == 0


def test_a_task_evolves_wait_run_final(sim: Simulator, cdn: CdnClient, clock: FakeClock) -> None:
    sim.add_cdn_task(USER, "prefetch", "https://a.example.com/ok.jpg", NOW, wait=30, run=60)
    sim.add_cdn_task(USER, "prefetch", "https://a.example.com/bad.jpg", NOW, wait=30, run=60,
                     final="failure", rate=40)

    def details() -> dict[str, dict[str, str]]:
        payload = cdn.query(NOW - 60, NOW + 60)
        return {d["url"].rsplit("/", 1)[1]: d for d in payload["resultDetail"]}

    first = details()["ok.jpg"]
    assert (first["status"], first["beginTime"], first["finishTime"], first["rate"]) == ("wait", "", "", "0")
    clock.advance(30)
    running = details()["ok.jpg"]
    assert (running["status"], running["beginTime"], running["finishTime"]) == ("run", local(NOW + 30), "")
    clock.advance(59)
    assert details()["ok.jpg"]["status"] == "run"
    clock.advance(1)
    done = details()
    assert (done["ok.jpg"]["status"], done["ok.jpg"]["finishTime"], done["ok.jpg"]["rate"]) == (
        "success", local(NOW + 90), "100")
    assert (done["bad.jpg"]["status"], done["bad.jpg"]["rate"]) == ("failure", "40")


def test_tasks_do_not_exist_before_they_are_created(sim: Simulator, cdn: CdnClient, clock: FakeClock) -> None:
    later_url = "https://a.example.com/later.jpg"
    sim.add_cdn_task(USER, "prefetch", later_url, NOW + 120)
    sim.add_cdn_stream(USER, "prefetch", per_hour=3600, start_ts=NOW)  # a stream into the future
    assert cdn.query(NOW - 60, NOW + 3600, url=later_url)["count"] == 0
    assert sim.cdn_truth(USER, "prefetch", NOW + 1, NOW + 3600)["total"] == 0
    assert sim.cdn_tasks_at(USER, "prefetch", NOW + 1, NOW + 3600) == []
    clock.advance(600)
    assert cdn.query(NOW - 60, NOW + 3600, url=later_url)["count"] == 1
    later = cdn.query(NOW - 60, NOW + 3600)
    assert later["count"] == sim.cdn_truth(USER, "prefetch", NOW, NOW + 3600)["total"] > 100
    assert max(d["createTime"] for d in later["resultDetail"]) <= local(NOW + 600)


def test_a_day_of_100k_tasks_answers_fast(sim: Simulator, cdn: CdnClient) -> None:
    sim.add_cdn_stream(USER, "prefetch", per_hour=100_000 / 24, start_ts=NOW - 2 * DAY)
    started = time.perf_counter()
    payload = cdn.query(NOW - DAY, NOW, pageNo=7, pageSize=500)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    failures = cdn.query(NOW - DAY, NOW, status="failure", pageSize=1)
    warm = time.perf_counter() - started
    assert 95_000 < payload["count"] < 105_000 and len(payload["resultDetail"]) == 500
    assert failures["count"] == sim.cdn_truth(USER, "prefetch", NOW - DAY, NOW)["failure"]
    assert cold < 1.0 and warm < 0.5, (cold, warm)


# ------------------------------------------------------------------------------ limits and faults


def test_rate_limit_answers_429_with_retry_after(clock: FakeClock) -> None:
    sim = Simulator(clock=clock, rate_limits={"prefetch": (2, 300.0)})
    sim.add_account(USER, API_KEY)
    sim.start()
    try:
        client = CdnClient(sim, clock)
        body = client.body(NOW - 60, NOW)
        assert client.post(body).status_code == 200
        clock.advance(100)
        assert client.post(body).status_code == 200
        clock.advance(50)
        refused = client.post(body)
        purge_ok = client.post(body, kind="purge")  # another api has its own (here no) budget
        clock.advance(150)  # the first request's slot frees
        again = client.post(body)
    finally:
        sim.stop()
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "150"
    assert refused.json() == {"Code": 0, "Message": "rate limit exceeded"}
    assert purge_ok.status_code == 200
    assert again.status_code == 200
    assert sim.rate_limit_violations == 1
    assert sim.requests[("prefetch", USER)] == 4


@pytest.mark.parametrize(
    ("fault", "status", "retry_after"),
    [("http500", 500, None), ("http503", 503, "2"), ("http429", 429, "1"), ("malformed", 200, None),
     ("wrong_types", 200, None), ("code0:query time error", 200, None)],
)
def test_injected_faults(sim: Simulator, cdn: CdnClient, fault: str, status: int,
                         retry_after: str | None) -> None:
    sim.inject("prefetch", fault)
    # Faults come before auth: even a wrongly signed request gets the fault.
    response = cdn.post(cdn.body(NOW - 60, NOW), key="wrong")
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    if fault == "malformed":
        assert response.content == b'{"count": 1, "Code": 1,'
        with pytest.raises(ValueError):
            response.json()
    elif fault == "wrong_types":
        assert isinstance(response.json()["resultDetail"], str)
    elif fault.startswith("code0:"):
        assert response.json() == {"Code": 0, "Message": "query time error"}
    assert cdn.post(cdn.body(NOW - 60, NOW)).json()["Code"] == 1  # only the next request was hit
    assert sim.requests[("prefetch", USER)] == 2
    assert [e["fault"] for e in sim.request_log] == [fault, None]


@pytest.mark.parametrize(
    ("fault", "status", "body"),
    [("failure:401", 401, {"code": "401", "message": "authentication failed"}),
     ("failure:403", 403, {"code": "403", "message": "authentication failed"}),
     ("failure:502", 502, {"code": "502", "message": "Bad Gateway"}),
     ("failure:500@200", 200, {"code": "500", "message": "Internal Server Error"})],
)
def test_the_fmgr_failure_body_of_seed_000_as_a_fault(sim: Simulator, fault: str, status: int,
                                                      body: dict) -> None:
    sim.inject("fmgr", fault)
    response = requests.get(sim.url + "/fmgr/status", params={"persistentId": "x"}, timeout=5)
    assert (response.status_code, response.json()) == (status, body)
    assert [e["fault"] for e in sim.request_log] == [fault]


def test_the_cdn_failure_body_at_an_http_status(sim: Simulator, cdn: CdnClient) -> None:
    sim.inject("prefetch", "failure:401")
    response = cdn.post(cdn.body(NOW - 60, NOW))
    assert (response.status_code, response.json()) == (401, {"Code": 0, "Message": "authentication failed"})
    for bad in ("failure:", "failure:99", "failure:600", "failure:401@", "failure:401@2000"):
        with pytest.raises(ValueError):
            sim.inject("fmgr", bad)


def test_fault_count_and_other_apis(sim: Simulator, cdn: CdnClient) -> None:
    sim.inject("prefetch", "http500", count=2)
    assert [cdn.post(cdn.body(NOW - 60, NOW)).status_code for _ in range(3)] == [500, 500, 200]
    sim.inject("fmgr", "http503")
    assert requests.get(sim.url + "/fmgr/status", params={"persistentId": "x"}, timeout=5).status_code == 503
    assert cdn.post(cdn.body(NOW - 60, NOW), kind="purge").status_code == 200
    with pytest.raises(ValueError):
        sim.inject("prefetch", "explode")
    with pytest.raises(ValueError):
        sim.inject("dns", "http500")


def test_timeout_fault_outlasts_a_short_client_timeout(sim: Simulator, cdn: CdnClient) -> None:
    sim.inject("prefetch", "timeout")
    with pytest.raises(requests.Timeout):
        cdn.post(cdn.body(NOW - 60, NOW), timeout=0.5)
    # The sleeping handler holds no lock: the next request is answered at once.
    started = time.perf_counter()
    assert CdnClient(sim, cdn.clock).post(cdn.body(NOW - 60, NOW)).status_code == 200
    assert time.perf_counter() - started < 1.0


def test_request_counters_log_and_reset(sim: Simulator, cdn: CdnClient) -> None:
    body = cdn.body(NOW - 60, NOW, status="success")
    cdn.post(body)
    cdn.post(body, user="nobody")
    requests.get(sim.url + "/fmgr/status", params={"persistentId": "missing"}, timeout=5)
    assert sim.requests == {("prefetch", USER): 1, ("prefetch", "nobody"): 1, ("fmgr", None): 1}
    first = sim.request_log[0]
    assert (first["api"], first["user"], first["body"], first["result"], first["ts"]) == (
        "prefetch", USER, body, "ok", NOW)
    assert [e["result"] for e in sim.request_log] == ["ok", "auth", "not_found"]
    assert sim.request_log[2]["body"] == {"persistentId": "missing"}
    sim.reset_counters()
    assert not sim.requests and not sim.request_log and sim.rate_limit_violations == 0


def test_unknown_path_and_wrong_method(sim: Simulator) -> None:
    assert requests.post(sim.url + "/ccm/other", data=b"{}", timeout=5).status_code == 404
    assert requests.get(sim.url + PATHS["prefetch"], timeout=5).status_code == 405


# ------------------------------------------------------------------------------------------- Fmgr


def _fmgr_get(sim: Simulator, persistent_id: str) -> requests.Response:
    return requests.get(sim.url + "/fmgr/status", params={"persistentId": persistent_id}, timeout=5)


def test_fmgr_codes_evolve(sim: Simulator, clock: FakeClock) -> None:
    sim.add_fmgr_task("job-1", ["fetch", "deletePrefix", "copy"], pending=5, processing=20, fail_items=[2],
                      fsize=4096)
    pending = _fmgr_get(sim, "job-1").json()
    assert (pending["code"], [int(i["code"]) for i in pending["items"]]) == (0, [0, 0, 0])
    clock.advance(5)
    assert [int(i["code"]) for i in _fmgr_get(sim, "job-1").json()["items"]] == [1, 1, 1]
    clock.advance(20)
    done = _fmgr_get(sim, "job-1").json()
    assert list(done) == ["id", "code", "desc", "separate", "items"]
    assert (done["id"], done["code"], done["desc"]) == ("job-1", 3, "fileOperateFailed")
    fetch, prefix, copy = done["items"]
    assert list(fetch) == ["cmd", "code", "desc", "error", "hash", "fsize", "key", "url"]
    assert (int(fetch["code"]), fetch["error"], int(fetch["fsize"]), len(fetch["hash"])) == (3, None, 4096, 28)
    assert fetch["cmd"].startswith("fetch/") and "/bucket/" in fetch["cmd"]
    assert base64.urlsafe_b64decode(fetch["cmd"].split("/")[1]).decode().startswith("http://")
    assert (prefix["cmd"].split("/")[0], prefix["fsize"], prefix["hash"]) == ("deletePrefix", "", "")
    assert (int(copy["code"]), isinstance(copy["error"], str)) == (2, True)
    assert done == sim.fmgr_status("job-1")


def test_fmgr_shapes_vary_like_the_seeds(sim: Simulator, clock: FakeClock) -> None:
    for i in range(4):
        sim.add_fmgr_task(f"shape-{i}", ["fetch"], pending=1, processing=1)
    clock.advance(5)
    bodies = [_fmgr_get(sim, f"shape-{i}").json() for i in range(4)]
    code_types = {type(b["items"][0]["code"]) for b in bodies}
    fsize_types = {type(b["items"][0]["fsize"]) for b in bodies}
    separate_values = {b["separate"] for b in bodies}
    assert code_types == {int, str}
    assert fsize_types == {int, str}
    assert separate_values == {0, "0"}
    assert all(type(b["code"]) is int for b in bodies)


def test_fmgr_unknown_missing_and_not_yet_created(sim: Simulator, clock: FakeClock) -> None:
    missing = _fmgr_get(sim, "nope")
    assert (missing.status_code, missing.json()) == (404, {"code": "404", "message": "persistentId not found"})
    no_param = requests.get(sim.url + "/fmgr/status", timeout=5)
    assert (no_param.status_code, no_param.json()) == (400, {"code": 400, "message": "persistentId is required"})
    sim.add_fmgr_task("future", ["fetch"], created_ts=NOW + 10)
    assert _fmgr_get(sim, "future").status_code == 404
    assert "future" not in sim.fmgr_ids()
    clock.advance(10)
    assert _fmgr_get(sim, "future").status_code == 200
    assert sim.fmgr_ids() == ["future"]
    with pytest.raises(ValueError):
        sim.add_fmgr_task("future", ["copy"])


def test_fmgr_stream_creates_ids_lazily(sim: Simulator, clock: FakeClock) -> None:
    sim.add_fmgr_stream(per_minute=6, start_ts=NOW - 60, id_prefix="job", failure_ratio=0.5)
    ids = sim.fmgr_ids()
    assert ids == [f"job-{n:08d}" for n in range(7)]  # one every 10 s, the first at start_ts
    assert _fmgr_get(sim, "job-00000007").status_code == 404
    clock.advance(10)
    assert _fmgr_get(sim, "job-00000007").status_code == 200
    clock.advance(600)  # everything so far has finished
    bodies = [_fmgr_get(sim, pid).json() for pid in ids]
    assert all(b["code"] == 3 and 1 <= len(b["items"]) <= 3 for b in bodies)
    ops = {i["cmd"].split("/")[0] for b in bodies for i in b["items"]}
    assert ops <= {"fetch", "copy", "move", "delete", "compress", "deletePrefix"} and len(ops) >= 2
    assert {int(i["code"]) for b in bodies for i in b["items"]} == {2, 3}
    assert sim.fmgr_ids(at=NOW - 61) == []


# ---------------------------------------------------------------------------------- notifications


def _decode(body: bytes) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(body))


def _code(sim: Simulator, persistent_id: str) -> int:
    status = sim.fmgr_status(persistent_id)
    assert status is not None, persistent_id
    return status["code"]


def test_notification_is_signed_and_moves_the_codes(sim: Simulator, clock: FakeClock,
                                                     receiver: Receiver) -> None:
    sim.add_fmgr_task("n-1", ["fetch", "move"], pending=1, processing=2, fail_items=[1],
                      notify_url=receiver.url, notify_key=("AK1", "SK1"), notify_delay=4)
    assert sim.deliver_due_notifications() == 0  # not finished yet
    clock.advance(3)
    completed = sim.fmgr_status("n-1")  # processing completed; the notification phase starts 4 s later
    assert completed is not None
    assert (completed["code"], [int(i["code"]) for i in completed["items"]]) == (3, [3, 2])
    assert sim.deliver_due_notifications() == 0
    clock.advance(4)
    notifying = sim.fmgr_status("n-1")
    assert notifying is not None
    assert (notifying["code"], [int(i["code"]) for i in notifying["items"]]) == (4, [4, 18])
    assert sim.deliver_due_notifications() == 1
    (post,) = receiver.posts
    assert post["path"] == "/notify/fmgr?tenant=t1"
    assert post["headers"]["Content-Type"] == "text/plain; charset=UTF-8"
    access_key, _, signature = post["headers"]["Authorization"].partition(":")
    assert access_key == "AK1"
    assert signing.constant_time_equals(signature, signing.fmgr_notify_signature("SK1", receiver.url, post["body"]))
    payload = _decode(post["body"])
    seed_example = _decode((FIXTURES / "fmgr_notify_example.b64").read_bytes())
    assert list(payload) == list(seed_example)
    assert list(payload["items"][0]) == list(seed_example["items"][0])
    assert b": " not in base64.urlsafe_b64decode(post["body"])  # compact, like the seed's body
    assert (payload["id"], payload["code"], payload["desc"]) == ("n-1", 3, "fileOperateFailed")
    assert [int(i["code"]) for i in payload["items"]] == [3, 2]
    # The vendor records the delivery a moment later: until then a poll still says notifying.
    assert sim.fmgr_status("n-1")["code"] == 4
    clock.advance(sim.notify_record_delay)
    notified = sim.fmgr_status("n-1")
    assert notified is not None
    assert (notified["code"], [int(i["code"]) for i in notified["items"]]) == (6, [6, 20])
    assert sim.deliver_due_notifications() == 0  # delivered once, never again
    assert sim.notify_log == [{"id": "n-1", "attempt": 1, "status_code": 200, "forged": False,
                               "duplicate": False, "ts": NOW + 7, "lost": False}]


def test_failed_deliveries_back_off_then_give_up(sim: Simulator, clock: FakeClock, receiver: Receiver) -> None:
    receiver.default_code = 500
    sim.configure_notifier(duplicate_ratio=0, forged_ratio=0, max_attempts=3)
    sim.add_fmgr_task("n-2", ["fetch"], pending=0, processing=1, notify_url=receiver.url,
                      notify_key=("AK1", "SK1"), notify_delay=0)
    clock.advance(1)
    assert sim.deliver_due_notifications() == 1
    assert sim.deliver_due_notifications() == 0  # backing off 0.5 s
    clock.advance(0.5)
    assert sim.deliver_due_notifications() == 1
    clock.advance(0.9)
    assert sim.deliver_due_notifications() == 0  # now 1.0 s
    clock.advance(0.1)
    assert sim.deliver_due_notifications() == 1
    clock.advance(60)
    assert sim.deliver_due_notifications() == 0
    assert [e["attempt"] for e in sim.notify_log] == [1, 2, 3]
    assert {e["status_code"] for e in sim.notify_log} == {500}
    failed = sim.fmgr_status("n-2")
    assert failed is not None and (failed["code"], int(failed["items"][0]["code"])) == (5, 5)


def test_a_retry_that_succeeds_marks_the_task_notified(sim: Simulator, clock: FakeClock,
                                                       receiver: Receiver) -> None:
    receiver.codes.extend([503])
    sim.add_fmgr_task("n-3", ["delete"], pending=0, processing=1, fail_items=[0], notify_url=receiver.url,
                      notify_key=("AK1", "SK1"), notify_delay=0)
    clock.advance(1)
    sim.deliver_due_notifications()
    clock.advance(0.5)
    assert sim.deliver_due_notifications() == 1
    clock.advance(sim.notify_record_delay)
    status = sim.fmgr_status("n-3")
    assert status is not None and (status["code"], int(status["items"][0]["code"])) == (6, 20)
    assert receiver.posts[0]["body"] == receiver.posts[1]["body"]


def test_fmgr_changes_date_every_code_the_status_query_shows(sim: Simulator, clock: FakeClock,
                                                             receiver: Receiver) -> None:
    receiver.codes.extend([503])
    sim.add_fmgr_task("n-5", ["fetch"], pending=2, processing=5, notify_url=receiver.url,
                      notify_key=("AK1", "SK1"), notify_delay=3)
    sim.add_fmgr_task("plain", ["copy"], pending=0, processing=5)
    clock.advance(10)
    sim.deliver_due_notifications()  # 503: the task stays at 4
    assert sim.fmgr_changes("n-5") == [(NOW, 0), (NOW + 2, 1), (NOW + 7, 3), (NOW + 10, 4)]
    clock.advance(0.5)
    sim.deliver_due_notifications()  # delivered; recorded as 6 notify_record_delay later
    assert sim.fmgr_changes("n-5")[-1] == (NOW + 10, 4)
    clock.advance(60)
    changes = sim.fmgr_changes("n-5")
    assert changes[-1] == (NOW + 10.5 + sim.notify_record_delay, 6)
    for ts, code in changes:  # each change is what the status query answers from then on
        assert sim.fmgr_status("n-5", at=ts)["code"] == code
        before = sim.fmgr_status("n-5", at=ts - 0.01)
        assert before is None or before["code"] != code  # None: not created yet
    assert sim.fmgr_changes("n-5", until=NOW + 7) == changes[:3]
    assert sim.fmgr_changes("plain") == [(NOW, 1), (NOW + 5, 3)]  # never at 0: no pending time
    assert sim.fmgr_changes("nope") == []


def test_duplicates_and_forgeries_when_asked(sim: Simulator, clock: FakeClock, receiver: Receiver) -> None:
    sim.configure_notifier(duplicate_ratio=1.0, forged_ratio=1.0)
    sim.add_fmgr_task("n-4", ["fetch"], pending=0, processing=1, notify_url=receiver.url,
                      notify_key=("AK1", "SK1"), notify_delay=0)
    clock.advance(1)
    assert sim.deliver_due_notifications() == 3

    def verifies(post: dict[str, Any]) -> bool:
        signature = post["headers"]["Authorization"].partition(":")[2]
        return signing.constant_time_equals(signature, signing.fmgr_notify_signature("SK1", receiver.url,
                                                                                       post["body"]))

    forged, real, duplicate = receiver.posts
    assert [verifies(p) for p in (forged, real, duplicate)] == [False, True, True]
    assert forged["body"] == real["body"] == duplicate["body"]
    assert duplicate["headers"]["Authorization"] == real["headers"]["Authorization"]
    assert [(e["forged"], e["duplicate"]) for e in sim.notify_log] == [(True, False), (False, False),
                                                                      (False, True)]


def test_unsigned_notification_without_a_key(sim: Simulator, clock: FakeClock, receiver: Receiver) -> None:
    sim.add_fmgr_task("n-5", ["fetch"], pending=0, processing=1, notify_url=receiver.url, notify_delay=0)
    clock.advance(1)
    assert sim.deliver_due_notifications() == 1
    assert "Authorization" not in receiver.posts[0]["headers"]


def test_stream_notifications_reach_every_finished_task(sim: Simulator, clock: FakeClock,
                                                        receiver: Receiver) -> None:
    sim.add_fmgr_stream(per_minute=12, start_ts=NOW, notify_url=receiver.url, notify_key=("AK1", "SK1"))
    clock.advance(120)
    sent = sim.deliver_due_notifications()
    clock.advance(sim.notify_record_delay)
    finished = [pid for pid in sim.fmgr_ids() if _code(sim, pid) == 6]
    assert sent == len(finished) > 5
    clock.advance(300)  # longer than any task runs
    sim.deliver_due_notifications()
    clock.advance(sim.notify_record_delay)
    notified = {pid for pid in sim.fmgr_ids() if _code(sim, pid) == 6}
    assert {_decode(p["body"])["id"] for p in receiver.posts} == notified
    assert set(sim.fmgr_ids(at=NOW + 120)) <= notified
    assert len(receiver.posts) == len(notified)  # each exactly once


def test_background_notifier_delivers(sim: Simulator, clock: FakeClock, receiver: Receiver) -> None:
    sim.add_fmgr_task("n-6", ["fetch"], pending=0, processing=1, notify_url=receiver.url,
                      notify_key=("AK1", "SK1"), notify_delay=0)
    clock.advance(1)
    sim.start_notifier(interval=0.05, duplicate_ratio=0, forged_ratio=0)
    assert receiver.received.wait(5)
    deadline = time.monotonic() + 5
    while not sim.notify_log and time.monotonic() < deadline:  # the vendor's side of the delivery is done
        time.sleep(0.02)
    clock.advance(sim.notify_record_delay)
    assert _code(sim, "n-6") == 6
    assert len(receiver.posts) == 1


def test_a_task_without_notify_url_stays_at_3(sim: Simulator, clock: FakeClock) -> None:
    sim.add_fmgr_task("plain", ["fetch", "copy"], pending=1, processing=2, fail_items=[1])
    for dt in (3, 10, 86400):
        status = sim.fmgr_status("plain", at=NOW + dt)
        assert status is not None and (status["code"], [int(i["code"]) for i in status["items"]]) == (3, [3, 2])


def test_an_unreachable_notify_url_ends_in_notification_failure(sim: Simulator, clock: FakeClock,
                                                                 receiver: Receiver) -> None:
    sim.configure_notifier(duplicate_ratio=0, forged_ratio=1.0, max_attempts=3)
    sim.add_fmgr_task("lost", ["fetch", "copy"], pending=0, processing=1, fail_items=[1],
                      notify_url=receiver.url, notify_key=("AK1", "SK1"), notify_delay=2, notify_fails=True)
    codes = []
    for _ in range(20):
        clock.advance(0.5)
        sim.deliver_due_notifications()
        status = sim.fmgr_status("lost")
        assert status is not None
        codes.append((status["code"], tuple(int(i["code"]) for i in status["items"])))
    # 3 while processing is completed, 4 while the vendor tries, then 5 with the items at 5 and 19.
    assert [c for i, c in enumerate(codes) if i == 0 or codes[i - 1] != c] == [
        (1, (1, 1)), (3, (3, 2)), (4, (4, 18)), (5, (5, 19))]
    assert receiver.posts == []  # nothing arrived, not even a forged copy
    assert [(e["attempt"], e["status_code"], e["lost"]) for e in sim.notify_log] == [
        (1, None, True), (2, None, True), (3, None, True)]


def test_a_stream_fails_the_share_of_notifications_it_is_asked_to(sim: Simulator, clock: FakeClock,
                                                                  receiver: Receiver) -> None:
    sim.add_fmgr_stream(per_minute=30, start_ts=NOW, notify_url=receiver.url, notify_key=("AK1", "SK1"),
                        notify_failure_ratio=0.3)
    for _ in range(60 * 5):
        clock.advance(1)
        sim.deliver_due_notifications()
    for _ in range(60):  # every task done, every attempt made
        clock.advance(10)
        sim.deliver_due_notifications()
    ids = sim.fmgr_ids(at=NOW + 300)
    codes = collections.Counter(_code(sim, pid) for pid in ids)
    assert set(codes) == {5, 6} and len(ids) > 100
    assert 0.15 < codes[5] / len(ids) < 0.45
    posted = {_decode(p["body"])["id"] for p in receiver.posts}
    assert posted & set(ids) == {pid for pid in ids if _code(sim, pid) == 6}
