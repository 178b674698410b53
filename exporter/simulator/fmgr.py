"""The Fmgr side: the task model (seeds 000/001), lazy id streams, the status codes and ``GET /fmgr/status``.

A task's code runs 0 (waiting), 1 (processing), 3 (done); with a notify URL it then goes to 4 (notifying)
and, once the vendor has recorded the outcome of its deliveries, to 6 (delivered) or 5 (given up). The
deliveries themselves are the notifier's; this model keeps what each task's notification has come to.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from exporter.simulator.draws import hash_int, hash_uniform
from exporter.simulator.settings import Settings
from exporter.simulator.wire import Response, json_response

FMGR_OPS = ("fetch", "copy", "move", "delete", "compress", "deletePrefix")
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
_FMGR_ERRORS = ("source file not found", "source timeout", "bucket quota exceeded")


def _item_code(task_code: int, failed: bool) -> int:
    """An item's code follows its task's: 0/1 while running, then its own outcome per notify state."""
    if task_code in _FINISHED_ITEM_CODES:
        return _FINISHED_ITEM_CODES[task_code][1 if failed else 0]
    return task_code


def _task_desc(task_code: int, any_failed: bool) -> str:
    if task_code == 3:
        return "fileOperateFailed" if any_failed else "fileOperateSucceed"
    return FMGR_TASK_DESC[task_code]


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode("ascii")


# ------------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class FmgrItem:
    op: str
    cmd: str
    key: str
    url: str
    hash: str
    fsize: int
    failed: bool
    error: str


@dataclass(frozen=True)
class FmgrTask:
    id: str
    ordinal: int  # picks the int/string shape variant, like the seeds disagree
    created_ts: float
    pending: float
    processing: float
    items: tuple[FmgrItem, ...]
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
class FmgrStream:
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
class NotifyState:
    """One task's notification: attempts so far, when the next is due, and how it ended."""

    attempts: int = 0
    next_at: float = -math.inf
    delivered_at: float | None = None
    failed_at: float | None = None

    @property
    def final(self) -> bool:
        return self.delivered_at is not None or self.failed_at is not None


