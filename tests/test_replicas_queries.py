"""One exporter and two replicas sharing its store, side by side in a real Prometheus: every dashboard panel query
and every alert expression must say the same about both.

Three static HTTP servers serve what exporters would. "single" (instance exporter:9891, scrape job "single") is
one exporter. "a" and "b" (a:9891 and b:9891, job "pair") are two replicas of the same deployment: the same task
series (read from the shared store); the pollers split between them, each replica showing a stale value, or
nothing, for the pollers the other one runs; the vendor requests split between them (single's counts are a's
plus b's). Prometheus loads the rules generated for both jobs (``--job-selector 'job=~"single|pair"'``): every
rule keeps the job, so each job's recorded series are its own, evaluated at the same instants.

Every panel query is run with ``$job`` = single and = pair at the same evaluation time, and must return the same
series with the same values, except the per-replica panels (dashboards/generate.py PER_REPLICA_PANELS), which
must show one series per replica. Every alert expression must return the same per job (an alert about a poller
names the replica running it).

The servers give every sample an explicit timestamp on a grid of STEP seconds (honoured by Prometheus), so that
the three targets' samples share their timestamps whenever each was scraped within the step: rates and
increases see the same points in both jobs, and a query at a grid point + STEP - 1 reads complete data.

Bounded: at most WAIT_LIMIT seconds of waiting in all; Prometheus and the servers are stopped at the end.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from conftest import load_rules_generator, require_tool
from test_dashboards import DASHBOARDS_GEN
from test_prometheus_integration import free_port, panel_queries, rule_queries, start, stop, substitute

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[1]
RULES_GEN = load_rules_generator()
M = RULES_GEN.M
KINDS = tuple(kind.name for kind in RULES_GEN.KINDS)

STEP = 5  # seconds between the served timestamps; Prometheus scrapes every second
GRID_POINTS = 5  # grid points of data before the query time
WAIT_LIMIT = 90.0
SINGLE, REPLICAS = "exporter:9891", ("a:9891", "b:9891")
ACCOUNTS, WINDOWS = ("acme", "globex"), ("15m", "1h", "24h")
VARIABLES = {"account": "(acme|globex)", "window": "(15m|1h|24h)", "__rate_interval": f"{4 * STEP}s",
             "__interval": f"{STEP}s"}

Value = Callable[[int], float]  # grid point number (0, 1, ...) -> value


def const(value: float) -> Value:
    return lambda k: value


def counter(base: float, per_step: float) -> Value:
    return lambda k: base + per_step * k


# --------------------------------------------------------------------------------------------------
# What the exporters serve. A series is (metric name, labels, value at grid point k).

Series = tuple[str, dict[str, str], Value]


def histogram(name: str, labels: dict[str, str], buckets: tuple[float, ...], base: list[float],
              per_step: list[float]) -> list[Series]:
    """A histogram's samples: per-bucket (not cumulative) counts at k = 0 and their growth per grid point."""
    out: list[Series] = []
    cum_base = cum_step = 0.0
    for bound, b, s in zip((*buckets, math.inf), base, per_step, strict=True):
        cum_base, cum_step = cum_base + b, cum_step + s
        le = "+Inf" if bound == math.inf else repr(bound)
        out.append((f"{name}_bucket", {**labels, "le": le}, counter(cum_base, cum_step)))
    out.append((f"{name}_count", labels, counter(cum_base, cum_step)))
    out.append((f"{name}_sum", labels, counter(cum_base * 7.0, cum_step * 7.0)))
    return out


def spread(n: int, *weights: float) -> list[float]:
    """``n`` buckets with the given weights first and zeros after."""
    return [*weights, *([0.0] * (n + 1 - len(weights)))]


