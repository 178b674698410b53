"""The simulator's HTTP server, its router, and ``Simulator``: the one object tests and ``--demo`` use.

``Simulator`` composes the parts (accounts, CDN model, Fmgr model, notifier, faults, rate limits, request
log) around one lock and one clock, and routes each request through them in the vendor's order.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar, cast, overload
from urllib.parse import urlsplit

from exporter.simulator.auth import Accounts
from exporter.simulator.cdn import CdnModel, parse_offset
from exporter.simulator.faults import PACED, Faults, fault_response
from exporter.simulator.fmgr import FMGR_OPS, FmgrModel
from exporter.simulator.limits import RateLimiter, RequestLog
from exporter.simulator.notifier import Notifier
from exporter.simulator.quota import QUOTA_APIS, QuotaModel
from exporter.simulator.settings import Settings
from exporter.simulator.wire import CDN_PATHS, FMGR_PATH, QUOTA_PATHS, Headers, Response, cdn_error, json_response

_T = TypeVar("_T")

logger = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API
    # Headers and body go out in separate writes; with Nagle on, a keep-alive client waits for the
    # delayed ACK (~40 ms) on every request.
    disable_nagle_algorithm = True
    timeout = 10  # idle keep-alive connections must not pin threads forever
    server_version = "SimulatedVendor/1.0"
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            response = Response(400, b"bad Content-Length", {"Content-Type": "text/plain"}, "bad_request")
        else:
            body = self.rfile.read(length) if length else b""
            response = self.server.simulator._handle(self.command, self.path, self.headers, body)
        simulator = self.server.simulator
        paced = response.pace is not None or response.stream is not None
        if paced:
            simulator._answering(+1)
            self.close_connection = True  # the client leaves mid-answer, or the answer was cut short
        try:
            self._answer(response)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # Expected after the "timeout" fault: the client gave up before we answered.
            logger.debug("client left before the answer to %s %s: %s", self.command, self.path, exc)
            self.close_connection = True
        finally:
            simulator._answered(response)
            if paced:
                simulator._answering(-1)

    def _head(self, response: Response) -> bytes:
        phrase = self.responses.get(response.status, ("",))[0]
        lines = [f"{self.protocol_version} {response.status} {phrase}", f"Server: {self.version_string()}",
                 f"Date: {self.date_time_string()}"]
        lines += [f"{name}: {value}" for name, value in response.headers.items()]
        if response.stream is None:
            lines.append(f"Content-Length: {len(response.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _answer(self, response: Response) -> None:
        settings = self.server.simulator._settings
        head = self._head(response)
        if response.pace == "trickle_headers":
            self._trickle(head + response.body, settings.pace_fault_interval, settings.pace_fault_limit)
            return
        self.wfile.write(head)
        if response.pace == "stall":
            self._client_left_within(settings.pace_fault_limit)
        elif response.pace == "trickle":
            self._trickle(response.body, settings.pace_fault_interval, settings.pace_fault_limit)
        elif response.stream is not None:
            stopping = self.server.simulator._stopping
            for piece in response.stream():
                if stopping.is_set():
                    return
                self.wfile.write(piece)
        else:
            self.wfile.write(response.body)

    def _trickle(self, data: bytes, interval: float, limit: float) -> None:
        """``data`` a byte every ``interval`` seconds, until it is all out, ``limit`` has passed, the client has
        hung up or the simulator stops."""
        ends = time.monotonic() + limit
        for i in range(len(data)):
            self.wfile.write(data[i:i + 1])
            if self._client_left_within(min(interval, ends - time.monotonic())):
                return

    def _client_left_within(self, seconds: float) -> bool:
        """Wait up to ``seconds``; True as soon as the client has hung up or the simulator stops."""
        ends = time.monotonic() + seconds
        stopping = self.server.simulator._stopping
        poller = select.poll()  # not select(): a busy test process may hold descriptors past FD_SETSIZE
        poller.register(self.connection, select.POLLIN)
        while not stopping.is_set():
            left = ends - time.monotonic()
            if left <= 0:
                return False
            if poller.poll(min(left, 0.05) * 1000):
                try:
                    # The socket's own recv (an SSLSocket's takes no flags): a TLS record counts as data.
                    if not socket.socket.recv(self.connection, 1, socket.MSG_PEEK):
                        return True  # the client closed or shut its end down
                except OSError:
                    return True
                time.sleep(min(left, 0.05))  # it sent something (nothing is read mid-answer)
        return True

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: a test double that prints every request drowns the test output."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: Simulator):
        self.simulator = simulator
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.warning("simulator: error while serving %s", client_address, exc_info=True)


class _Kept(Generic[_T]):
    """A public attribute of ``Simulator`` that lives on one of its parts, read and assigned there: a test
    that sets ``sim.notify_record_delay`` or swaps ``sim.cdn_served`` changes what the part uses next."""

    def __init__(self, part: str, name: str | None = None) -> None:
        self._part = part
        self._name = name

    def __set_name__(self, owner: type, name: str) -> None:
        if self._name is None:
            self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _Kept[_T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> _T | _Kept[_T]:
        if obj is None:
            return self
        return cast(_T, getattr(getattr(obj, self._part), str(self._name)))

    def __set__(self, obj: object, value: _T) -> None:
        setattr(getattr(obj, self._part), str(self._name), value)


class Simulator:
    """Both vendor APIs on one local HTTP server, with faults, rate limits and signed notifications.

    * CDN: ``POST /ccm/fetch/ItemIdQuery`` (api ``prefetch``) and ``POST /ccm/purge/ItemIdQuery``
      (``purge``), Date + Basic or AK/SK auth, every seed 002 validation message.
    * Quotas: ``POST /ccm/prefetch/quota`` (``prefetch_quota``) and ``POST /ccm/purge/quota`` (``purge_quota``),
      signed as the CDN queries; what is left drops as tasks are submitted and starts over at midnight UTC+8.
    * Fmgr: ``GET /fmgr/status?persistentId=ID`` (``fmgr``), no auth, and notifications POSTed to the
      task's notify URL by ``deliver_due_notifications`` or the ``start_notifier`` thread.
    * Order of checks per request: injected fault, auth, rate limit, request validation.
    * Everything time-dependent reads ``clock``, except the real time of the "timeout" fault's sleep and of
      the paced faults ("trickle", "stall", "trickle_headers"), which end early when the client hangs up or
      the simulator stops (``open_answers`` says how many are still being written).
    """

    # Tunables (see Settings), read by the parts at request time.
    seed: _Kept[int] = _Kept("_settings")
    timezone: _Kept[str] = _Kept("_settings")
    max_query_age: _Kept[float] = _Kept("_settings")
    max_page_size: _Kept[int] = _Kept("_settings")
    date_skew: _Kept[float] = _Kept("_settings")
    rate_limits: _Kept[dict[str, tuple[int, float]]] = _Kept("_settings")
    string_numbers: _Kept[bool] = _Kept("_settings")
    silent_page_cap: _Kept[int | None] = _Kept("_settings")
    order: _Kept[str] = _Kept("_settings")
    page_no_total: _Kept[bool] = _Kept("_settings")
    timeout_fault_seconds: _Kept[float] = _Kept("_settings")
    pace_fault_interval: _Kept[float] = _Kept("_settings")
    pace_fault_limit: _Kept[float] = _Kept("_settings")
    huge_fault_bytes: _Kept[int] = _Kept("_settings")
    notify_timeout: _Kept[float] = _Kept("_settings")
    notify_record_delay: _Kept[float] = _Kept("_settings")
    quota_volume_unit: _Kept[int] = _Kept("_settings")
    # What was observed.
    cdn_served: _Kept[dict[tuple[str, str, str, int], float]] = _Kept("_cdn", "served")
    requests: _Kept[collections.Counter[tuple[str, str | None]]] = _Kept("_log", "requests")
    request_log: _Kept[list[dict[str, Any]]] = _Kept("_log", "entries")
    rate_limit_violations: _Kept[int] = _Kept("_limits", "violations")
    notify_log: _Kept[list[dict[str, Any]]] = _Kept("_notifier", "log")

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        seed: int = 1,
        timezone: str = "+08:00",
        max_query_age: float = 3 * 86400,
        max_page_size: int = 500,
        date_skew: float = 900.0,
        rate_limits: dict[str, tuple[int, float]] | None = None,
        string_numbers: bool = False,
        silent_page_cap: int | None = None,
        order: str = "desc",
    ) -> None:
        self._clock = clock
        tz = parse_offset(timezone)
        if order not in ("asc", "desc"):
            raise ValueError("order must be 'asc' or 'desc' (by createTime)")
        self._settings = Settings(seed, timezone, max_query_age, max_page_size, date_skew, dict(rate_limits or {}),
                                  string_numbers, silent_page_cap, order)

        self.url = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # One lock for all model state, shared by every part; never held while sleeping or doing outbound HTTP.
        self._lock = threading.RLock()

        self._accounts = Accounts(self._settings, self._lock)
        self._cdn = CdnModel(self._settings, tz, clock, self._lock)
        self._quota = QuotaModel(self._settings, self._cdn, clock, self._lock)
        self._fmgr = FmgrModel(self._settings, clock, self._lock)
        self._notifier = Notifier(self._fmgr, self._settings, clock, self._lock)
        self._faults = Faults(self._lock)
        self._limits = RateLimiter(self._settings, self._lock)
        self._log = RequestLog(self._lock)
        # Set while stopping: paced and streamed answers end at once. How many are being written now.
        self._stopping = threading.Event()
        self._open = 0
        self._open_changed = threading.Condition()

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0, *, tls: tuple[str, str] | None = None) -> str:
        """Serve on ``host:port`` (0: a free port); with ``tls`` (certificate and key files), over HTTPS."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        self._server = _Server((host, port), self)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://{host}:{self._server.server_address[1]}"
        # A short poll interval keeps stop() fast: tests start and stop a simulator each.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="vendor-simulator", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._notifier.stop()
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.wait_answers_closed(5.0)

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------ CDN

    def add_account(self, username: str, api_key: str | None = None, *,
                    access_key: str | None = None, secret_key: str | None = None) -> None:
        self._accounts.add(username, api_key, access_key, secret_key)

    def add_cdn_task(self, username: str, kind: str, url: str, create_ts: float, *,
                     wait: float = 30.0, run: float = 60.0, final: str = "success",
                     rate: int | None = None, item_id: str | None = None, visible_after: float = 0.0,
                     size: int | None = None, target: str = "urls") -> None:
        """One task; ``rate`` defaults to 100 for a success and 0 for a failure (failures stay < 100). Submitting
        it takes one of the day's quota of its kind: a prefetch one URL and ``size`` bytes (default: drawn from its
        URL, up to 20 MiB), a purge one of its ``target`` (urls, directories, regexes or tags)."""
        self._cdn.add_task(username, kind, url, create_ts, wait=wait, run=run, final=final, rate=rate,
                           item_id=item_id, visible_after=visible_after, size=size, target=target)

    def add_cdn_stream(self, username: str, kind: str, *, per_hour: float, failure_ratio: float = 0.05,
                       start_ts: float, end_ts: float | None = None, slow_ratio: float = 0.0,
                       slow_range: tuple[float, float] = (2 * 3600.0, 48 * 3600.0), late_ratio: float = 0.0,
                       late_max: float = 600.0) -> None:
        """Tasks at ``per_hour`` on average from ``start_ts`` to ``end_ts`` (exclusive; None: forever).

        Most take 15 s to 12 min; ``slow_ratio`` of them stay unfinished for ``slow_range`` seconds more, and
        ``late_ratio`` of them are served only up to ``late_max`` seconds after their createTime."""
        self._cdn.add_stream(username, kind, per_hour=per_hour, failure_ratio=failure_ratio, start_ts=start_ts,
                             end_ts=end_ts, slow_ratio=slow_ratio, slow_range=slow_range, late_ratio=late_ratio,
                             late_max=late_max)

    def cdn_truth(self, username: str, kind: str, start_ts: float, end_ts: float,
                  at: float | None = None, *, served: bool = True) -> dict[str, int]:
        """Tasks created in [start_ts, end_ts] and by ``at``, per status at ``at``, plus ``total``; with
        ``served`` (the default) only those the API serves at ``at`` (a late task is not served yet)."""
        return self._cdn.truth(username, kind, start_ts, end_ts, at, served)

    def cdn_late_count(self, username: str, kind: str, start_ts: float, end_ts: float) -> int:
        """Tasks created in [start_ts, end_ts] that the API serves only some time after their createTime."""
        return self._cdn.late_count(username, kind, start_ts, end_ts)

    def cdn_known_truth(self, username: str, kind: str, start_ts: float, end_ts: float) -> dict[str, int]:
        """Tasks created in [start_ts, end_ts] that the API has served, each by its status when it was last
        served, plus ``total``: exactly what a client that stored every answer can know. Also
        ``succeeded_since``: how many of those last served unfinished have succeeded by now (a client that
        asks by state can learn it without the task being served again)."""
        return self._cdn.known_truth(username, kind, start_ts, end_ts)

    def cdn_changes(self, username: str, kind: str, start_ts: float, end_ts: float, after: float,
                    until: float) -> list[tuple[str, int, int, str, float]]:
        """(url, create, phase, status, at) of each change the API showed in ``(after, until]``
        (``CdnModel.changes``): the real truth staleness is measured against."""
        return self._cdn.changes(username, kind, start_ts, end_ts, after, until)

    def cdn_tasks_at(self, username: str, kind: str, start_ts: float, end_ts: float,
                     at: float | None = None) -> list[dict[str, Any]]:
        """The wire's ``resultDetail`` entries for the range, in wire order, each plus ``create_ts``."""
        return self._cdn.tasks_at(username, kind, start_ts, end_ts, at)

    # --------------------------------------------------------------------------------------- quotas

    def set_quota(self, username: str, kind: str, unit: str, limit: int) -> None:
        """Change a daily limit of an account: ``kind`` prefetch (units urls, bytes) or purge (urls, directories,
        regexes, tags). The defaults are the published limits (QuotaModel)."""
        self._quota.set_limit(username, kind, unit, limit)

    def quota_truth(self, username: str, kind: str, at: float | None = None) -> dict[str, tuple[int, int]]:
        """unit -> (the day's limit, what is left of it) at ``at`` (default: now), in units (bytes for the
        prefetch volume): the quota the vendor holds, whatever its answers round."""
        return self._quota.truth(username, kind, at)

    def quota_answer(self, username: str, kind: str, at: float | None = None) -> dict[str, int]:
        """The figures a quota query answers at ``at`` (field -> value; the volume in ``quota_volume_unit``)."""
        return self._quota.answer(username, kind, at)

    # ----------------------------------------------------------------------------------------- Fmgr

    def add_fmgr_task(self, persistent_id: str, ops: list[str], *, created_ts: float | None = None,
                      pending: float = 5.0, processing: float = 20.0, fail_items: Sequence[int] = (),
                      fsize: int = 1048576, notify_url: str | None = None,
                      notify_key: tuple[str, str] | None = None, separate: int = 0,
                      notify_delay: float = 3.0, notify_fails: bool = False) -> None:
        """One task with an item per op; without ``notify_key`` its notification goes out unsigned.

        With ``notify_url`` the task goes 3 -> 4 ``notify_delay`` seconds after processing completed, then
        to 6 once a delivery was answered 200, or to 5 when every attempt failed (``notify_fails``: none
        reaches the URL). Without it the task stays at 3."""
        self._fmgr.add_task(persistent_id, ops, created_ts=created_ts, pending=pending, processing=processing,
                            fail_items=fail_items, fsize=fsize, notify_url=notify_url, notify_key=notify_key,
                            separate=separate, notify_delay=notify_delay, notify_fails=notify_fails)

    def add_fmgr_stream(self, *, per_minute: float, start_ts: float, ops: Sequence[str] = FMGR_OPS,
                        failure_ratio: float = 0.1, notify_url: str | None = None,
                        notify_key: tuple[str, str] | None = None, id_prefix: str = "sim",
                        notify_failure_ratio: float = 0.0) -> None:
        """Ids ``f"{id_prefix}-{n:08d}"``, one every 60/per_minute s from ``start_ts``, made on demand.

        ``failure_ratio`` of the items fail; with ``notify_url``, ``notify_failure_ratio`` of the tasks
        cannot be notified (every attempt is lost) and end in 5, their items in 5/19."""
        self._fmgr.add_stream(per_minute=per_minute, start_ts=start_ts, ops=ops, failure_ratio=failure_ratio,
                              notify_url=notify_url, notify_key=notify_key, id_prefix=id_prefix,
                              notify_failure_ratio=notify_failure_ratio)

    def fmgr_ids(self, at: float | None = None) -> list[str]:
        return self._fmgr.ids(at)

    def fmgr_status(self, persistent_id: str, at: float | None = None) -> dict[str, Any] | None:
        """The exact JSON body ``GET /fmgr/status`` answers at ``at``; None if the id does not exist."""
        return self._fmgr.status(persistent_id, at)

    def fmgr_changes(self, persistent_id: str, until: float | None = None) -> list[tuple[float, int]]:
        """``(ts, code)`` of every change of the task's code (and so of its items') up to ``until``, oldest
        first: what a client polling without delay would have seen, to measure how stale it is."""
        return self._fmgr.changes(persistent_id, until)

    # ------------------------------------------------------------------------------ notifications

    def configure_notifier(self, *, duplicate_ratio: float = 0.1, forged_ratio: float = 0.02,
                           max_attempts: int = 4) -> None:
        """Set how deliveries misbehave; until called, deliveries are clean (no duplicates/forgeries)."""
        self._notifier.configure(duplicate_ratio=duplicate_ratio, forged_ratio=forged_ratio,
                                 max_attempts=max_attempts)

    def start_notifier(self, *, interval: float = 0.5, duplicate_ratio: float = 0.1,
                       forged_ratio: float = 0.02, max_attempts: int = 4) -> None:
        self.configure_notifier(duplicate_ratio=duplicate_ratio, forged_ratio=forged_ratio,
                                max_attempts=max_attempts)
        self._notifier.start(interval)

    def deliver_due_notifications(self) -> int:
        """One delivery pass at the current clock; returns the number of POSTs sent."""
        return self._notifier.deliver_due()

    # ----------------------------------------------------------------------- faults and observation

    def inject(self, api: str, fault: str, count: int = 1) -> None:
        """The next ``count`` requests to ``api`` get ``fault`` before anything else is checked."""
        self._faults.inject(api, fault, count)

    @property
    def open_answers(self) -> int:
        """Paced or streamed answers being written now (each holds a server thread until it ends)."""
        with self._open_changed:
            return self._open

    def wait_answers_closed(self, timeout: float) -> bool:
        """Wait until no paced or streamed answer is being written; False if one still is after ``timeout``."""
        with self._open_changed:
            return self._open_changed.wait_for(lambda: self._open == 0, timeout)

    def _answering(self, delta: int) -> None:
        with self._open_changed:
            self._open += delta
            self._open_changed.notify_all()

    def _answered(self, response: Response) -> None:
        """The answer is out (or the client left): its log entry gets the time, on the simulator's clock."""
        if response.logged is not None:
            with self._lock:
                response.logged["ended"] = self._clock()

    def reset_counters(self) -> None:
        """Forget what was observed (requests, logs, violations); tasks, faults and windows stay."""
        with self._lock:
            self._log.reset()
            self._limits.violations = 0
            self._notifier.log.clear()

    # -------------------------------------------------------------------------------------- serving

    def _handle(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        try:
            return self._dispatch(method, target, headers, body)
        except Exception:
            logger.exception("simulator: failed to answer %s %s", method, target)
            return Response(500, b"simulator error", {"Content-Type": "text/plain"}, "error")

    def _dispatch(self, method: str, target: str, headers: Headers, body: bytes) -> Response:
        parts = urlsplit(target)
        api = CDN_PATHS.get(parts.path) or QUOTA_PATHS.get(parts.path) or ("fmgr" if parts.path == FMGR_PATH else None)
        if api is None:
            return json_response(404, {"code": 404, "message": "not found"}, "unknown_path")
        user = None if api == "fmgr" else self._accounts.claimed_user(headers)
        with self._lock:
            arrived = self._clock()
            request_id = self._log.arrive(api, user)
            fault = self._faults.take(api)
        if fault == "timeout":
            time.sleep(self._settings.timeout_fault_seconds)  # no lock held: other requests keep flowing
        if fault is not None and fault != "timeout" and fault not in PACED:
            response = fault_response(api, fault, query=parts.query, huge_bytes=self._settings.huge_fault_bytes)
        elif api == "fmgr":
            response = self._fmgr_response(method, parts.query)
        else:
            response = self._cdn_response(api, method, parts.path, parts.query, headers, body)
        if fault in PACED:
            response.pace = fault  # the normal answer (counted by the rate limit as usual), paced
        if api != "fmgr":
            response.headers.setdefault("x-cnc-request-id", f"sim-{self._settings.seed}-{request_id}")
        response.logged = self._log.record(arrived, api, user, parts.query, body, response.result, fault)
        return response

    def _fmgr_response(self, method: str, query: str) -> Response:
        if method != "GET":
            return json_response(405, {"code": 405, "message": "method not allowed"}, "bad_request")
        limited = self._limits.check("fmgr", None, self._clock())
        if limited is not None:
            return limited
        return self._fmgr.respond(query)

    def _cdn_response(self, api: str, method: str, path: str, query: str, headers: Headers,
                      body: bytes) -> Response:
        if method != "POST":
            return cdn_error("method not allowed", "bad_request", 405)
        now = self._clock()
        user, refusal = self._accounts.verify(method, path, query, headers, body, now)
        if refusal is not None:
            return refusal
        limited = self._limits.check(api, user, now)
        if limited is not None:
            return limited
        if api in QUOTA_APIS:
            assert user is not None
            return self._quota.respond(api, user, now)
        return self._cdn.query(api, user, body, now)
