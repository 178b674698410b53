"""In-process fake of the vendor: the CDN task status queries and the object-storage Fmgr API.

It is the test double for the whole vendor (the test suite and ``--demo`` run the real HTTP path
against it), so it is strict wherever the vendor documents are (seed 002 for the CDN, seeds 000/001
for Fmgr) and deterministic: every task is a pure function of ``(seed, inputs, time)`` and the clock
is injected, so a test can move time forward instead of sleeping.

High-volume CDN streams are generated lazily, one minute slot at a time, by seeding a private RNG
from a hash of the slot; nothing is stored up front and ``cdn_truth`` sees exactly what the wire
serves.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qs, urlsplit

import requests as requests_lib

from exporter import signing

_K = TypeVar("_K")
_V = TypeVar("_V")
# Request headers: a plain mapping, or the http.server request's (case-insensitive, first of duplicates).
_Headers = Mapping[str, str] | Message

logger = logging.getLogger(__name__)

CDN_PATHS = {"/ccm/fetch/ItemIdQuery": "prefetch", "/ccm/purge/ItemIdQuery": "purge"}
FMGR_PATH = "/fmgr/status"
APIS = ("prefetch", "purge", "fmgr")
TASK_KINDS = ("prefetch", "purge")
QUERY_STATUSES = ("init", "wait", "run", "success", "failure")
TASK_STATUSES = ("wait", "run", "success", "failure")
FMGR_OPS = ("fetch", "copy", "move", "delete", "compress", "deletePrefix")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_QUERY_SPAN = 86400.0
AKSK_TIMESTAMP_SKEW = 300.0
SLOT_SECONDS = 60
# Summaries are small: two weeks of minutes. Built tasks are not: about a day at 100k tasks/day.
SUMMARY_CACHE_SIZE = 20000
TASKS_CACHE_SIZE = 1500
# Seed 002's answer carries this odd header verbatim; clients must not rely on the content type.
CDN_CONTENT_TYPE = "charset=utf-8; charset=UTF-8"
JSON_CONTENT_TYPE = "application/json"

# Seed 002 error messages, verbatim (all are HTTP 200 with Code 0).
MSG_PARSE_JSON = "parse json error"
MSG_USERNAME_INVALID = "username is invalid"
MSG_TIME_EMPTY = "startTime or endTime must not be empty"
MSG_TOO_OLD = "query create time should not before 3 days"
MSG_TIME_ERROR = "query time error"
MSG_END_BEFORE_START = "endTime should not before startTime"
MSG_PAGE_SIZE = "page size error"
MSG_PAGE_NO = "page no error"
MSG_STATUS = "task status error,eg: init wait run success failure"
# Not in the seed; the shapes follow its error table.
MSG_AUTH_FAILED = "authentication failed"
MSG_RATE_LIMITED = "rate limit exceeded"

FAULTS = ("http500", "http503", "http429", "timeout", "malformed", "wrong_types", "empty_page")
CODE0_FAULT_PREFIX = "code0:"
MALFORMED_CDN_BODY = b'{"count": 1, "Code": 1,'
MALFORMED_FMGR_BODY = b'{"id": "x", "code": 3,'

_DOMAINS = ("static.example.com", "img.example.com", "video.example.com", "dl.example.com")
_FMGR_ERRORS = ("source file not found", "source timeout", "bucket quota exceeded")
_TZ_RE = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_INT_RE = re.compile(r"^[+-]?\d+$")

FMGR_TASK_DESC = {0: "waiting", 1: "processing", 4: "notifying", 5: "notifyFailed", 6: "notifySucceed"}
FMGR_ITEM_DESC = {
    0: "waiting",
    1: "processing",
    2: "fileOperateFailed",
    3: "fileOperateSucceed",
    4: "fileOperateSucceed,notifying",
    5: "fileOperateSucceed,notifyFailed",
    6: "fileOperateSucceed,notifySucceed",
    18: "fileOperateFailed,notifying",
    19: "fileOperateFailed,notifyFailed",
    20: "fileOperateFailed,notifySucceed",
}
# Item code for a finished task code: (succeeded item, failed item).
_FINISHED_ITEM_CODES = {3: (3, 2), 4: (4, 18), 5: (5, 19), 6: (6, 20)}


# --------------------------------------------------------------------------------------------- helpers


def parse_offset(value: str) -> timezone:
    """A fixed offset such as ``+08:00``, ``-0500``, ``Z`` or ``UTC``."""
    if value in ("Z", "UTC", "+00:00"):
        return timezone.utc
    match = _TZ_RE.match(value)
    if match is None:
        raise ValueError(f"timezone {value!r} is not a fixed offset like +08:00")
    sign = -1 if match.group(1) == "-" else 1
    hours, minutes = int(match.group(2)), int(match.group(3))
    if hours > 23 or minutes > 59:
        raise ValueError(f"timezone {value!r} is out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _hash_int(*parts: object) -> int:
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _hash_uniform(*parts: object) -> float:
    """A deterministic number in [0, 1) for a decision keyed by ``parts``."""
    return _hash_int(*parts) / 2**64


def _poisson(rng: random.Random, mean: float) -> int:
    """Inverse-CDF Poisson draw; a normal approximation where exp(-mean) would underflow."""
    if mean <= 0:
        return 0
    if mean > 500:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    u = rng.random()
    k, p = 0, math.exp(-mean)
    cdf = p
    while u > cdf and (p > 1e-300 or k < mean):
        k += 1
        p *= mean / k
        cdf += p
    return k


def _parse_count(value: object, default: int) -> int | None:
    """pageNo/pageSize arrive as ints or numeric strings (seed 002 types them String); None if neither."""
    if value is None:
        return default
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INT_RE.match(value.strip()):
        return int(value.strip())
    return None


def _item_code(task_code: int, failed: bool) -> int:
    """An item's code follows its task's: 0/1 while running, then its own outcome per notify state."""
    if task_code in _FINISHED_ITEM_CODES:
        return _FINISHED_ITEM_CODES[task_code][1 if failed else 0]
    return task_code


def _task_desc(task_code: int, any_failed: bool) -> str:
    if task_code == 3:
        return "fileOperateFailed" if any_failed else "fileOperateSucceed"
    return FMGR_TASK_DESC[task_code]


def _lru_get(cache: collections.OrderedDict[_K, _V], key: _K) -> _V | None:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: collections.OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    cache[key] = value
    if len(cache) > size:
        cache.popitem(last=False)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode("ascii")


def _compact_json(value: object) -> bytes:
    # The vendor's Java stack writes compact JSON (see the seed 001 notification body).
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


# ------------------------------------------------------------------------------------------- CDN model


class _CdnTask(NamedTuple):
    create: int  # whole epoch seconds
    wait: float
    run: float
    final: str  # "success" | "failure"
    rate: int
    url: str
    item_id: str
    visible: float = -math.inf  # the API serves the task from this time on (some appear late)

    @property
    def finish(self) -> float:
        return self.create + self.wait + self.run

    def status_at(self, now: float) -> str:
        if now < self.create + self.wait:
            return "wait"
        if now < self.finish:
            return "run"
        return self.final


def _sort_key(task: _CdnTask) -> tuple[int, str]:
    return (-task.create, task.url)


def _sort_key_asc(task: _CdnTask) -> tuple[int, str]:
    return (task.create, task.url)


def _mix64(x: int) -> int:
    """splitmix64's finaliser: more independent bits from one task's draw (slow and late shares)."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