def shared_series() -> list[Series]:
    """The task series: read from the shared store, the same on every replica."""
    out: list[Series] = []
    statuses = {"acme": {"wait": 3, "run": 2, "success": 90, "failure": 10},
                "globex": {"wait": 1, "run": 0, "success": 5, "failure": 5}}
    for kind_no, kind in enumerate(KINDS):
        fam = M.CDN[kind]
        for account in ACCOUNTS:
            for scale, window in enumerate(WINDOWS, start=1):
                counts = {status: n * scale + kind_no for status, n in statuses[account].items()}
                for status, n in counts.items():
                    out.append((fam.tasks.name, {"account": account, "window": window, "status": status}, const(n)))
                ok, bad = counts["success"], counts["failure"]
                out.append((fam.success_ratio.name, {"account": account, "window": window}, const(ok / (ok + bad))))
                out.append((fam.rate_ratio.name, {"account": account, "window": window}, const(0.97 - 0.01 * scale)))
            out.append((fam.oldest_unfinished_age.name, {"account": account},
                        const(4000.0 if account == "acme" else 120.0)))
            out.append((fam.tasks_finished.name, {"account": account, "status": "success"}, counter(5000, 3)))
            out.append((fam.tasks_finished.name, {"account": account, "status": "failure"}, counter(700, 1)))
            n = len(fam.duration.buckets)
            out += histogram(fam.duration.name, {"account": account}, fam.duration.buckets,
                             spread(n, 100, 300, 50, 20), spread(n, 0, 2, 1, 1, 0, 1))
    for window in WINDOWS:
        for code, state, n in (("0", "pending", 2), ("1", "processing", 1), ("3", "succeeded", 20),
                               ("2", "failed", 6), ("5", "notify_failed", 1)):
            out.append((M.FMGR_TASKS.name, {"window": window, "code": code, "state": state}, const(n)))
        for op, code, state, n in (("fetch", "3", "succeeded", 30), ("fetch", "2", "failed", 8),
                                   ("copy", "6", "succeeded_notified", 10), ("copy", "0", "pending", 50),
                                   ("copy", "19", "failed_notify_failed", 2)):
            out.append((M.FMGR_ITEMS.name, {"window": window, "op": op, "code": code, "state": state}, const(n)))
        out.append((M.FMGR_SUCCESS_RATIO.name, {"window": window}, const(0.8)))
    out.append((M.FMGR_PENDING_TASKS.name, {}, const(4)))
    out.append((M.FMGR_OLDEST_PENDING_AGE.name, {}, const(5000)))
    out.append((M.FMGR_PROCESSED_BYTES.name, {"op": "fetch"}, counter(1e9, 1048576)))
    out.append((M.FMGR_PROCESSED_BYTES.name, {"op": "copy"}, counter(2e8, 4096)))
    for op, succeeded, failed in (("fetch", 6, 2), ("copy", 3, 0)):
        out.append((M.FMGR_ITEMS_FINISHED.name, {"op": op, "outcome": "succeeded"}, counter(500, succeeded)))
        out.append((M.FMGR_ITEMS_FINISHED.name, {"op": op, "outcome": "failed"}, counter(50, failed)))
    for result, per_step in (("accepted", 5), ("duplicate", 1), ("bad_signature", 1), ("unknown_key", 0),
                             ("malformed", 2), ("too_large", 0)):
        out.append((M.FMGR_NOTIFICATIONS.name, {"result": result}, counter(1000, per_step)))
    # acme's prefetch URLs go fast enough to run out before midnight UTC+8; the rest stay well within.
    for account, kind, unit, limit, left, per_step in (
            ("acme", "prefetch", "urls", 20000, 3000, -500), ("acme", "prefetch", "bytes", 2e11, 1.5e11, -1e6),
            ("globex", "purge", "directories", 500, 480, 0), ("globex", "purge", "tags", 0, 0, 0)):
        labels = {"account": account, "kind": kind, "unit": unit}
        out.append((M.QUOTA_LIMIT.name, labels, const(limit)))
        out.append((M.QUOTA_REMAINING.name, labels, counter(left, per_step)))
    for account, kind in (("acme", "prefetch"), ("globex", "purge")):
        out.append((M.QUOTA_READ.name, {"account": account, "kind": kind}, const(1.7e9)))
    out.append((M.FMGR_NOTIFY_FAILURES.name, {"scope": "task"}, counter(40, 1)))
    out.append((M.FMGR_NOTIFY_FAILURES.name, {"scope": "item"}, counter(90, 2)))
    return out


# The replica's own counts of what it did: (api, result) -> (count at k = 0, growth per grid point). The single
# exporter made all of these requests: its counts are a's plus b's.
REQUESTS = {
    "a": {("prefetch", "ok"): (600, 3), ("prefetch", "rate_limited"): (90, 2), ("purge", "ok"): (300, 2),
          ("fmgr", "ok"): (50, 4), ("fmgr", "not_found"): (5, 1)},
    "b": {("prefetch", "ok"): (200, 1), ("purge", "ok"): (100, 0), ("purge", "server_error"): (200, 2),
          ("purge", "timeout"): (20, 1), ("fmgr", "ok"): (10, 2)},
}
LATENCY = {  # api -> replica -> per-bucket growth per grid point
    "prefetch": {"a": [0, 2, 1, 1], "b": [0, 0, 1, 0, 1]},
    "purge": {"a": [1, 1], "b": [0, 0, 0, 2, 1]},
    "fmgr": {"a": [3, 2, 1], "b": [2]},
}


