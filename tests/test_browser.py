"""The task browser (``/tasks``, ``/tasks?stuck``, ``/fmgr``, ``/api/v1/cdn/tasks``, ``/api/v1/fmgr/tasks``) against
the simulator's truth.

The exporter is the real one (``exporter.app.Exporter``, its HTTP server on 127.0.0.1) under the fake clock the
simulator shares. Its store is filled the way a poll fills it: the real CDN client reads every page of the last
day from the simulator over HTTP and the real upsert stores it, so at that instant the store holds exactly what
the vendor says; Fmgr tasks arrive by the exporter's own poller. The expected rows come from the simulator
(``cdn_tasks_at``, ``fmgr_status``), never from the code under test.
"""

from __future__ import annotations

import math
import re
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import bcrypt
import pytest
import requests
import yaml
from conftest import ROOT, T0, Clock, load_rules_generator, make_config
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config import Config
from exporter.fmgr.wire import FmgrItem, FmgrStatus
from exporter.http import browse
from exporter.http.webconfig import WebConfig
from exporter.simulator import Simulator
from exporter.storage.repository import open_repository
from exporter.storage.store import Store
from exporter.vendor.cdn import CdnClient

HOUR, DAY = 3600.0, 86400.0
KINDS = ("prefetch", "purge")
ACCOUNTS = ("acme", "globex")
VENDOR_TZ = timezone(timedelta(hours=8))  # the simulator's and the accounts' default time zone
XSS_URL = 'https://evil.example/<script>alert(1)</script>?q="><img src=x onerror=alert(2)>&x=\'y\''
STUCK_URL = "https://stuck.example/never-finishes.bin"
TOKEN = "browser-token"
TIMEOUT = 10


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_into(store: Store, config: Config, clock: Clock) -> None:
    """Every task of the last day and a minute, every account and kind, as the vendor says it now, read by the
    real client and stored by the real upsert."""
    end = math.floor(clock())
    start = end - int(DAY) - 60
    for account in config.accounts:
        for kind in KINDS:
            client = CdnClient(account, clock=clock, timeout=5)
            lo = start
            while lo <= end:
                hi = min(end, lo + int(DAY) - 1)  # the API takes at most a day per query
                page_no = 1
                while True:
                    page = client.query(kind, lo, hi, page_no=page_no, page_size=500)
                    store.upsert_cdn_tasks(account.name, kind, page.tasks)
                    if page_no * 500 >= page.count:
                        break
                    page_no += 1
                lo = hi + 1