@dataclass(frozen=True)
class _SlotSummary:
    """What a (user, kind, minute) slot holds, without building its tasks: enough to count."""

    count: int
    settled_at: float  # from this time on every task of the slot is in its final state
    finals: Mapping[str, int]  # final status -> tasks
    visible_at: float = -math.inf  # from this time on every task of the slot is served


_EMPTY_SUMMARY = _SlotSummary(0, -math.inf, {})


@dataclass(frozen=True)
class _CdnStream:
    index: int
    per_hour: float
    failure_ratio: float
    start_ts: float
    end_ts: float | None
    slow_ratio: float = 0.0  # this share waits or runs for hours or days (seen in the field)
    slow_range: tuple[float, float] = (2 * 3600.0, 48 * 3600.0)
    late_ratio: float = 0.0  # this share is served only some time after its createTime
    late_max: float = 600.0

    def extra(self, bits: int) -> tuple[float, float]:
        """(added run time, visibility delay) of the task drawn as ``bits``."""
        if not (self.slow_ratio or self.late_ratio):
            return 0.0, 0.0
        m = _mix64(bits)
        slow = late = 0.0
        if (m & 0xFFFF) < self.slow_ratio * 65536:
            lo, hi = self.slow_range
            slow = lo + ((m >> 16) & 0xFFFFF) / 0x100000 * (hi - lo)
        if ((m >> 36) & 0xFFFF) < self.late_ratio * 65536:
            late = 1.0 + ((m >> 52) & 0xFFF) / 0x1000 * self.late_max
        return slow, late

    def overlaps(self, slot_start: int) -> bool:
        if slot_start + SLOT_SECONDS <= self.start_ts:
            return False
        return self.end_ts is None or slot_start < self.end_ts

    def contains(self, ts: int) -> bool:
        return ts >= self.start_ts and (self.end_ts is None or ts < self.end_ts)


@dataclass(frozen=True)
class _Account:
    username: str
    api_key: str | None = field(repr=False)
    access_key: str | None
    secret_key: str | None = field(repr=False)


# ------------------------------------------------------------------------------------------ Fmgr model


@dataclass(frozen=True)
class _FmgrItem:
    op: str
    cmd: str
    key: str
    url: str
    hash: str
    fsize: int
    failed: bool
    error: str


@dataclass(frozen=True)
class _FmgrTask:
    id: str
    ordinal: int  # picks the int/string shape variant, like the seeds disagree
    created_ts: float
    pending: float
    processing: float
    items: tuple[_FmgrItem, ...]
    notify_url: str | None
    notify_key: tuple[str, str] | None = field(repr=False)
    separate: int
    notify_delay: float = 3.0  # seconds at 3 (processing completed) before the notification phase (4)
    notify_fails: bool = False  # every delivery attempt is lost (the notifyURL cannot be reached)

    @property
    def completed_at(self) -> float:
        return self.created_ts + self.pending + self.processing

    @property
    def notify_at(self) -> float:
        """When the task goes from 3 to 4 and the first delivery is attempted (with a notifyURL)."""
        return self.completed_at + self.notify_delay

    @property
    def any_failed(self) -> bool:
        return any(item.failed for item in self.items)


@dataclass(frozen=True)
class _FmgrStream:
    prefix: str
    interval: float
    start_ts: float
    ops: tuple[str, ...]
    failure_ratio: float
    notify_url: str | None
    notify_key: tuple[str, str] | None = field(repr=False)
    notify_failure_ratio: float = 0.0

    def last_index(self, at: float) -> int:
        """Index of the newest id that exists at ``at``; -1 when none does yet."""
        if at < self.start_ts:
            return -1
        return math.floor((at - self.start_ts) / self.interval + 1e-9)


@dataclass
class _NotifyState:
    attempts: int = 0
    next_at: float = -math.inf
    delivered_at: float | None = None
    failed_at: float | None = None

    @property
    def final(self) -> bool:
        return self.delivered_at is not None or self.failed_at is not None


@dataclass(frozen=True)
class _NotifySettings:
    duplicate_ratio: float = 0.0
    forged_ratio: float = 0.0
    max_attempts: int = 4


# ---------------------------------------------------------------------------------------------- HTTP


@dataclass
class _Response:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    result: str = "ok"


def _json_response(status: int, payload: object, result: str, content_type: str = JSON_CONTENT_TYPE,
                   headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, _compact_json(payload), {"Content-Type": content_type, **(headers or {})},
                     result)


def _cdn_error(message: str, result: str = "code0", status: int = 200,
               headers: dict[str, str] | None = None) -> _Response:
    return _json_response(status, {"Code": 0, "Message": message}, result, CDN_CONTENT_TYPE, headers)


def _auth_failed() -> _Response:
    return _cdn_error(MSG_AUTH_FAILED, "auth", 401)


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
            response = _Response(400, b"bad Content-Length", {"Content-Type": "text/plain"}, "bad_request")
        else:
            body = self.rfile.read(length) if length else b""
            response = self.server.simulator._handle(self.command, self.path, self.headers, body)
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # Expected after the "timeout" fault: the client gave up before we answered.
            logger.debug("client left before the answer to %s %s: %s", self.command, self.path, exc)
            self.close_connection = True

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


# ------------------------------------------------------------------------------------------ Simulator