def additive_series(replica: str) -> list[Series]:
    out: list[Series] = [(M.API_REQUESTS.name, {"api": api, "result": result}, counter(base, per_step))
                         for (api, result), (base, per_step) in REQUESTS[replica].items()]
    n = len(M.API_REQUEST_DURATION.buckets)
    for api, by_replica in LATENCY.items():
        growth = spread(n, *by_replica[replica])
        out += histogram(M.API_REQUEST_DURATION.name, {"api": api}, M.API_REQUEST_DURATION.buckets,
                         [g * 10 for g in growth], growth)
    out.append((M.WEB_AUTH_FAILURES.name, {"reason": "wrong"}, counter(3, 1 if replica == "a" else 0)))
    out.append((M.WEB_REJECTED_REQUESTS.name, {"reason": "timeout"}, counter(1, 0)))
    return out


POLLERS = (("acme", "prefetch"), ("acme", "purge"), ("globex", "prefetch"), ("globex", "purge"), ("", "fmgr"))
HOLDER = {("acme", "prefetch"): "a", ("globex", "prefetch"): "a", ("", "fmgr"): "a",
          ("acme", "purge"): "b", ("globex", "purge"): "b"}
# A poller's health as the replica running it reports it; the last-poll times are seconds before T_REF.
POLLER_TRUTH = {
    ("acme", "prefetch"): {"up": 1, "ago": 60, "lag": 120, "backfill": 0},
    ("acme", "purge"): {"up": 1, "ago": 200, "lag": 300, "backfill": 3600},
    ("globex", "prefetch"): {"up": 0, "ago": 3000, "lag": 2500, "backfill": 0},  # failing, lagging
    ("globex", "purge"): {"up": 1, "ago": 30, "lag": 60, "backfill": 0},
    ("", "fmgr"): {"up": 1, "ago": 100},  # Fmgr is polled on demand: no lag or back-fill
}
# What the replica not running a poller shows for it: stale values from when it ran it, or nothing (never did).
POLLER_STALE = {
    ("acme", "prefetch"): {"up": 0, "ago": 7200, "lag": 9999, "backfill": 9999},
    ("acme", "purge"): None,
    ("globex", "prefetch"): {"up": 1, "ago": 5000, "lag": 60, "backfill": 0},
    ("globex", "purge"): {"up": 0, "ago": 9000, "lag": 9000, "backfill": 7000},
    ("", "fmgr"): {"up": 0, "ago": 6000},
}


def poller_series(health: dict[str, float], account: str, api: str, t_ref: float) -> list[Series]:
    labels = {"account": account, "api": api}
    out: list[Series] = [(M.UP.name, labels, const(health["up"])),
                         (M.LAST_SUCCESSFUL_POLL.name, labels, const(t_ref - health["ago"]))]
    if "lag" in health:
        out.append((M.POLL_LAG.name, labels, const(health["lag"])))
        out.append((M.POLL_BACKFILL_REMAINING.name, labels, const(health["backfill"])))
        out.append((M.POLL_STALENESS.name, labels, const(health["lag"] / 2)))
    return out


def own_series(runs: set[tuple[str, str]]) -> list[Series]:
    """Each replica's own state, and the pollers it runs."""
    out: list[Series] = [(M.BUILD_INFO.name, {"version": "1.4.0", "python": "3.11.2"}, const(1)),
                         (M.CONFIG_LAST_RELOAD_SUCCESSFUL.name, {}, const(1)),
                         (M.CONFIG_LAST_RELOAD_SUCCESS_TIMESTAMP.name, {}, const(1.7e9))]
    for section in ("prefetch", "fmgr", "health", "leases"):
        out.append((M.SCRAPE_COLLECTOR_SUCCESS.name, {"collector": section}, const(1)))
    for account, api in POLLERS:
        out.append((M.REPLICA_LEASES.name, {"account": account, "api": api}, const(int((account, api) in runs))))
    return out