class Rig:
    """A simulator with two accounts, prefetch and purge streams, a stuck task and a task whose URL is an
    attack, and a started exporter over it."""

    def __init__(self, sim: Simulator, clock: Clock, tmp_path: Any, *, web_config: WebConfig | None = None,
                 fmgr: bool = False) -> None:
        self.sim, self.clock = sim, clock
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        overrides: dict[str, Any] = {"purge": {"enabled": True, "windows": ["15m", "1h", "24h"],
                                               "rate_limit": {"requests": 1000, "per": "1s"}}}
        if fmgr:
            overrides["fmgr"] = {"enabled": True, "endpoint": sim.url, "poll_interval": "30s",
                                 "rate_limit": {"requests": 100, "per": "1s"}, "register_token": TOKEN,
                                 "request_timeout": "2s"}
        self.config = make_config(sim.url, str(tmp_path / "exporter.db"), **overrides)
        self.exporter = Exporter(self.config, listen_address=f"127.0.0.1:{port}", clock=clock, web_config=web_config,
                                 external_url=self.url + "/")
        self.exporter.server.start()
        self.read_at: float | None = None

    def read_vendor(self) -> None:
        """Every task of the last day and a minute, every account and kind, as the vendor says it now."""
        read_into(self.exporter.store, self.config, self.clock)
        self.read_at = self.clock()

    def truth(self, account: str, kind: str, start: float, end: float) -> list[dict[str, Any]]:
        """The vendor's tasks created in [start, end] as it answered at the last read."""
        assert self.read_at is not None
        return [{**t, "account": account, "kind": kind}
                for t in self.sim.cdn_tasks_at(account, kind, start, min(end, self.read_at), at=self.read_at)]

    def get(self, path: str, params: Any = None, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, params=params, timeout=TIMEOUT, **kwargs)

    def api(self, params: Any = None, **kwargs: Any) -> dict[str, Any]:
        r = self.get("/api/v1/cdn/tasks", params, **kwargs)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def walk(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every row of a filter, page after page by the cursor each page gives."""
        rows: list[dict[str, Any]] = []
        cursor = None
        for _ in range(1000):
            page = self.api({**params, **({"cursor": cursor} if cursor else {})})
            rows += page["tasks"]
            cursor = page["next"]
            if cursor is None:
                return rows
        raise AssertionError("the cursor never ends")

    def stop(self) -> None:
        self.exporter.stop()


def make_rig(sim_factory, clock, tmp_path) -> Iterator[Rig]:
    """The rig with its tasks, read at T0 + 37.5 s (tests/test_browser_chromium.py uses it too)."""
    sim = sim_factory()
    for account, per_hour in (("acme", 240), ("globex", 120)):
        sim.add_cdn_stream(account, "prefetch", per_hour=per_hour, failure_ratio=0.15, start_ts=T0 - 26 * HOUR)
        sim.add_cdn_stream(account, "purge", per_hour=per_hour / 4, failure_ratio=0.15, start_ts=T0 - 26 * HOUR)
    sim.add_cdn_task("acme", "prefetch", XSS_URL, T0 - 1800, wait=10, run=20, final="failure", rate=3)
    sim.add_cdn_task("acme", "prefetch", STUCK_URL, T0 - 20 * HOUR, wait=30 * HOUR, run=60)
    rig = Rig(sim, clock, tmp_path)
    clock.t = T0 + 37.5  # off the minute: the windows' edges fall inside minutes
    rig.read_vendor()
    yield rig
    rig.stop()


@pytest.fixture
def rig(sim_factory, clock, tmp_path) -> Iterator[Rig]:
    yield from make_rig(sim_factory, clock, tmp_path)


def vendor_ts(text: str) -> float | None:
    return None if not text else datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=VENDOR_TZ).timestamp()


def api_ts(text: str | None) -> float | None:
    return None if not text else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def key_of(task: dict[str, Any]) -> tuple[Any, ...]:
    """(createTime, account, kind, url) of an API row or of a truth row."""
    create = task["create_ts"] if "create_ts" in task else api_ts(task["createTime"])
    return (create, task["account"], task["kind"], task["url"])


def window_start(now: float, seconds: float) -> float:
    return math.floor(now - seconds) + 1


class Rows(HTMLParser):
    """The cells of the rows of class "task" of a page's first such table, as text."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr" and ("class", "task") in attrs:
            self.rows.append([])
            self._depth = 1
        elif tag == "table" and self._depth:
            self._depth += 1
        elif tag == "td" and self._depth == 1:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._depth > 1:
            self._depth -= 1
        elif tag == "td" and self._cell is not None and self._depth == 1:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._depth == 1:
            self._depth = 0

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def page_rows(text: str) -> list[list[str]]:
    parser = Rows()
    parser.feed(text)
    return parser.rows


# --------------------------------------------------------------------------------------------------
# Rows against the truth


def test_the_failures_of_a_window_are_the_vendors_failures(rig: Rig) -> None:
    now = rig.clock()
    start = window_start(now, HOUR)
    want = sorted((t for t in rig.truth("acme", "prefetch", start, now) if t["status"] == "failure"),
                  key=key_of, reverse=True)
    assert len(want) >= 5 and any(t["url"] == XSS_URL for t in want)
    got = rig.api({"account": "acme", "kind": "prefetch", "status": "failure", "window": "1h"})
    assert [key_of(t) for t in got["tasks"]] == [key_of(t) for t in want]
    for row, truth in zip(got["tasks"], want, strict=True):
        assert row["status"] == "failure"
        assert api_ts(row["finishTime"]) == vendor_ts(truth["finishTime"])
        assert api_ts(row["beginTime"]) == vendor_ts(truth["beginTime"])
        assert api_ts(row["createTimeLocal"]) == truth["create_ts"] and row["createTimeLocal"].endswith("+08:00")
        assert row["rate"] == float(truth["rate"])
        assert row["durationSeconds"] == vendor_ts(truth["finishTime"]) - truth["create_ts"]  # type: ignore[operator]
        assert row["lastRead"] == browse.rfc3339(rig.read_at)
    assert got["next"] is None and got["scanLimited"] is False
    # The page shows the same rows, in the same order, times in the account's zone and in UTC.
    r = rig.get("/tasks", {"account": "acme", "kind": "prefetch", "status": "failure", "window": "1h"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    rows = page_rows(r.text)
    assert [row[9] for row in rows] == [t["url"] for t in want]
    for row, truth in zip(rows, want, strict=True):
        assert row[2] == truth["createTime"] + " +08:00"
        utc = datetime.fromtimestamp(truth["create_ts"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        assert (row[3], row[4]) == (utc, "failure")


def test_paging_walks_every_task_of_both_accounts_once_newest_first(rig: Rig) -> None:
    now = rig.clock()
    start = window_start(now, DAY)
    want = sorted((t for a in ACCOUNTS for k in KINDS for t in rig.truth(a, k, start, now)), key=key_of, reverse=True)
    assert len(want) > 5000
    got = rig.walk({"window": "24h", "limit": 997})
    assert [key_of(t) for t in got] == [key_of(t) for t in want]
    # A status across accounts and kinds, in small pages.
    failures = [key_of(t) for t in want if t["status"] == "failure"]
    assert [key_of(t) for t in rig.walk({"window": "24h", "status": "failure", "limit": 13})] == failures


def test_a_time_range_in_any_zone_and_a_url_substring(rig: Rig) -> None:
    now = rig.clock()
    start, end = T0 - 5 * HOUR, T0 - 3 * HOUR  # both inclusive
    local = datetime.fromtimestamp(start, VENDOR_TZ).isoformat()
    want = [key_of(t) for t in sorted(rig.truth("globex", "purge", start, end), key=key_of, reverse=True)]
    got = rig.walk({"account": "globex", "kind": "purge", "from": local, "to": str(int(end)), "limit": 7})
    assert [key_of(t) for t in got] == want and want
    part = "img.example"
    want = [key_of(t) for t in sorted((t for a in ACCOUNTS for t in rig.truth(a, "prefetch", start, now)
                                       if part in t["url"]), key=key_of, reverse=True)]
    got = rig.walk({"kind": "prefetch", "url": part, "from": str(int(start)), "limit": 50})
    assert [key_of(t) for t in got] == want and want


def test_a_url_filter_reads_a_bounded_number_of_rows_and_says_where_it_stopped(rig: Rig) -> None:
    now = rig.clock()
    part = "7d.jpg"  # about one url in 256 (their names end in a hash)
    start = window_start(now, DAY)
    want = [key_of(t) for t in sorted((t for a in ACCOUNTS for k in KINDS for t in rig.truth(a, k, start, now)
                                       if part in t["url"]), key=key_of, reverse=True)]
    f = browse.parse_cdn({"url": [part], "window": ["24h"], "limit": ["40"]}, rig.config, now)
    got: list[tuple[Any, ...]] = []
    stops = 0
    for _ in range(500):
        page = browse.query_cdn(rig.exporter.store, f, scan_rows=400)  # 100 rows of each (account, kind)
        assert len(page.rows) <= 40
        got += [(r.create_ts, r.account, r.kind, r.url) for r in page.rows]
        stops += page.scanned_to is not None
        if page.next is None:
            break
        f = browse.with_cursor(f, page.next)
    assert got == want
    assert stops > 10, "the scan limit must have cut pages short"
    # The page says so.
    text = rig.get("/tasks", {"url": part, "window": "24h"}).text
    assert "reads at most" not in text  # 50,000 rows: the whole day fits


@pytest.mark.parametrize("params", [{"window": ["24h"], "limit": ["50"]}, {"stuck": [""], "limit": ["20"]},
                                    {"status": ["failure"], "window": ["24h"], "limit": ["30"]}])
def test_many_pairs_share_a_row_budget_and_pages_stay_exact(rig: Rig, params: dict[str, list[str]]) -> None:
    """With a budget of 12 rows for the four (account, kind) pairs, each reads 3 rows a page: a pair that fills
    its share cuts the page there, and walking the cursor still gives every task once, in order."""
    now = rig.clock()
    stuck = "stuck" in params
    start = now - 3 * DAY if stuck else window_start(now, DAY)
    truth = [t for a in ACCOUNTS for k in KINDS for t in rig.truth(a, k, start, now)
             if (t["status"] in ("wait", "run") if stuck else params.get("status", [t["status"]])[0] == t["status"])]
    want = [key_of(t) for t in sorted(truth, key=key_of, reverse=not stuck)]
    f = browse.parse_cdn(params, rig.config, now)
    got: list[tuple[Any, ...]] = []
    pages = 0
    while True:
        page = browse.query_cdn(rig.exporter.store, f, row_budget=12)
        assert len(page.rows) <= f.limit and (page.rows or page.next is None)  # only the last page may be empty
        got += [(r.create_ts, r.account, r.kind, r.url) for r in page.rows]
        pages += 1
        if page.next is None:
            break
        f = browse.with_cursor(f, page.next)
    assert got == want
    assert pages > len(want) / f.limit + 1  # the budget cut pages short


def test_stuck_tasks_oldest_first_with_their_age(rig: Rig) -> None:
    now = rig.clock()
    want = sorted((t for a in ACCOUNTS for k in KINDS for t in rig.truth(a, k, now - 3 * DAY, now)
                   if t["status"] in ("wait", "run")), key=key_of)
    assert want[0]["url"] == STUCK_URL
    got = rig.walk({"stuck": "", "limit": 9})
    assert [key_of(t) for t in got] == [key_of(t) for t in want]
    assert got[0]["ageSeconds"] == pytest.approx(now - (T0 - 20 * HOUR))
    rows = page_rows(rig.get("/tasks?stuck").text)
    assert rows[0][9] == STUCK_URL and rows[0][7] == "20h 37s"  # the age column
    assert len(rows) == min(len(want), browse.DEFAULT_LIMIT)


def scrape(rig: Rig) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = rig.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.parametrize("window", ["15m", "1h", "24h"])
def test_the_summary_line_is_what_metrics_serves_at_that_instant(rig: Rig, window: str) -> None:
    for step in range(3):
        metrics = scrape(rig)
        got = rig.api({"window": window, "status": "failure"})
        assert len(got["summary"]) == len(ACCOUNTS) * len(KINDS)
        for s in got["summary"]:
            labels = (("account", s["account"]), ("window", window))
            for status, n in s["tasks"].items():
                assert n == metrics[(f"cdnetworks_{s['kind']}_tasks", tuple(sorted((*labels, ("status", status)))))]
            assert s["successRatio"] == metrics[(f"cdnetworks_{s['kind']}_success_ratio", labels)]
            assert s["rateRatio"] == metrics[(f"cdnetworks_{s['kind']}_rate_ratio", labels)]
            # And the vendor agrees (the store holds what it said at the read).
            start = window_start(rig.clock(), browse.DAY if window == "24h" else {"15m": 900, "1h": 3600}[window])
            truth = rig.truth(s["account"], s["kind"], start, rig.clock())
            assert s["tasks"]["failure"] == sum(t["status"] == "failure" for t in truth)
        # The HTML summary says the same.
        text = rig.get("/tasks", {"window": window}).text
        first = got["summary"][0]
        assert (f"<td>{first['account']}</td><td>{first['kind']}</td><td>{window}</td>"
                f"<td>{sum(first['tasks'].values())}</td><td>{first['tasks']['success']}</td>") in text
        rig.clock.advance(41 + step * 300)  # the windows slide; the store is not read again


# --------------------------------------------------------------------------------------------------
# Security and limits


def test_vendor_strings_are_escaped_and_the_pages_allow_no_script(rig: Rig) -> None:
    r = rig.get("/tasks", {"account": "acme", "kind": "prefetch", "status": "failure", "window": "1h",
                           "url": '"><script>alert(3)</script>'})
    assert r.status_code == 200
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "unsafe" not in csp and "script-src" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script" not in r.text.lower() and "<img" not in r.text.lower()
    assert "&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in r.text  # the form echoes the filter, escaped
    r = rig.get("/tasks", {"account": "acme", "kind": "prefetch", "status": "failure", "window": "1h"})
    assert "<script" not in r.text.lower() and "<img" not in r.text.lower()
    rows = page_rows(r.text)
    assert [row[9] for row in rows if row[9] == XSS_URL] == [XSS_URL]  # shown as text, whole
    api = rig.api({"account": "acme", "kind": "prefetch", "status": "failure", "window": "1h"})
    assert XSS_URL in [t["url"] for t in api["tasks"]]


BAD = [
    ("status=done", "status: 'done' is not valid; expected one of: success, failure, wait, run, unknown"),
    ("account=nobody", "account: 'nobody' is not valid; expected one of: acme, globex"),
    ("kind=mirror", "kind: 'mirror' is not valid; expected one of: prefetch, purge"),
    ("window=2h", "window: '2h' is not a configured window; expected one of: 15m, 1h, 24h"),
    ("from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z", "from: the range is at most 31 days"),
    ("from=yesterday", "from: expected unix seconds or an RFC 3339 time with a zone"),
    ("from=2026-01-01T00:00:00", "from: expected unix seconds or an RFC 3339 time with a zone"),
    ("window=1h&from=1", "window: give either window or from/to, not both"),
    ("limit=0", "limit: expected an integer from 1 to 1000"),
    ("limit=1001", "limit: expected an integer from 1 to 1000"),
    ("cursor=bm9wZQ", "cursor: not a cursor this exporter gave out"),
    ("stuck&window=1h", "stuck: lists every unfinished task"),
    ("stuck&status=failure", "status: stuck tasks are unfinished; expected one of: wait, run, unknown"),
    ("status=failure&status=success", "status: given 2 times; give it once"),
    ("sort=url", "'sort' is not a parameter here; expected: account, kind, status, window, from, to, url, limit"),
    (f"url={'x' * 300}", "url: at most 256 characters"),
]


@pytest.mark.parametrize(("query", "message"), BAD)
def test_bad_parameters_answer_400_with_the_valid_values(rig: Rig, query: str, message: str) -> None:
    r = requests.get(f"{rig.url}/api/v1/cdn/tasks?{query}", timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"].startswith(message), r.text
    r = requests.get(f"{rig.url}/tasks?{query}", timeout=TIMEOUT)
    assert r.status_code == 400 and "Content-Security-Policy" in r.headers
    assert re.sub(r"&#x27;", "'", message) in r.text.replace("&#x27;", "'")


def test_every_alert_link_opens_its_filtered_page(rig: Rig) -> None:
    rules = load_rules_generator()
    settings = rules.Settings(exporter_url=rig.url)
    files = (rules.render_alerts(settings), rules.render_slo(settings, rules.slo_model.defaults()))
    alerts = [r for text in files for group in yaml.safe_load(text)["groups"] for r in group["rules"]
              if "alert" in r]
    linked = [r for r in alerts if "tasks_url" in r["annotations"]]
    assert {r["alert"] for r in linked} >= {"CDNetworksPrefetchSuccessRatioLow", "CDNetworksPurgeTasksStuck",
                                            "CDNetworksFmgrSuccessRatioLow", "CDNetworksPrefetchErrorBudgetFastBurn",
                                            "CDNetworksPurgeErrorBudgetSlowBurn", "CDNetworksFmgrErrorBudgetFastBurn"}
    for rule in linked:
        # As Prometheus renders it for the alert of account acme (the Go template's urlquery on a plain name).
        url = rule["annotations"]["tasks_url"].replace("{{ $labels.account | urlquery }}", "acme")
        assert "{{" not in url and url.startswith(rig.url + "/"), url
        r = requests.get(url, timeout=TIMEOUT)
        if "/fmgr" in url:  # Fmgr is not configured here: the page says so by showing no task
            assert r.status_code == 200 and "No tracked Fmgr tasks match" in r.text, (rule["alert"], r.text)
            continue
        assert r.status_code == 200, (rule["alert"], r.text)
        rows = page_rows(r.text)
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        assert rows and all(row[0] == "acme" and row[1] == query["kind"][0] for row in rows), rule["alert"]
        if "status" in query:
            assert {row[4] for row in rows} == {"failure"}
        else:
            assert {row[4] for row in rows} <= {"wait", "run", "unknown"}


def dashboard_links() -> list[tuple[str, str]]:
    import json

    out = []
    for name in ("overview.json", "cdn-tasks.json", "fmgr.json", "exporter-health.json"):
        dash = json.loads((ROOT / "dashboards" / name).read_text())
        for panel in dash["panels"]:
            config = panel.get("fieldConfig", {})
            links = list(config.get("defaults", {}).get("links", []))
            for override in config.get("overrides", []):
                links += [x for p in override["properties"] if p["id"] == "links" for x in p["value"]]
            out += [(f"{name} / {panel['title']}", link["url"]) for link in links]
    return out


# What Grafana puts in a link for a series of account acme, window 1h, etc.
GRAFANA_VALUES = {"${__field.labels.account}": "acme", "${__field.labels.window}": "1h", "${window}": "1h",
                  "${__field.labels.status}": "failure", "${__field.labels.state}": "completed",
                  "${__field.labels.op}": "fetch", "${account:csv}": "acme,globex"}


def test_every_dashboard_data_link_opens_a_page(rig: Rig) -> None:
    links = dashboard_links()
    assert len(links) >= 10
    for where, template in links:
        url = template.replace("${exporter_url}", rig.url)
        for variable, value in GRAFANA_VALUES.items():
            url = url.replace(variable, value)
        assert "$" not in url, (where, url)
        r = requests.get(url, timeout=TIMEOUT)
        assert r.status_code == 200, (where, url, r.text[:300])
        assert "<h1>" in r.text


def test_the_landing_page_links_to_the_browser_under_the_external_url(rig: Rig) -> None:
    text = rig.get("/").text
    for link in ("/tasks", "/tasks?status=failure", "/tasks?stuck=", "/fmgr"):
        assert f'href="{rig.url}{link}"' in text
    page = rig.get("/tasks", {"window": "24h", "limit": 5}).text
    nxt = re.search(r'<a rel="next" href="([^"]+)"', page)
    assert nxt is not None and nxt.group(1).startswith(rig.url + "/tasks?")
    assert requests.get(nxt.group(1).replace("&amp;", "&"), timeout=TIMEOUT).status_code == 200


def test_pages_and_the_cdn_api_sit_behind_basic_auth_like_metrics(sim_factory, clock, tmp_path) -> None:
    sim = sim_factory()
    users = {"prom": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()}
    rig = Rig(sim, clock, tmp_path, web_config=WebConfig(basic_auth_users=users), fmgr=True)
    try:
        for path in ("/tasks", "/tasks?stuck", "/fmgr", "/api/v1/cdn/tasks", "/metrics"):
            assert requests.get(rig.url + path, timeout=TIMEOUT).status_code == 401, path
            assert requests.get(rig.url + path, auth=("prom", "s3cret"), timeout=TIMEOUT).status_code == 200, path
        assert requests.get(rig.url + "/tasks", auth=("prom", "wrong"), timeout=TIMEOUT).status_code == 401
        # The Fmgr listing keeps its bearer token.
        url = rig.url + "/api/v1/fmgr/tasks"
        assert requests.get(url, timeout=TIMEOUT).status_code == 401
        r = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=TIMEOUT)
        assert r.status_code == 200 and r.json()["tasks"] == []
    finally:
        rig.stop()


def test_scrapes_stay_fast_while_pages_are_requested_in_a_loop(rig: Rig) -> None:
    """Pages run on the server's slow lane (2 workers, 8 at once, 503 past that); scrapes on their own."""
    session = requests.Session()

    def scrape_seconds(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            assert session.get(rig.url + "/metrics", timeout=TIMEOUT).status_code == 200
            out.append(time.perf_counter() - t)
        return out

    alone = scrape_seconds(15)
    stop = threading.Event()
    statuses: list[int] = []

    def hammer() -> None:
        with requests.Session() as s:
            deadline = time.monotonic() + 30  # bounded, whatever happens
            while not stop.is_set() and time.monotonic() < deadline:
                # The heaviest page: a url filter over the whole day, a thousand rows.
                r = s.get(rig.url + "/tasks", params={"window": "24h", "url": "example", "limit": 1000}, timeout=30)
                statuses.append(r.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(12)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        loaded = scrape_seconds(15)
    finally:
        stop.set()
        for t in threads:
            t.join(40)
    assert statuses and set(statuses) <= {200, 503}
    assert 503 in statuses, "twelve page loops must overflow the slow lane of eight"
    # A scrape does not queue behind the renders: its median stays within a few times its time alone.
    assert statistics.median(loaded) < max(0.25, 5 * statistics.median(alone)), (alone, loaded)


# --------------------------------------------------------------------------------------------------
# Fmgr


def number(value: Any) -> int | None:
    """A code or size as the vendor sends it (a number or a numeric string; "" or null for none)."""
    return None if value in (None, "") else int(value)


def run_fmgr_poller(exporter: Exporter, clock: Clock, until: float) -> None:
    poller = exporter.pollers.fmgr
    for _ in range(5000):
        due = poller.next_run()
        if due > until:
            break
        clock.t = max(clock.t, due)
        poller.step()
    clock.t = max(clock.t, until)


def test_fmgr_tasks_with_their_items_errors_keys_and_notification_outcome(sim_factory, clock, tmp_path) -> None:
    sim = sim_factory()
    rig = Rig(sim, clock, tmp_path, fmgr=True)
    try:
        ids = [f"job-{i}" for i in range(12)]
        for i, pid in enumerate(ids):
            sim.add_fmgr_task(pid, ["fetch", "copy", "delete"][: 1 + i % 3], created_ts=clock() + i,
                              fail_items=[0] if i % 4 == 1 else [])
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for pid in ids:  # first seen a second apart: the listing's order is the registration order, reversed
            r = requests.post(rig.url + "/api/v1/fmgr/tasks", json={"persistentIds": [pid]}, headers=bearer,
                              timeout=TIMEOUT)
            assert r.status_code == 200
            clock.advance(1)
        run_fmgr_poller(rig.exporter, clock, clock() + 600)
        listed = requests.get(rig.url + "/api/v1/fmgr/tasks", params={"limit": 5}, headers=bearer, timeout=TIMEOUT)
        assert listed.status_code == 200
        tasks: list[dict[str, Any]] = []
        body = listed.json()
        while True:
            tasks += body["tasks"]
            if body["next"] is None:
                break
            body = requests.get(rig.url + "/api/v1/fmgr/tasks", params={"limit": 5, "cursor": body["next"]},
                                headers=bearer, timeout=TIMEOUT).json()
        assert [t["persistentId"] for t in tasks] == list(reversed(ids))  # newest first, each once
        for task in tasks:
            truth = sim.fmgr_status(task["persistentId"])
            assert truth is not None
            assert task["code"] == number(truth["code"])
            assert [(i["code"], i["error"], i["key"], i["fsize"]) for i in task["items"]] == [
                (number(i["code"]), i["error"] or None, i["key"] or None, number(i["fsize"])) for i in truth["items"]]
            if number(truth["code"]) == 3:  # no notifyURL: polled as final after the grace period
                assert task["notifications"]["outcome"] == "none (no notifyURL)"
        failed = [t for t in tasks if any(i["state"].startswith("failed") for i in t["items"])]
        assert len(failed) == 3 and all(t["items"][0]["error"] for t in failed)
        # Filters: an op, a code, a state.
        got = requests.get(rig.url + "/api/v1/fmgr/tasks", params={"op": "delete"}, headers=bearer,
                           timeout=TIMEOUT).json()["tasks"]
        assert [t["persistentId"] for t in got] == [p for p in reversed(ids) if int(p.split("-")[1]) % 3 == 2]
        codes = {t["persistentId"]: t["code"] for t in tasks}
        assert 3 in codes.values(), "tasks without a notifyURL end at code 3"
        for code in set(codes.values()):
            got = requests.get(rig.url + "/api/v1/fmgr/tasks", params={"code": code}, headers=bearer,
                               timeout=TIMEOUT).json()["tasks"]
            assert {t["persistentId"] for t in got} == {p for p, c in codes.items() if c == code}
        # The page: one row per task, its items' errors and keys shown.
        text = rig.get("/fmgr", {"op": "fetch"}).text
        rows = page_rows(text)
        assert [row[0] for row in rows] == [p for p in reversed(ids)]
        truth = sim.fmgr_status(failed[0]["persistentId"])
        assert truth is not None
        assert truth["items"][0]["error"] in text and truth["items"][0]["key"] in text
        r = rig.get("/fmgr", {"state": "bogus"})
        assert r.status_code == 400 and "expected one of: unknown, pending, processing, completed" in r.text
    finally:
        rig.stop()


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def test_postgresql_pages_are_sqlites_pages(sim_factory, clock, tmp_path, postgres_url) -> None:
    """The same vendor read into an SQLite and a PostgreSQL store: every page, cursor and scan stop the same."""
    sim = sim_factory()
    for account in ACCOUNTS:
        sim.add_cdn_stream(account, "prefetch", per_hour=200, failure_ratio=0.15, start_ts=T0 - 26 * HOUR)
        sim.add_cdn_stream(account, "purge", per_hour=50, failure_ratio=0.15, start_ts=T0 - 26 * HOUR,
                           slow_ratio=0.05)
    sim.add_cdn_task("acme", "prefetch", XSS_URL, T0 - 1800, wait=10, run=20, final="failure", rate=3)
    config = make_config(sim.url, str(tmp_path / "s.db"), purge={"enabled": True})
    stores = [Store(tmp_path / "s.db", clock=clock), Store("", clock=clock, repository=open_repository(postgres_url))]
    try:
        clock.t = T0 + 37.5
        for store in stores:
            read_into(store, config, clock)
        filters: list[dict[str, list[str]]] = [
            {"window": ["24h"], "limit": ["211"]}, {"status": ["failure"], "window": ["1h"], "limit": ["7"]},
            {"stuck": [""], "limit": ["5"]}, {"url": ["7d.jpg"], "window": ["24h"], "limit": ["3"]},
            {"account": ["globex"], "kind": ["purge"], "status": ["run"], "limit": ["2"]},
        ]
        for params in filters:
            walks = []
            for store in stores:
                f = browse.parse_cdn(params, config, clock())
                pages = []
                for _ in range(200):
                    page = browse.query_cdn(store, f, scan_rows=800)
                    pages.append(([(r.create_ts, r.account, r.kind, r.url, r.status, r.rate, r.finish_ts)
                                   for r in page.rows], page.next, page.scanned_to))
                    if page.next is None:
                        break
                    f = browse.with_cursor(f, page.next)
                walks.append(pages)
            assert walks[0] == walks[1], params
            assert sum(len(rows) for rows, _, _ in walks[0]) > 0, params
        # Fmgr: the same statuses applied to both, the same pages for each filter.
        base = clock()
        for store in stores:
            for i in range(30):
                clock.t = base + i + 1
                items = tuple(FmgrItem(op, 2 if (i + n) % 5 == 0 else 3, 100 * n, "bad" if (i + n) % 5 == 0 else None,
                                       f"obj/{i}/{n}") for n, op in enumerate(["fetch", "copy", "delete"][: 1 + i % 3]))
                store.apply_fmgr_status(FmgrStatus(f"job-{i:02d}", [1, 3, 6][i % 3], 0, items), source="poll",
                                        polled=True)
        for params in ({}, {"op": ["delete"], "limit": ["2"]}, {"code": ["6"]}, {"state": ["completed"]},
                       {"pending": ["true"], "limit": ["4"]}):
            walks = []
            for store in stores:
                f = browse.parse_fmgr({**params, "from": [str(int(base - DAY))]}, config, clock())
                walk = []
                for _ in range(100):
                    page = browse.query_fmgr(store, f, scan_rows=10)
                    walk.append(([browse.fmgr_task_json(t) for t in page.tasks], page.next, page.scanned_to))
                    if page.next is None:
                        break
                    f = replace(f, cursor=page.next)
                walks.append(walk)
            assert walks[0] == walks[1], params
            assert any(tasks for tasks, _, _ in walks[0]), params
    finally:
        for store in stores:
            store.close()