class FmgrModel:
    """Every Fmgr task, given one by one or made on demand by a stream, and its notification's state."""

    def __init__(self, settings: Settings, clock: Callable[[], float], lock: threading.RLock) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = lock
        self._tasks: dict[str, FmgrTask] = {}
        self._streams: list[FmgrStream] = []
        self._notify_state: dict[str, NotifyState] = {}
        self._notify_open: set[str] = set()  # given tasks whose notification is not final yet
        self._stream_cursor: dict[str, int] = {}  # per stream: every lower index is final

    # ------------------------------------------------------------------------------------ population

    def add_task(self, persistent_id: str, ops: list[str], *, created_ts: float | None, pending: float,
                 processing: float, fail_items: Sequence[int], fsize: int, notify_url: str | None,
                 notify_key: tuple[str, str] | None, separate: int, notify_delay: float,
                 notify_fails: bool) -> None:
        if notify_delay < 0:
            raise ValueError("notify_delay must be >= 0")
        if not ops:
            raise ValueError("an Fmgr task needs at least one op")
        if any(not 0 <= i < len(ops) for i in fail_items):
            raise ValueError("fail_items must index into ops")
        with self._lock:
            if self._find(persistent_id) is not None:
                raise ValueError(f"persistentId {persistent_id!r} already exists")
            created = self._clock() if created_ts is None else created_ts
            task = self._build_task(persistent_id, len(self._tasks), created, pending, processing, ops,
                                    set(fail_items), [fsize] * len(ops), notify_url, notify_key, separate,
                                    notify_delay, notify_fails)
            self._tasks[persistent_id] = task
            if notify_url is not None:
                self._notify_open.add(persistent_id)

    def add_stream(self, *, per_minute: float, start_ts: float, ops: Sequence[str], failure_ratio: float,
                   notify_url: str | None, notify_key: tuple[str, str] | None, id_prefix: str,
                   notify_failure_ratio: float) -> None:
        if (per_minute <= 0 or not ops or not 0 <= failure_ratio <= 1
                or not 0 <= notify_failure_ratio <= 1):
            raise ValueError("per_minute must be > 0, ops non-empty, failure ratios within 0..1")
        with self._lock:
            if any(s.prefix == id_prefix for s in self._streams):
                raise ValueError(f"an Fmgr stream with prefix {id_prefix!r} exists")
            self._streams.append(FmgrStream(id_prefix, 60.0 / per_minute, start_ts, tuple(ops),
                                            failure_ratio, notify_url, notify_key, notify_failure_ratio))
            self._stream_cursor[id_prefix] = 0

    def ids(self, at: float | None) -> list[str]:
        now = self._clock() if at is None else at
        with self._lock:
            found = [(t.created_ts, t.id) for t in self._tasks.values() if t.created_ts <= now]
            for stream in self._streams:
                found.extend((stream.start_ts + n * stream.interval, f"{stream.prefix}-{n:08d}")
                             for n in range(stream.last_index(now) + 1))
        return [pid for _, pid in sorted(found)]

    def status(self, persistent_id: str, at: float | None) -> dict[str, Any] | None:
        now = self._clock() if at is None else at
        with self._lock:
            task = self._find(persistent_id)
            if task is None or task.created_ts > now:
                return None
            return self.render(task, self._code(task, now))

    def changes(self, persistent_id: str, until: float | None) -> list[tuple[float, int]]:
        """When the task's code changed, as ``(ts, code)`` from its creation up to ``until`` (default: now).

        Its items change with it (their codes follow the task's), so this also dates every item change. The
        end of the notification phase is known once it has happened: a delivery or a give-up is recorded as
        6 or 5 ``notify_record_delay`` seconds later."""
        now = self._clock() if until is None else until
        with self._lock:
            task = self._find(persistent_id)
            if task is None:
                return []
            steps: list[tuple[float, int]] = [(task.created_ts, 0), (task.created_ts + task.pending, 1),
                                              (task.completed_at, 3)]
            if task.notify_url is not None:
                steps.append((task.notify_at, 4))
                state = self._notify_state.get(task.id)
                record = self._settings.notify_record_delay
                if state is not None and state.delivered_at is not None:
                    steps.append((max(task.notify_at, state.delivered_at + record), 6))
                elif state is not None and state.failed_at is not None:
                    steps.append((max(task.notify_at, state.failed_at + record), 5))
        out: list[tuple[float, int]] = []
        for ts, code in steps:
            if ts > now:
                break
            if out and out[-1][0] >= ts:
                out.pop()  # a phase of no length is never seen
            out.append((ts, code))
        return out

    def respond(self, query: str) -> Response:
        """The answer to ``GET /fmgr/status?<query>`` once method and rate limit have passed."""
        values = parse_qs(query, keep_blank_values=True).get("persistentId") or [""]
        persistent_id = values[0]
        if not persistent_id:
            return json_response(400, {"code": 400, "message": "persistentId is required"}, "bad_request")
        status = self.status(persistent_id, None)
        if status is None:
            return json_response(404, {"code": "404", "message": "persistentId not found"}, "not_found")
        return json_response(200, status, "ok")

    # -------------------------------------------------------------------------------------- tasks

    def _find(self, persistent_id: str) -> FmgrTask | None:
        task = self._tasks.get(persistent_id)
        if task is not None:
            return task
        for stream in self._streams:
            prefix = stream.prefix + "-"
            suffix = persistent_id[len(prefix):]
            if persistent_id.startswith(prefix) and suffix.isdigit() and len(suffix) >= 8:
                n = int(suffix)
                if f"{stream.prefix}-{n:08d}" == persistent_id:
                    return self._stream_task(stream, n)
        return None

    def _stream_task(self, stream: FmgrStream, n: int) -> FmgrTask:
        seed = self._settings.seed
        rng = random.Random(hash_int(seed, "fmgr", stream.prefix, n))
        count = rng.randint(1, 3)
        ops = [stream.ops[rng.randrange(len(stream.ops))] for _ in range(count)]
        failed = {i for i in range(count) if rng.random() < stream.failure_ratio}
        pending = float(rng.randint(1, 10))
        processing = float(rng.randint(5, 90))
        sizes = [rng.randint(1024, 100 * 2**20) for _ in range(count)]
        pid = f"{stream.prefix}-{n:08d}"
        # Drawn apart from the rng above, so that adding them changed no earlier task.
        notify_delay = 1.0 + math.floor(hash_uniform(seed, "notify-delay", pid) * 8)
        notify_fails = hash_uniform(seed, "notify-fails", pid) < stream.notify_failure_ratio
        return self._build_task(pid, n, stream.start_ts + n * stream.interval,
                                pending, processing, ops, failed, sizes, stream.notify_url,
                                stream.notify_key, 0, notify_delay, notify_fails)

    def _build_task(self, pid: str, ordinal: int, created: float, pending: float, processing: float,
                    ops: Sequence[str], failed: set[int], sizes: Sequence[int],
                    notify_url: str | None, notify_key: tuple[str, str] | None,
                    separate: int, notify_delay: float = 3.0, notify_fails: bool = False) -> FmgrTask:
        items = []
        for index, op in enumerate(ops):
            src = f"http://origin.example.com/{pid}/{index}.mp4"
            bucket, key = "sim-bucket", f"{pid}/{index}.mp4"
            digest = hashlib.sha1(f"{self._settings.seed}|{pid}|{index}".encode()).digest()
            if op == "deletePrefix":
                # Seed 000/001: by-prefix deletes have no fsize/hash and, without an output, no key/url.
                cmd = f"deletePrefix/{_b64(bucket)}/prefix/{_b64(pid + '/')}"
                items.append(FmgrItem(op, cmd, "", "", "", 0, index in failed,
                                      _FMGR_ERRORS[digest[0] % len(_FMGR_ERRORS)]))
                continue
            cmd = f"{op}/{_b64(src)}/bucket/{_b64(bucket)}/key/{_b64(key)}"
            items.append(FmgrItem(op, cmd, key, f"http://{bucket}.example.com/{key}",
                                  base64.urlsafe_b64encode(b"\x96" + digest).decode("ascii"),
                                  sizes[index], index in failed,
                                  _FMGR_ERRORS[digest[0] % len(_FMGR_ERRORS)]))
        return FmgrTask(pid, ordinal, created, pending, processing, tuple(items), notify_url,
                        notify_key, separate, notify_delay, notify_fails)

    def _code(self, task: FmgrTask, now: float) -> int:
        if now < task.created_ts + task.pending:
            return 0
        if now < task.completed_at:
            return 1
        if task.notify_url is None or now < task.notify_at:
            return 3
        state = self._notify_state.get(task.id)
        recorded = now - self._settings.notify_record_delay
        if state is not None and state.delivered_at is not None and state.delivered_at <= recorded:
            return 6
        if state is not None and state.failed_at is not None and state.failed_at <= recorded:
            return 5
        return 4

    def render(self, task: FmgrTask, code: int) -> dict[str, Any]:
        """The status JSON of ``task`` at ``code`` (also the body of its notification)."""
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

    def due_notifications(self, now: float) -> list[FmgrTask]:
        """The tasks whose next delivery attempt is due at ``now`` (the caller holds the lock)."""
        due = []
        for pid in sorted(self._notify_open):
            task = self._tasks[pid]
            if self._is_due(task, now):
                due.append(task)
        for stream in self._streams:
            if stream.notify_url is None:
                continue
            cursor = self._stream_cursor[stream.prefix]
            for n in range(cursor, stream.last_index(now) + 1):
                task = self._stream_task(stream, n)
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

    def _is_due(self, task: FmgrTask, now: float) -> bool:
        if task.notify_at > now:
            return False
        state = self._notify_state.setdefault(task.id, NotifyState())
        return not state.final and state.next_at <= now

    def notification(self, persistent_id: str) -> NotifyState:
        """The state of a notification that has been due (the caller holds the lock and updates it)."""
        return self._notify_state[persistent_id]

    def notification_settled(self, persistent_id: str) -> None:
        """The notification is final: no more passes look at it."""
        self._notify_open.discard(persistent_id)