def served(role: str, t_ref: float) -> list[Series]:
    """Everything ``role`` (single, a or b) serves."""
    out = shared_series()
    if role == "single":
        summed: dict[tuple[str, tuple[tuple[str, str], ...]], list[Value]] = {}
        for name, labels, value in additive_series("a") + additive_series("b"):
            summed.setdefault((name, tuple(labels.items())), []).append(value)
        for (name, labels), values in summed.items():
            out.append((name, dict(labels), lambda k, values=values: sum(v(k) for v in values)))
        for account, api in POLLERS:
            out += poller_series(POLLER_TRUTH[(account, api)], account, api, t_ref)
        return out + own_series(set(POLLERS))
    out += additive_series(role)
    for poller in POLLERS:
        health = POLLER_TRUTH[poller] if HOLDER[poller] == role else POLLER_STALE[poller]
        if health is not None:
            out += poller_series(health, *poller, t_ref)
    return out + own_series({p for p in POLLERS if HOLDER[p] == role})


def test_the_two_replicas_add_up_to_the_single_exporter() -> None:
    """The fixture itself: a's and b's requests are the single exporter's, split; each poller has one holder."""
    assert set(REQUESTS["a"]) | set(REQUESTS["b"]) >= {(api, "ok") for api in ("prefetch", "purge", "fmgr")}
    assert set(HOLDER) == set(POLLERS) == set(POLLER_TRUTH) == set(POLLER_STALE)
    assert set(HOLDER.values()) == {"a", "b"}
    single = {(n, tuple(sorted(lab.items()))): f(3) for n, lab, f in served("single", 0.0)
              if n.startswith(M.API_REQUESTS.name)}
    pair = {}
    for role in ("a", "b"):
        for n, lab, f in served(role, 0.0):
            if n.startswith(M.API_REQUESTS.name):
                key = (n, tuple(sorted(lab.items())))
                pair[key] = pair.get(key, 0.0) + f(3)
    assert single == pair


def exposition(series: list[Series], k: int, timestamp_ms: int) -> str:
    def fmt(labels: dict[str, str]) -> str:
        return "{" + ",".join(f'{key}="{value}"' for key, value in labels.items()) + "}" if labels else ""

    return "".join(f"{name}{fmt(labels)} {value(k)!r} {timestamp_ms}\n" for name, labels, value in series)


@dataclass
class Grid:
    """When the served data starts (t0, a multiple of STEP); None until every target is being scraped."""

    t0: float | None = None

    def point(self, now: float) -> int | None:
        """The grid point number to serve at ``now``, or None before t0."""
        if self.t0 is None or now < self.t0:
            return None
        return int((now - self.t0) // STEP)


def serve(role: str, grid: Grid) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            k = grid.point(time.time())
            body = b""
            if k is not None and grid.t0 is not None:
                t = grid.t0 + k * STEP
                body = exposition(served(role, grid.t0), k, int(t * 1000)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name=f"exporter-{role}", daemon=True).start()
    return server


# --------------------------------------------------------------------------------------------------
# The running stack


@dataclass
class Stack:
    prometheus_url: str
    at: float  # the evaluation time of every query: the last grid point + STEP - 1
    deadline: float
    log: Path
    rules: Path  # the rule files generated for both jobs
    session: requests.Session = field(default_factory=requests.Session)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        resp = self.session.get(f"{self.prometheus_url}/api/v1/query",
                                params={"query": expr, "time": repr(self.at if at is None else at)}, timeout=10)
        body = resp.json()
        assert body.get("status") == "success", f"{expr!r}: {body.get('error', resp.text)}"
        return body["data"]["result"]

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])