class ManualClock:
    """A settable clock to share between the simulator and the exporter (tests, benchmarks), so that hours
    of vendor behaviour pass in milliseconds and both sides agree on what "now" is."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Simulator:
    """Both vendor APIs on one local HTTP server, with faults, rate limits and signed notifications.

    * CDN: ``POST /ccm/fetch/ItemIdQuery`` (api ``prefetch``) and ``POST /ccm/purge/ItemIdQuery``
      (``purge``), Date + Basic or AK/SK auth, every seed 002 validation message.
    * Fmgr: ``GET /fmgr/status?persistentId=ID`` (``fmgr``), no auth, and notifications POSTed to the
      task's notify URL by ``deliver_due_notifications`` or the ``start_notifier`` thread.
    * Order of checks per request: injected fault, auth, rate limit, request validation.
    * Everything time-dependent reads ``clock``, except the "timeout" fault's real sleep.
    """

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
        self.seed = seed
        self.timezone = timezone
        self._tz = parse_offset(timezone)
        self.max_query_age = max_query_age
        self.max_page_size = max_page_size
        self.date_skew = date_skew
        self.rate_limits = dict(rate_limits or {})
        self.string_numbers = string_numbers
        # Some APIs cap the page size without an error: they answer fewer rows and echo the smaller size.
        self.silent_page_cap = silent_page_cap
        # Seed 002 does not say how rows are ordered; the exporter must not depend on it, so both are served.
        if order not in ("asc", "desc"):
            raise ValueError("order must be 'asc' or 'desc' (by createTime)")
        self.order = order
        # The "timeout" fault sleeps this long (real time) before answering normally.
        self.timeout_fault_seconds = 3.0
        self.notify_timeout = 5.0
        # The vendor records a delivery (code 4 -> 6) or a give-up (4 -> 5) this long after it happened, so a
        # poll right after a notification still sees 4.
        self.notify_record_delay = 2.0

        self.url = ""
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # One lock for all model state; never held while sleeping or doing outbound HTTP.
        self._lock = threading.RLock()

        self._accounts: dict[str, _Account] = {}
        self._by_access_key: dict[str, _Account] = {}
        self._cdn_manual: dict[tuple[str, str], dict[int, list[_CdnTask]]] = {}
        self._cdn_streams: dict[tuple[str, str], list[_CdnStream]] = {}
        self._cdn_generation: collections.Counter[tuple[str, str]] = collections.Counter()
        self._summary_cache: collections.OrderedDict[tuple[str, str, int, int], _SlotSummary] = (
            collections.OrderedDict())
        self._tasks_cache: collections.OrderedDict[tuple[str, str, int, int], tuple[_CdnTask, ...]] = (
            collections.OrderedDict())

        self._fmgr_tasks: dict[str, _FmgrTask] = {}
        self._fmgr_streams: list[_FmgrStream] = []
        self._notify_state: dict[str, _NotifyState] = {}
        self._notify_open: set[str] = set()  # manual tasks whose notification is not final yet
        self._stream_cursor: dict[str, int] = {}  # per stream: every lower index is final
        self._notify_settings = _NotifySettings()
        self._deliver_lock = threading.Lock()
        self._notifier: threading.Thread | None = None
        self._notifier_stop = threading.Event()

        self._faults: dict[str, collections.deque[str]] = {api: collections.deque() for api in APIS}
        self._rate_windows: dict[tuple[str, str | None], collections.deque[float]] = (
            collections.defaultdict(collections.deque))
        self._request_seq = 0

        # (user, kind, url, create) -> when the API last served the task: what a client could know.
        self.cdn_served: dict[tuple[str, str, str, int], float] = {}
        self.requests: collections.Counter[tuple[str, str | None]] = collections.Counter()
        self.request_log: list[dict[str, Any]] = []
        self.rate_limit_violations = 0
        self.notify_log: list[dict[str, Any]] = []

    # ----------------------------------------------------------------------------------- lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = _Server((host, port), self)
        self.url = f"http://{host}:{self._server.server_address[1]}"
        # A short poll interval keeps stop() fast: tests start and stop a simulator each.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="vendor-simulator", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._notifier_stop.set()
        if self._notifier is not None:
            self._notifier.join(timeout=self.notify_timeout * 2)
            self._notifier = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Simulator:
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ CDN population

    def add_account(self, username: str, api_key: str | None = None, *,
                    access_key: str | None = None, secret_key: str | None = None) -> None:
        if api_key is None and access_key is None:
            raise ValueError("an account needs an api_key or an access_key/secret_key pair")
        if (access_key is None) != (secret_key is None):
            raise ValueError("access_key and secret_key go together")
        account = _Account(username, api_key, access_key, secret_key)
        with self._lock:
            self._accounts[username] = account
            if access_key is not None:
                self._by_access_key[access_key] = account

    def add_cdn_task(self, username: str, kind: str, url: str, create_ts: float, *,
                     wait: float = 30.0, run: float = 60.0, final: str = "success",
                     rate: int | None = None, item_id: str | None = None, visible_after: float = 0.0) -> None:
        """One task; ``rate`` defaults to 100 for a success and 0 for a failure (failures stay < 100)."""
        _check_kind(kind)
        if final not in ("success", "failure"):
            raise ValueError(f"final must be success or failure, not {final!r}")
        if wait < 0 or run < 0:
            raise ValueError("wait and run must not be negative")
        if rate is None:
            rate = 100 if final == "success" else 0
        if final == "failure" and rate >= 100:
            raise ValueError("a failed task has a rate below 100")
        create = math.floor(create_ts)  # the API speaks whole seconds
        if item_id is None:
            item_id = hashlib.blake2b(f"{self.seed}|{username}|{kind}|{url}|{create}".encode(),
                                      digest_size=16).hexdigest()
        task = _CdnTask(create, float(wait), float(run), final, int(rate), url, item_id,
                        create + float(visible_after) if visible_after > 0 else -math.inf)
        with self._lock:
            slots = self._cdn_manual.setdefault((username, kind), {})
            slots.setdefault(create // SLOT_SECONDS, []).append(task)
            self._cdn_generation[(username, kind)] += 1

    def add_cdn_stream(self, username: str, kind: str, *, per_hour: float, failure_ratio: float = 0.05,
                       start_ts: float, end_ts: float | None = None, slow_ratio: float = 0.0,
                       slow_range: tuple[float, float] = (2 * 3600.0, 48 * 3600.0), late_ratio: float = 0.0,
                       late_max: float = 600.0) -> None:
        """Tasks at ``per_hour`` on average from ``start_ts`` to ``end_ts`` (exclusive; None: forever).

        Most take 15 s to 12 min; ``slow_ratio`` of them stay unfinished for ``slow_range`` seconds more, and
        ``late_ratio`` of them are served only up to ``late_max`` seconds after their createTime."""
        _check_kind(kind)
        if per_hour < 0 or not 0 <= failure_ratio <= 1 or not 0 <= slow_ratio <= 1 or not 0 <= late_ratio <= 1:
            raise ValueError("per_hour must be >= 0 and failure_ratio, slow_ratio, late_ratio within 0..1")
        with self._lock:
            streams = self._cdn_streams.setdefault((username, kind), [])
            streams.append(_CdnStream(len(streams), per_hour, failure_ratio, start_ts, end_ts, slow_ratio,
                                      slow_range, late_ratio, late_max))
            self._cdn_generation[(username, kind)] += 1

    def cdn_truth(self, username: str, kind: str, start_ts: float, end_ts: float,
                  at: float | None = None, *, served: bool = True) -> dict[str, int]:
        """Tasks created in [start_ts, end_ts] and by ``at``, per status at ``at``, plus ``total``; with
        ``served`` (the default) only those the API serves at ``at`` (a late task is not served yet)."""
        now = self._clock() if at is None else at
        counts = dict.fromkeys(TASK_STATUSES, 0)
        lo, hi = math.ceil(start_ts), min(math.floor(end_ts), math.floor(now))
        with self._lock:
            for slot_no, summary, whole in self._slots_desc(username, kind, lo, hi):
                if whole and summary.settled_at <= now and (summary.visible_at <= now or not served):
                    for status, n in summary.finals.items():
                        counts[status] += n
                    continue
                for task in self._slot_tasks(username, kind, slot_no):
                    if lo <= task.create <= hi and (task.visible <= now or not served):
                        counts[task.status_at(now)] += 1
        counts["total"] = sum(counts.values())
        return counts

    def cdn_late_count(self, username: str, kind: str, start_ts: float, end_ts: float) -> int:
        """Tasks created in [start_ts, end_ts] that the API serves only some time after their createTime."""
        lo, hi = math.ceil(start_ts), math.floor(end_ts)
        with self._lock:
            return sum(1 for slot_no, summary, _ in self._slots_desc(username, kind, lo, hi)
                       if summary.visible_at > -math.inf
                       for t in self._slot_tasks(username, kind, slot_no)
                       if lo <= t.create <= hi and t.visible > t.create)

    def cdn_known_truth(self, username: str, kind: str, start_ts: float, end_ts: float) -> dict[str, int]:
        """Tasks created in [start_ts, end_ts] that the API has served, each by its status when it was last
        served, plus ``total``: exactly what a client that stored every answer can know. Also
        ``succeeded_since``: how many of those last served unfinished have succeeded by now (a client that
        asks by state can learn it without the task being served again)."""
        now = self._clock()
        counts = dict.fromkeys(TASK_STATUSES, 0)
        succeeded_since = 0
        lo, hi = math.ceil(start_ts), math.floor(end_ts)
        with self._lock:
            served = [(url, create, at) for (user, k, url, create), at in self.cdn_served.items()
                      if user == username and k == kind and lo <= create <= hi]
            by_slot: dict[int, dict[tuple[str, int], _CdnTask]] = {}
            for url, create, at in served:
                slot = by_slot.setdefault(create // SLOT_SECONDS, {
                    (t.url, t.create): t for t in self._slot_tasks(username, kind, create // SLOT_SECONDS)})
                task = slot[(url, create)]
                status = task.status_at(at)
                counts[status] += 1
                succeeded_since += status in ("wait", "run") and task.status_at(now) == "success"
        counts["total"] = sum(counts.values())
        counts["succeeded_since"] = succeeded_since
        return counts

    def cdn_tasks_at(self, username: str, kind: str, start_ts: float, end_ts: float,
                     at: float | None = None) -> list[dict[str, Any]]:
        """The wire's ``resultDetail`` entries for the range, in wire order, each plus ``create_ts``."""
        now = self._clock() if at is None else at
        lo, hi = math.ceil(start_ts), min(math.floor(end_ts), math.floor(now))
        with self._lock:
            _, tasks = self._select(username, kind, lo, hi, now, None, None, None, 0, math.inf)
        return [{**self._detail(task, now), "create_ts": task.create} for task in tasks]

    # -------------------------------------------------------------------------------- CDN queries

    # A slot is generated twice over, cheaply: a summary (counts only, no objects) serves counting
    # queries over whole days; the tasks themselves are built only for the slots a page shows or
    # whose tasks are still changing. Both decode the same draws, so they always agree.

    def _slot_summary(self, username: str, kind: str, slot_no: int) -> _SlotSummary:
        key = (username, kind, self._cdn_generation[(username, kind)], slot_no)
        summary = _lru_get(self._summary_cache, key)
        if summary is not None:
            return summary
        count, settled_at, visible_at = 0, -math.inf, -math.inf
        finals: collections.Counter[str] = collections.Counter()
        for task in self._cdn_manual.get((username, kind), {}).get(slot_no, ()):
            count += 1
            settled_at = max(settled_at, task.finish)
            visible_at = max(visible_at, task.visible)
            finals[task.final] += 1
        slot_start = slot_no * SLOT_SECONDS
        for stream in self._cdn_streams.get((username, kind), ()):
            draws, _ = self._stream_slot_draws(username, kind, stream, slot_no)
            failure_cut = stream.failure_ratio * 2**14
            kept = failed = 0
            for bits in draws:
                create = slot_start + bits % SLOT_SECONDS
                if not stream.contains(create):
                    continue
                kept += 1
                slow, late = stream.extra(bits)
                finish = create + 5 + (bits >> 32) % 116 + 10 + (bits >> 40) % 591 + slow
                settled_at = max(settled_at, finish)
                if late:
                    visible_at = max(visible_at, create + late)
                failed += (bits >> 50) < failure_cut
            count += kept
            finals["failure"] += failed
            finals["success"] += kept - failed
        summary = _SlotSummary(count, settled_at, {k: v for k, v in finals.items() if v}, visible_at) if count else (
            _EMPTY_SUMMARY)
        _lru_put(self._summary_cache, key, summary, SUMMARY_CACHE_SIZE)
        return summary

    def _slot_tasks(self, username: str, kind: str, slot_no: int) -> tuple[_CdnTask, ...]:
        """The slot's tasks in wire order (by createTime as ``order`` says, then url)."""
        key = (username, kind, self._cdn_generation[(username, kind)], slot_no)
        tasks = _lru_get(self._tasks_cache, key)
        if tasks is not None:
            return tasks
        built = list(self._cdn_manual.get((username, kind), {}).get(slot_no, ()))
        for stream in self._cdn_streams.get((username, kind), ()):
            built.extend(self._stream_slot_tasks(username, kind, stream, slot_no))
        built.sort(key=_sort_key if self.order == "desc" else _sort_key_asc)
        tasks = tuple(built)
        _lru_put(self._tasks_cache, key, tasks, TASKS_CACHE_SIZE)
        return tasks

    def _stream_slot_draws(self, username: str, kind: str, stream: _CdnStream,
                           slot_no: int) -> tuple[list[int], list[str]]:
        """One 64-bit draw per task of the slot, and the slot's itemIds (one per 10 tasks).

        Every draw comes from the slot's own RNG in a fixed order, so a slot is the same whenever and
        however often it is generated. Each task's fields are cut from its single draw (randint() per
        field is ten times slower, and a 100k-task day must answer in well under a second).
        """
        if not stream.overlaps(slot_no * SLOT_SECONDS):
            return [], []
        rng = random.Random(_hash_int(self.seed, "cdn", username, kind, stream.index, slot_no))
        n = _poisson(rng, stream.per_hour / 60.0)
        batch_ids = [f"{rng.getrandbits(128):032x}" for _ in range((n + 9) // 10)]
        return [rng.getrandbits(64) for _ in range(n)], batch_ids

    def _stream_slot_tasks(self, username: str, kind: str, stream: _CdnStream,
                           slot_no: int) -> list[_CdnTask]:
        draws, batch_ids = self._stream_slot_draws(username, kind, stream, slot_no)
        slot_start = slot_no * SLOT_SECONDS
        failure_cut = stream.failure_ratio * 2**14
        prefixes = [f"https://{domain}/{kind}/s{stream.index}/{slot_no}/" for domain in _DOMAINS]
        out = []
        for i, bits in enumerate(draws):
            # Bit layout (keep in step with _slot_summary): 0..5 create offset (mod 60), 6..7 domain,
            # 8..31 url tag and failure rate, 32..39 wait, 40..49 run, 50..63 failure draw.
            create = slot_start + bits % SLOT_SECONDS
            if not stream.contains(create):
                continue
            failed = (bits >> 50) < failure_cut
            slow, late = stream.extra(bits)
            out.append(_CdnTask(
                create,
                float(5 + (bits >> 32) % 116),  # wait 5..120 s
                float(10 + (bits >> 40) % 591) + slow,  # run 10..600 s (slow ones: hours more)
                "failure" if failed else "success",
                (bits >> 8) % 100 if failed else 100,
                f"{prefixes[(bits >> 6) & 3]}{i:03d}-{(bits >> 8) & 0xFFFFFF:06x}.jpg",
                batch_ids[i // 10],
                create + late if late else -math.inf,
            ))
        return out

    def _slots_desc(self, username: str, kind: str, lo: int,
                    hi: int) -> Iterator[tuple[int, _SlotSummary, bool]]:
        """(slot number, summary, whether the slot lies wholly in [lo, hi]) of non-empty slots, newest first."""
        if lo > hi:
            return
        for slot_no in range(hi // SLOT_SECONDS, lo // SLOT_SECONDS - 1, -1):
            summary = self._slot_summary(username, kind, slot_no)
            if summary.count:
                start = slot_no * SLOT_SECONDS
                yield slot_no, summary, start >= lo and start + SLOT_SECONDS - 1 <= hi

    def _select(self, username: str, kind: str, lo: int, hi: int, now: float, status: str | None,
                url: str | None, item_id: str | None, offset: int,
                limit: float) -> tuple[int, list[_CdnTask]]:
        """Count the matches and return those in [offset, offset + limit) of the wire order.

        Slots come in wire order, so whole settled slots are counted from their summaries and only
        the slots that overlap the requested page, or are still changing, are built.
        """
        simple = url is None and item_id is None

        def matches(task: _CdnTask) -> bool:
            return (task.visible <= now
                    and (status is None or task.status_at(now) == status)
                    and (url is None or task.url == url)
                    and (item_id is None or task.item_id == item_id))

        count = 0
        page: list[_CdnTask] = []
        end = offset + limit
        slots = self._slots_desc(username, kind, lo, hi)
        if self.order == "asc":
            slots = reversed(list(slots))
        for slot_no, summary, whole in slots:
            matched: list[_CdnTask] | None = None
            whole = whole and summary.visible_at <= now
            if whole and simple and status is None:
                n = summary.count
            elif whole and simple and summary.settled_at <= now:
                n = summary.finals.get(status or "", 0)
            else:
                matched = [t for t in self._slot_tasks(username, kind, slot_no)
                           if lo <= t.create <= hi and matches(t)]
                n = len(matched)
            if n and count < end and count + n > offset:
                if matched is None:  # a whole slot: no range filter needed
                    matched = [t for t in self._slot_tasks(username, kind, slot_no) if matches(t)]
                first = max(0, offset - count)
                last = n if end == math.inf else int(min(n, end - count))
                page.extend(matched[first:last])
            count += n
        return count, page

    def _fmt(self, ts: float) -> str:
        return datetime.fromtimestamp(math.floor(ts), self._tz).strftime(TIME_FORMAT)

    def _parse_time(self, value: object) -> float | None:
        if not isinstance(value, str) or not _TIME_RE.match(value):
            return None
        try:
            return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=self._tz).timestamp()
        except ValueError:
            return None

    def _detail(self, task: _CdnTask, now: float) -> dict[str, Any]:
        status = task.status_at(now)
        finished = status in ("success", "failure")
        return {
            "beginTime": "" if status == "wait" else self._fmt(task.create + task.wait),
            "createTime": self._fmt(task.create),
            "finishTime": self._fmt(task.finish) if finished else "",
            "rate": str(task.rate) if finished else "0",
            "status": status,
            "url": task.url,
        }

    # ----------------------------------------------------------------------------- Fmgr population

    def add_fmgr_task(self, persistent_id: str, ops: list[str], *, created_ts: float | None = None,
                      pending: float = 5.0, processing: float = 20.0, fail_items: Sequence[int] = (),
                      fsize: int = 1048576, notify_url: str | None = None,
                      notify_key: tuple[str, str] | None = None, separate: int = 0,
                      notify_delay: float = 3.0, notify_fails: bool = False) -> None:
        """One task with an item per op; without ``notify_key`` its notification goes out unsigned.

        With ``notify_url`` the task goes 3 -> 4 ``notify_delay`` seconds after processing completed, then
        to 6 once a delivery was answered 200, or to 5 when every attempt failed (``notify_fails``: none
        reaches the URL). Without it the task stays at 3."""
        if notify_delay < 0:
            raise ValueError("notify_delay must be >= 0")
        if not ops:
            raise ValueError("an Fmgr task needs at least one op")
        if any(not 0 <= i < len(ops) for i in fail_items):
            raise ValueError("fail_items must index into ops")
        with self._lock:
            if self._find_fmgr(persistent_id) is not None:
                raise ValueError(f"persistentId {persistent_id!r} already exists")
            created = self._clock() if created_ts is None else created_ts
            task = self._build_fmgr_task(persistent_id, len(self._fmgr_tasks), created, pending,
                                         processing, ops, set(fail_items), [fsize] * len(ops),
                                         notify_url, notify_key, separate, notify_delay, notify_fails)
            self._fmgr_tasks[persistent_id] = task
            if notify_url is not None:
                self._notify_open.add(persistent_id)

    def add_fmgr_stream(self, *, per_minute: float, start_ts: float, ops: Sequence[str] = FMGR_OPS,
                        failure_ratio: float = 0.1, notify_url: str | None = None,
                        notify_key: tuple[str, str] | None = None, id_prefix: str = "sim",
                        notify_failure_ratio: float = 0.0) -> None:
        """Ids ``f"{id_prefix}-{n:08d}"``, one every 60/per_minute s from ``start_ts``, made on demand.

        ``failure_ratio`` of the items fail; with ``notify_url``, ``notify_failure_ratio`` of the tasks
        cannot be notified (every attempt is lost) and end in 5, their items in 5/19."""
        if (per_minute <= 0 or not ops or not 0 <= failure_ratio <= 1
                or not 0 <= notify_failure_ratio <= 1):
            raise ValueError("per_minute must be > 0, ops non-empty, failure ratios within 0..1")
        with self._lock:
            if any(s.prefix == id_prefix for s in self._fmgr_streams):
                raise ValueError(f"an Fmgr stream with prefix {id_prefix!r} exists")
            self._fmgr_streams.append(_FmgrStream(id_prefix, 60.0 / per_minute, start_ts, tuple(ops),
                                                  failure_ratio, notify_url, notify_key, notify_failure_ratio))
            self._stream_cursor[id_prefix] = 0

    def fmgr_ids(self, at: float | None = None) -> list[str]:
        now = self._clock() if at is None else at
        with self._lock:
            found = [(t.created_ts, t.id) for t in self._fmgr_tasks.values() if t.created_ts <= now]
            for stream in self._fmgr_streams:
                found.extend((stream.start_ts + n * stream.interval, f"{stream.prefix}-{n:08d}")
                             for n in range(stream.last_index(now) + 1))
        return [pid for _, pid in sorted(found)]

    def fmgr_status(self, persistent_id: str, at: float | None = None) -> dict[str, Any] | None:
        """The exact JSON body ``GET /fmgr/status`` answers at ``at``; None if the id does not exist."""
        now = self._clock() if at is None else at
        with self._lock:
            task = self._find_fmgr(persistent_id)
            if task is None or task.created_ts > now:
                return None
            return self._render_fmgr(task, self._fmgr_code(task, now))

    def _find_fmgr(self, persistent_id: str) -> _FmgrTask | None:
        task = self._fmgr_tasks.get(persistent_id)
        if task is not None:
            return task
        for stream in self._fmgr_streams:
            prefix = stream.prefix + "-"
            suffix = persistent_id[len(prefix):]
            if persistent_id.startswith(prefix) and suffix.isdigit() and len(suffix) >= 8:
                n = int(suffix)
                if f"{stream.prefix}-{n:08d}" == persistent_id:
                    return self._stream_fmgr_task(stream, n)
        return None

    def _stream_fmgr_task(self, stream: _FmgrStream, n: int) -> _FmgrTask:
        rng = random.Random(_hash_int(self.seed, "fmgr", stream.prefix, n))
        count = rng.randint(1, 3)
        ops = [stream.ops[rng.randrange(len(stream.ops))] for _ in range(count)]
        failed = {i for i in range(count) if rng.random() < stream.failure_ratio}
        pending = float(rng.randint(1, 10))
        processing = float(rng.randint(5, 90))
        sizes = [rng.randint(1024, 100 * 2**20) for _ in range(count)]
        pid = f"{stream.prefix}-{n:08d}"
        # Drawn apart from the rng above, so that adding them changed no earlier task.
        notify_delay = 1.0 + math.floor(_hash_uniform(self.seed, "notify-delay", pid) * 8)
        notify_fails = _hash_uniform(self.seed, "notify-fails", pid) < stream.notify_failure_ratio
        return self._build_fmgr_task(pid, n, stream.start_ts + n * stream.interval,
                                     pending, processing, ops, failed, sizes, stream.notify_url,
                                     stream.notify_key, 0, notify_delay, notify_fails)

    def _build_fmgr_task(self, pid: str, ordinal: int, created: float, pending: float, processing: float,
                         ops: Sequence[str], failed: set[int], sizes: Sequence[int],
                         notify_url: str | None, notify_key: tuple[str, str] | None,
                         separate: int, notify_delay: float = 3.0, notify_fails: bool = False) -> _FmgrTask:
        items = []
        for index, op in enumerate(ops):
            src = f"http://origin.example.com/{pid}/{index}.mp4"
            bucket, key = "sim-bucket", f"{pid}/{index}.mp4"
            digest = hashlib.sha1(f"{self.seed}|{pid}|{index}".encode()).digest()
            if op == "deletePrefix":
                # Seed 000/001: by-prefix deletes have no fsize/hash and, without an output, no key/url.
                cmd = f"deletePrefix/{_b64(bucket)}/prefix/{_b64(pid + '/')}"
                items.append(_FmgrItem(op, cmd, "", "", "", 0, index in failed,
                                       _FMGR_ERRORS[digest[0] % len(_FMGR_ERRORS)]))
                continue
            cmd = f"{op}/{_b64(src)}/bucket/{_b64(bucket)}/key/{_b64(key)}"
            items.append(_FmgrItem(op, cmd, key, f"http://{bucket}.example.com/{key}",
                                   base64.urlsafe_b64encode(b"\x96" + digest).decode("ascii"),
                                   sizes[index], index in failed,
                                   _FMGR_ERRORS[digest[0] % len(_FMGR_ERRORS)]))
        return _FmgrTask(pid, ordinal, created, pending, processing, tuple(items), notify_url,
                         notify_key, separate, notify_delay, notify_fails)

    def _fmgr_code(self, task: _FmgrTask, now: float) -> int:
        if now < task.created_ts + task.pending:
            return 0
        if now < task.completed_at:
            return 1
        if task.notify_url is None or now < task.notify_at:
            return 3
        state = self._notify_state.get(task.id)
        recorded = now - self.notify_record_delay
        if state is not None and state.delivered_at is not None and state.delivered_at <= recorded:
            return 6
        if state is not None and state.failed_at is not None and state.failed_at <= recorded:
            return 5
        return 4

    def _render_fmgr(self, task: _FmgrTask, code: int) -> dict[str, Any]:
        # The seeds disagree on types (000 strings, 001 numbers): vary them per task so clients
        # meet every combination.
        code_as_str = task.ordinal % 2 == 1
        fsize_as_str = (task.ordinal // 2) % 2 == 1
        items = []
        for item in task.items:
            item_code = _item_code(code, item.failed)
            succeeded = item_code in (3, 4, 5, 6)
            failed = item_code in (2, 18, 19, 20)
            fsize: int | str
            if item.op == "deletePrefix":
                fsize = ""
            else:
                fsize = item.fsize if succeeded else 0
                fsize = str(fsize) if fsize_as_str else fsize
            items.append({
                "cmd": item.cmd,
                "code": str(item_code) if code_as_str else item_code,
                "desc": FMGR_ITEM_DESC[item_code],
                "error": item.error if failed else None,
                "hash": item.hash if succeeded else "",
                "fsize": fsize,
                "key": item.key,
                "url": item.url,
            })
        return {
            "id": task.id,
            "code": code,
            "desc": _task_desc(code, task.any_failed),
            "separate": str(task.separate) if code_as_str else task.separate,
            "items": items,
        }

    # ------------------------------------------------------------------------------ notifications

    def configure_notifier(self, *, duplicate_ratio: float = 0.1, forged_ratio: float = 0.02,
                           max_attempts: int = 4) -> None:
        """Set how deliveries misbehave; until called, deliveries are clean (no duplicates/forgeries)."""
        if not 0 <= duplicate_ratio <= 1 or not 0 <= forged_ratio <= 1 or max_attempts < 1:
            raise ValueError("ratios must be within 0..1 and max_attempts >= 1")
        with self._lock:
            self._notify_settings = _NotifySettings(duplicate_ratio, forged_ratio, max_attempts)

    def start_notifier(self, *, interval: float = 0.5, duplicate_ratio: float = 0.1,
                       forged_ratio: float = 0.02, max_attempts: int = 4) -> None:
        self.configure_notifier(duplicate_ratio=duplicate_ratio, forged_ratio=forged_ratio,
                                max_attempts=max_attempts)
        if self._notifier is not None and self._notifier.is_alive():
            return
        self._notifier_stop.clear()
        self._notifier = threading.Thread(target=self._notifier_loop, args=(interval,),
                                          name="vendor-simulator-notifier", daemon=True)
        self._notifier.start()

    def _notifier_loop(self, interval: float) -> None:
        while not self._notifier_stop.wait(interval):
            try:
                self.deliver_due_notifications()
            except Exception:  # keep notifying; a bug here must not end the demo silently
                logger.exception("simulator: notification pass failed")

    def deliver_due_notifications(self) -> int:
        """One delivery pass at the current clock; returns the number of POSTs sent."""
        with self._deliver_lock:
            with self._lock:
                now = self._clock()
                due = self._due_notifications(now)
                settings = self._notify_settings
            return sum(self._deliver(task, settings) for task in due)

    def _due_notifications(self, now: float) -> list[_FmgrTask]:
        due = []
        for pid in sorted(self._notify_open):
            task = self._fmgr_tasks[pid]
            if self._is_due(task, now):
                due.append(task)
        for stream in self._fmgr_streams:
            if stream.notify_url is None:
                continue
            cursor = self._stream_cursor[stream.prefix]
            for n in range(cursor, stream.last_index(now) + 1):
                task = self._stream_fmgr_task(stream, n)
                if self._is_due(task, now):
                    due.append(task)
            # Everything below the cursor is final; skip it next time.
            while cursor <= stream.last_index(now):
                state = self._notify_state.get(f"{stream.prefix}-{cursor:08d}")
                if state is None or not state.final:
                    break
                cursor += 1
            self._stream_cursor[stream.prefix] = cursor
        return due

    def _is_due(self, task: _FmgrTask, now: float) -> bool:
        if task.notify_at > now:
            return False
        state = self._notify_state.setdefault(task.id, _NotifyState())
        return not state.final and state.next_at <= now

    def _deliver(self, task: _FmgrTask, settings: _NotifySettings) -> int:
        assert task.notify_url is not None
        url = task.notify_url
        # In a notification the top-level code is the notification status: 3 = one-time, delivered.
        payload = self._render_fmgr(task, 3)
        body = base64.urlsafe_b64encode(_compact_json(payload))
        headers = {"Content-Type": "text/plain; charset=UTF-8"}
        if task.notify_key is not None:
            access_key, secret_key = task.notify_key
            headers["Authorization"] = signing.fmgr_notify_authorization(access_key, secret_key, url, body)
        with self._lock:
            attempt = self._notify_state[task.id].attempts + 1
        sent = 0
        if task.notify_key is not None and not task.notify_fails and _hash_uniform(
                self.seed, "forged", task.id, attempt) < (
                settings.forged_ratio):
            access_key, secret_key = task.notify_key
            forged = {**headers, "Authorization": signing.fmgr_notify_authorization(
                access_key, secret_key + "-forged", url, body)}
            self._post_notification(task.id, attempt, url, body, forged, forged=True, duplicate=False)
            sent += 1
        if task.notify_fails:
            # The notifyURL cannot be reached from the vendor: the attempt never arrives.
            status = None
            with self._lock:
                self.notify_log.append({"id": task.id, "attempt": attempt, "status_code": None, "forged": False,
                                        "duplicate": False, "ts": self._clock(), "lost": True})
        else:
            status = self._post_notification(task.id, attempt, url, body, headers, forged=False,
                                             duplicate=False)
            sent += 1
        with self._lock:
            state = self._notify_state[task.id]
            state.attempts = attempt
            now = self._clock()
            if status == 200:
                state.delivered_at = now
            elif attempt >= settings.max_attempts:
                state.failed_at = now
                logger.info("simulator: notification of %s failed after %d attempts", task.id, attempt)
            else:
                state.next_at = now + 0.5 * attempt
            if state.final:
                self._notify_open.discard(task.id)
        if status == 200 and _hash_uniform(self.seed, "duplicate", task.id, attempt) < (
                settings.duplicate_ratio):
            # The vendor's retry logic sometimes repeats a delivered notification byte for byte.
            self._post_notification(task.id, attempt, url, body, headers, forged=False, duplicate=True)
            sent += 1
        return sent

    def _post_notification(self, pid: str, attempt: int, url: str, body: bytes, headers: dict[str, str],
                           *, forged: bool, duplicate: bool) -> int | None:
        status: int | None
        try:
            response = requests_lib.post(url, data=body, headers=headers, timeout=self.notify_timeout)
            status = response.status_code
            response.close()
        except requests_lib.RequestException as exc:
            # Recorded in notify_log (status_code None); the give-up is logged at info.
            logger.debug("simulator: notification of %s to %s failed: %s", pid, url, exc)
            status = None
        with self._lock:
            self.notify_log.append({"id": pid, "attempt": attempt, "status_code": status,
                                    "forged": forged, "duplicate": duplicate, "ts": self._clock(), "lost": False})
        return status

    # ----------------------------------------------------------------------- faults and observation

    def inject(self, api: str, fault: str, count: int = 1) -> None:
        """The next ``count`` requests to ``api`` get ``fault`` before anything else is checked."""
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, not {api!r}")
        if fault not in FAULTS and not fault.startswith(CODE0_FAULT_PREFIX):
            raise ValueError(f"fault must be one of {FAULTS} or 'code0:<message>', not {fault!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._faults[api].extend([fault] * count)

    def reset_counters(self) -> None:
        """Forget what was observed (requests, logs, violations); tasks, faults and windows stay."""
        with self._lock:
            self.requests.clear()
            self.request_log.clear()
            self.rate_limit_violations = 0
            self.notify_log.clear()

    # -------------------------------------------------------------------------------------- serving

    def _handle(self, method: str, target: str, headers: _Headers, body: bytes) -> _Response:
        try:
            return self._dispatch(method, target, headers, body)
        except Exception:
            logger.exception("simulator: failed to answer %s %s", method, target)
            return _Response(500, b"simulator error", {"Content-Type": "text/plain"}, "error")

    def _dispatch(self, method: str, target: str, headers: _Headers, body: bytes) -> _Response:
        parts = urlsplit(target)
        api = CDN_PATHS.get(parts.path) or ("fmgr" if parts.path == FMGR_PATH else None)
        if api is None:
            return _json_response(404, {"code": 404, "message": "not found"}, "unknown_path")
        user = None if api == "fmgr" else self._claimed_user(headers)
        with self._lock:
            arrived = self._clock()
            self.requests[(api, user)] += 1
            fault = self._faults[api].popleft() if self._faults[api] else None
            self._request_seq += 1
            request_id = self._request_seq
        if fault == "timeout":
            time.sleep(self.timeout_fault_seconds)  # no lock held: other requests keep flowing
        if fault is not None and fault != "timeout":
            response = self._fault_response(api, fault)
        elif api == "fmgr":
            response = self._fmgr_response(method, parts.query)
        else:
            response = self._cdn_response(api, method, parts.path, parts.query, headers, body)
        if api != "fmgr":
            response.headers.setdefault("x-cnc-request-id", f"sim-{self.seed}-{request_id}")
        with self._lock:
            self.request_log.append({"ts": arrived, "api": api, "user": user,
                                     "body": _loggable_body(api, parts.query, body),
                                     "result": response.result, "fault": fault})
        return response

    def _claimed_user(self, headers: _Headers) -> str | None:
        """Who the request says it is, unverified (for counting, also of refused requests)."""
        access_key = headers.get("x-cnc-accessKey")
        if access_key is not None:
            with self._lock:
                account = self._by_access_key.get(access_key)
            return account.username if account is not None else None
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            return base64.b64decode(token, validate=True).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return None

    def _fault_response(self, api: str, fault: str) -> _Response:
        result = f"fault:{fault}"
        cdn = api != "fmgr"
        if fault == "http500":
            return _Response(500, b"Internal Server Error", {"Content-Type": "text/plain"}, result)
        if fault == "http503":
            return _Response(503, b"Service Unavailable", {"Content-Type": "text/plain", "Retry-After": "2"},
                             result)
        if fault == "http429":
            if cdn:
                return _cdn_error(MSG_RATE_LIMITED, result, 429, {"Retry-After": "1"})
            return _json_response(429, {"code": 429, "message": MSG_RATE_LIMITED}, result,
                                  headers={"Retry-After": "1"})
        if fault == "malformed":
            body = MALFORMED_CDN_BODY if cdn else MALFORMED_FMGR_BODY
            return _Response(200, body, {"Content-Type": CDN_CONTENT_TYPE if cdn else JSON_CONTENT_TYPE},
                             result)
        if fault == "wrong_types":
            if cdn:
                payload: dict[str, Any] = {"count": 1, "Code": 1, "message": "success", "pageNo": 1,
                                           "pageSize": 20, "resultDetail": "unavailable"}
                return _json_response(200, payload, result, CDN_CONTENT_TYPE)
            payload = {"id": "x", "code": 3, "desc": "fileOperateSucceed", "separate": 0,
                       "items": "unavailable"}
            return _json_response(200, payload, result)
        if fault == "empty_page" and cdn:
            # A glitch seen from paged APIs: success, a large count, and no rows.
            payload = {"count": 10**6, "Code": 1, "message": "success", "pageNo": 1, "pageSize": 20,
                       "resultDetail": []}
            return _json_response(200, payload, result, CDN_CONTENT_TYPE)
        message = fault[len(CODE0_FAULT_PREFIX):]
        if cdn:
            return _cdn_error(message, result)
        return _json_response(200, {"code": 0, "message": message}, result)

    def _check_rate(self, api: str, user: str | None, now: float) -> _Response | None:
        """Sliding window per (api, user); refused requests do not take a slot."""
        limit = self.rate_limits.get(api)
        if not limit:
            return None
        allowed, per = limit
        with self._lock:
            window = self._rate_windows[(api, user)]
            while window and window[0] <= now - per:
                window.popleft()
            if len(window) >= allowed:
                self.rate_limit_violations += 1
                retry_after = max(1, math.ceil(window[0] + per - now)) if window else max(1, math.ceil(per))
                headers = {"Retry-After": str(retry_after)}
                if api == "fmgr":
                    return _json_response(429, {"code": 429, "message": MSG_RATE_LIMITED}, "rate_limited",
                                          headers=headers)
                return _cdn_error(MSG_RATE_LIMITED, "rate_limited", 429, headers)
            window.append(now)
        return None

    # ---- Fmgr

    def _fmgr_response(self, method: str, query: str) -> _Response:
        if method != "GET":
            return _json_response(405, {"code": 405, "message": "method not allowed"}, "bad_request")
        limited = self._check_rate("fmgr", None, self._clock())
        if limited is not None:
            return limited
        values = parse_qs(query, keep_blank_values=True).get("persistentId") or [""]
        persistent_id = values[0]
        if not persistent_id:
            return _json_response(400, {"code": 400, "message": "persistentId is required"}, "bad_request")
        status = self.fmgr_status(persistent_id)
        if status is None:
            return _json_response(404, {"code": "404", "message": "persistentId not found"}, "not_found")
        return _json_response(200, status, "ok")

    # ---- CDN

    def _cdn_response(self, api: str, method: str, path: str, query: str, headers: _Headers,
                      body: bytes) -> _Response:
        if method != "POST":
            return _cdn_error("method not allowed", "bad_request", 405)
        now = self._clock()
        if headers.get("x-cnc-accessKey") is not None:
            user, refusal = self._auth_aksk(method, path, query, headers, body, now)
        else:
            user, refusal = self._auth_basic(headers, now)
        if refusal is not None:
            return refusal
        limited = self._check_rate(api, user, now)
        if limited is not None:
            return limited
        return self._cdn_query(api, user, body, now)

    def _auth_basic(self, headers: _Headers, now: float) -> tuple[str | None, _Response | None]:
        scheme, _, token = (headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic" or not token:
            return None, _auth_failed()
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None, _auth_failed()
        username, sep, password = decoded.partition(":")
        if not sep:
            return None, _auth_failed()
        with self._lock:
            account = self._accounts.get(username)
        if account is None:
            return None, _cdn_error(MSG_USERNAME_INVALID, "auth")
        date = headers.get("Date") or ""
        if account.api_key is None or not self._date_fresh(date, now):
            return None, _auth_failed()
        if not signing.constant_time_equals(password, signing.basic_password(account.api_key, date)):
            return None, _auth_failed()
        return username, None

    def _date_fresh(self, date: str, now: float) -> bool:
        try:
            parsed = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return False
        if parsed.tzinfo is None:
            return False
        return abs(parsed.timestamp() - now) <= self.date_skew

    def _auth_aksk(self, method: str, path: str, query: str, headers: _Headers, body: bytes,
                   now: float) -> tuple[str | None, _Response | None]:
        access_key = headers.get("x-cnc-accessKey") or ""
        timestamp = headers.get("x-cnc-timestamp") or ""
        fields = signing.parse_aksk_authorization(headers.get("Authorization") or "")
        with self._lock:
            account = self._by_access_key.get(access_key)
        if (fields is None or account is None or account.secret_key is None
                or fields["Credential"] != access_key
                or fields["SignedHeaders"].lower() != signing.AKSK_SIGNED_HEADERS):
            return None, _auth_failed()
        try:
            stamp = int(timestamp)
        except ValueError:
            return None, _auth_failed()
        if abs(stamp - now) > AKSK_TIMESTAMP_SKEW:
            return None, _auth_failed()
        expected = signing.aksk_signature(
            account.secret_key, method=method, path=path, query=query, host=headers.get("Host") or "",
            content_type=headers.get("Content-Type") or "", body=body, timestamp=timestamp)
        if not signing.constant_time_equals(fields["Signature"], expected):
            return None, _auth_failed()
        return account.username, None

    def _cdn_query(self, kind: str, user: str | None, body: bytes, now: float) -> _Response:
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return _cdn_error(MSG_PARSE_JSON)
        if not isinstance(request, dict):
            return _cdn_error(MSG_PARSE_JSON)
        start_raw, end_raw = request.get("startTime"), request.get("endTime")
        if start_raw in (None, "") or end_raw in (None, ""):
            return _cdn_error(MSG_TIME_EMPTY)
        start, end = self._parse_time(start_raw), self._parse_time(end_raw)
        if start is None or end is None:
            return _cdn_error(MSG_TIME_ERROR)
        if end < start:
            return _cdn_error(MSG_END_BEFORE_START)
        if end - start > MAX_QUERY_SPAN:
            return _cdn_error(MSG_TIME_ERROR)
        if start < now - self.max_query_age:
            return _cdn_error(MSG_TOO_OLD)
        page_size = _parse_count(request.get("pageSize"), 20)
        if page_size is None or not 1 <= page_size <= self.max_page_size:
            return _cdn_error(MSG_PAGE_SIZE)
        if self.silent_page_cap is not None:
            page_size = min(page_size, self.silent_page_cap)
        page_no = _parse_count(request.get("pageNo"), 1)
        if page_no is None or page_no < 1:
            return _cdn_error(MSG_PAGE_NO)
        status = request.get("status") or None
        if status is not None and status not in QUERY_STATUSES:
            return _cdn_error(MSG_STATUS)
        url = request.get("url") or None
        item_id = request.get("itemId") or None
        if not all(v is None or isinstance(v, str) for v in (url, item_id)):
            return _cdn_error(MSG_PARSE_JSON)

        assert user is not None
        lo, hi = math.ceil(start), min(math.floor(end), math.floor(now))
        with self._lock:
            count, tasks = self._select(user, kind, lo, hi, now, status, url, item_id,
                                        (page_no - 1) * page_size, page_size)
        for task in tasks:
            self.cdn_served[(user, kind, task.url, task.create)] = now
        numbers: list[int | str] = [count, page_no, page_size]
        if self.string_numbers:
            numbers = [str(n) for n in numbers]
        payload = {
            "count": numbers[0],
            "Code": 1,
            "message": "success",
            "pageNo": numbers[1],
            "pageSize": numbers[2],
            "resultDetail": [self._detail(task, now) for task in tasks],
        }
        return _json_response(200, payload, "ok", CDN_CONTENT_TYPE)


def _check_kind(kind: str) -> None:
    if kind not in TASK_KINDS:
        raise ValueError(f"kind must be one of {TASK_KINDS}, not {kind!r}")


def _loggable_body(api: str, query: str, body: bytes) -> Any:
    if api == "fmgr":
        return {k: v[0] if len(v) == 1 else v for k, v in parse_qs(query, keep_blank_values=True).items()}
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", errors="replace")