def wait_until(what: str, check: Callable[[], Any], stack: Stack, proc: subprocess.Popen[bytes]) -> None:
    while True:
        assert proc.poll() is None, f"prometheus exited with {proc.returncode}\n{stack.log_tail()}"
        try:
            if check():
                return
            last = "not yet"
        except (requests.RequestException, AssertionError, ValueError) as exc:
            last = str(exc)
        if time.monotonic() >= stack.deadline:
            pytest.fail(f"timed out waiting for {what} ({last})\n{stack.log_tail()}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("replicas")
    generated = subprocess.run([sys.executable, str(ROOT / "prometheus" / "generate.py"), "--out-dir", str(tmp),
                                "--job-selector", 'job=~"single|pair"'],
                               capture_output=True, text=True, timeout=60, check=False)
    assert generated.returncode == 0, generated.stderr
    grid = Grid()
    servers = {role: serve(role, grid) for role in ("single", "a", "b")}

    def static(role: str, instance: str) -> dict[str, Any]:
        return {"targets": [f"127.0.0.1:{servers[role].server_address[1]}"], "labels": {"instance": instance}}

    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp / name) for name in ("recording.yml", "alerts.yml", "slo.yml")],
        "scrape_configs": [
            {"job_name": "single", "static_configs": [static("single", SINGLE)]},
            {"job_name": "pair", "static_configs": [static("a", REPLICAS[0]), static("b", REPLICAS[1])]},
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    port = free_port()
    stack = Stack(f"http://127.0.0.1:{port}", at=0.0, deadline=time.monotonic() + WAIT_LIMIT,
                  log=tmp / "prometheus.log", rules=tmp)
    with open(stack.log, "wb") as log:
        proc = start([prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{port}"], log)
        try:
            wait_until("Prometheus to scrape the three targets", lambda: len(stack.query(
                'up{job=~"single|pair"} == 1', at=time.time())) == 3, stack, proc)
            # Data from the next grid point on: every target is scraped by then, so all series start together.
            grid.t0 = (time.time() // STEP + 1) * STEP
            last_point = grid.t0 + (GRID_POINTS - 1) * STEP
            stack.at = last_point + STEP - 1
            wait_until("the last grid point and the rules evaluated after it", lambda: time.time() > stack.at + 1.5,
                       stack, proc)
            # Every target served the last grid point, and the rules last ran once all had (see the docstring).
            stamps = stack.query(f'timestamp({M.BUILD_INFO.name}{{job=~"single|pair"}})')
            assert sorted(float(s["value"][1]) for s in stamps) == [last_point] * 3, (
                f"a target missed a grid point (slow machine?): {stamps}\n{stack.log_tail()}")
            evaluated = stack.query('timestamp(job_api_result:cdnetworks_api_requests:increase1h{job="pair"})')
            assert evaluated and all(float(s["value"][1]) > last_point + 1 for s in evaluated), evaluated
            yield stack
        finally:
            stop(proc)
            for server in servers.values():
                server.shutdown()
                server.server_close()


# --------------------------------------------------------------------------------------------------
# Comparing the two jobs


def normalized(result: list[dict[str, Any]], *, drop: tuple[str, ...] = ("job",)) -> list[tuple[Any, ...]]:
    rows = []
    for series in result:
        labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k not in drop))
        rows.append((labels, float(series["value"][1])))
    return sorted(rows)


def same(single: list[tuple[Any, ...]], pair: list[tuple[Any, ...]]) -> bool:
    if [labels for labels, _ in single] != [labels for labels, _ in pair]:
        return False
    return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9) or (math.isnan(x) and math.isnan(y))
               for (_, x), (_, y) in zip(single, pair, strict=True))


def per_job(stack: Stack, expr: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """A panel query for $job = single and = pair."""
    single = stack.query(substitute(expr, {**VARIABLES, "job": "single"}))
    pair = stack.query(substitute(expr, {**VARIABLES, "job": "pair"}))
    return normalized(single), normalized(pair)


def panels() -> dict[str, tuple[str, list[str]]]:
    """"<dashboard uid> / <panel title>" -> (title, its expressions)."""
    return {key: (key.split(" / ", 1)[1], exprs) for key, exprs in panel_queries().items()}


def test_every_shared_panel_shows_the_same_for_one_exporter_and_two_replicas(stack: Stack) -> None:
    differ, empty, compared = [], [], 0
    for key, (title, exprs) in panels().items():
        if title in DASHBOARDS_GEN.PER_REPLICA_PANELS:
            continue
        for expr in exprs:
            single, pair = per_job(stack, expr)
            compared += 1
            if not single:
                empty.append(f"{key}: {expr}")
            if not same(single, pair):
                differ.append(f"{key}: {expr}\n  one exporter: {single}\n  two replicas: {pair}")
    assert compared >= 45, "fewer panel queries than the dashboards have"
    assert not empty, "queries without data (the comparison would prove nothing):\n" + "\n".join(empty)
    assert not differ, "\n".join(differ)


def test_per_replica_panels_show_each_replica(stack: Stack) -> None:
    """Panels about each replica itself show one series per replica: one for the single exporter, a and b for
    the pair."""
    found = set()
    for key, (title, exprs) in panels().items():
        if title not in DASHBOARDS_GEN.PER_REPLICA_PANELS:
            continue
        found.add(title)
        for expr in exprs:
            single, pair = per_job(stack, expr)
            instances = {job: [dict(labels)["instance"] for labels, _ in rows]
                         for job, rows in (("single", single), ("pair", pair))}
            assert instances == {"single": [SINGLE], "pair": sorted(REPLICAS)}, (key, instances)
    assert found == DASHBOARDS_GEN.PER_REPLICA_PANELS


def test_pollers_per_replica_add_up_to_the_single_exporter(stack: Stack) -> None:
    expr = next(exprs[0] for _, (title, exprs) in panels().items() if title == "Pollers per replica")
    single, pair = per_job(stack, expr)
    assert [value for _, value in single] == [len(POLLERS)]
    assert {dict(labels)["instance"]: value for labels, value in pair} == {
        replica: sum(1 for holder in HOLDER.values() if holder == role)
        for replica, role in zip(REPLICAS, ("a", "b"), strict=True)}


def test_every_alert_expression_says_the_same_for_one_exporter_and_two_replicas(stack: Stack) -> None:
    """Per job, the same alerts with the same values. An alert about a poller names the replica running it,
    where the single exporter names itself."""
    holder = {poller: REPLICAS[("a", "b").index(role)] for poller, role in HOLDER.items()}
    expressions = {f"alert:{rule['alert']}": rule["expr"] for name in ("alerts.yml", "slo.yml")
                   for group in yaml.safe_load((stack.rules / name).read_text(encoding="utf-8"))["groups"]
                   for rule in group["rules"] if "alert" in rule}
    assert expressions.keys() == {key for key in rule_queries() if key.startswith("alert:")}
    firing = []
    for key, expr in expressions.items():
        result = stack.query(expr)
        by_job = {job: [s for s in result if s["metric"].get("job") == job] for job in ("single", "pair")}
        assert len(by_job["single"]) + len(by_job["pair"]) == len(result), (key, result)
        for series in by_job["pair"]:
            labels = series["metric"]
            if "instance" in labels:  # only the alerts about a poller (the others here name no replica)
                assert labels["instance"] == holder[(labels.get("account", ""), labels["api"])], (key, labels)
        single, pair = (normalized(by_job[job], drop=("job", "instance")) for job in ("single", "pair"))
        assert same(single, pair), f"{key}: {expr}\n  one exporter: {single}\n  two replicas: {pair}"
        if single:
            firing.append(key.removeprefix("alert:"))
    # The fixture makes most conditions true, so that the comparison is about something.
    assert set(firing) >= {
        "CDNetworksNotPolling", "CDNetworksPollLagHigh", "CDNetworksAPIErrors", "CDNetworksAPIRateLimited",
        "CDNetworksPrefetchSuccessRatioLow", "CDNetworksFmgrSuccessRatioLow", "CDNetworksPrefetchTasksStuck",
        "CDNetworksPurgeTasksStuck", "CDNetworksFmgrTasksStuck", "CDNetworksFmgrNotificationsFailing",
        "CDNetworksNotificationsRejected", "CDNetworksPrefetchErrorBudgetFastBurn", "CDNetworksFmgrErrorBudgetFastBurn",
        "CDNetworksQuotaRunningOut",
    }, firing


# Queries that read replicas wrong: a shared gauge per target, a shared series summed, a counter's rates summed,
# per-poller health from every replica. Each must tell the two setups apart, or the tests above prove nothing.
NAIVE = {
    "shared gauge per target": 'cdnetworks_fmgr_pending_tasks{job=~"$job"}',
    "shared series summed": 'sum by (account, window) (cdnetworks_prefetch_tasks{job=~"$job", status="failure"})',
    "shared counter's rates summed": 'sum by (result) (rate(cdnetworks_fmgr_notifications_total{job=~"$job"}'
                                     '[$__rate_interval]))',
    "shared histogram summed": 'sum by (le) (rate(cdnetworks_prefetch_duration_seconds_bucket{job=~"$job"}[1h]))',
    "recorded increase summed": 'sum(increase(cdnetworks_purge_tasks_finished_total{job=~"$job"}[1h]))',
    "worst poll of every replica": 'min by (api) (cdnetworks_up{job=~"$job"})',
    "oldest poll of every replica": 'max by (api) (time() - cdnetworks_last_successful_poll_timestamp_seconds'
                                    '{job=~"$job"})',
    "lag of every replica": 'max by (account, api) (cdnetworks_poll_lag_seconds{job=~"$job"})',
    "one replica's requests": 'max by (api) (increase(cdnetworks_api_requests_total{job=~"$job"}[1h]))',
}


@pytest.mark.parametrize("name", sorted(NAIVE))
def test_naive_queries_tell_one_exporter_from_two_replicas(stack: Stack, name: str) -> None:
    single, pair = per_job(stack, NAIVE[name])
    assert single, NAIVE[name]
    assert not same(single, pair), f"{name}: the fixture cannot tell the setups apart ({single})"
