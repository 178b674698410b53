"""The CDN side: the task model, lazy streams, slot summaries and the ItemIdQuery answer (seed 002).

High-volume streams are generated lazily, one minute slot at a time, by seeding a private RNG from a hash of
the slot; nothing is stored up front and ``CdnModel.truth`` sees exactly what the wire serves.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import random
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, TypeVar

from exporter.simulator.draws import hash_int, mix64, poisson
from exporter.simulator.settings import Settings
from exporter.simulator.wire import (
    CDN_CONTENT_TYPE,
    MSG_END_BEFORE_START,
    MSG_PAGE_NO,
    MSG_PAGE_SIZE,
    MSG_PARSE_JSON,
    MSG_STATUS,
    MSG_TIME_EMPTY,
    MSG_TIME_ERROR,
    MSG_TOO_OLD,
    Response,
    cdn_error,
    json_response,
)

_K = TypeVar("_K")
_V = TypeVar("_V")

TASK_KINDS = ("prefetch", "purge")
QUERY_STATUSES = ("init", "wait", "run", "success", "failure")
TASK_STATUSES = ("wait", "run", "success", "failure")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MAX_QUERY_SPAN = 86400.0
SLOT_SECONDS = 60
# Summaries are small: two weeks of minutes. Built tasks are not: about a day at 100k tasks/day.
SUMMARY_CACHE_SIZE = 20000
TASKS_CACHE_SIZE = 1500

_DOMAINS = ("static.example.com", "img.example.com", "video.example.com", "dl.example.com")
_TZ_RE = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
_INT_RE = re.compile(r"^[+-]?\d+$")


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


def _check_kind(kind: str) -> None:
    if kind not in TASK_KINDS:
        raise ValueError(f"kind must be one of {TASK_KINDS}, not {kind!r}")


def _lru_get(cache: collections.OrderedDict[_K, _V], key: _K) -> _V | None:
    value = cache.get(key)
    if value is not None:
        cache.move_to_end(key)
    return value


def _lru_put(cache: collections.OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    cache[key] = value
    if len(cache) > size:
        cache.popitem(last=False)


# ------------------------------------------------------------------------------------------------- model


class CdnTask(NamedTuple):
    create: int  # whole epoch seconds
    wait: float
    run: float
    final: str  # "success" | "failure"
    rate: int
    url: str
    item_id: str
    visible: float = -math.inf  # the API serves the task from this time on (some appear late)
    size: int = 0  # bytes a prefetch fetches (what the volume quota counts)
    target: str = "urls"  # what a purge names: urls, directories, regexes or tags (what its quota counts)

    @property
    def finish(self) -> float:
        return self.create + self.wait + self.run

    def status_at(self, now: float) -> str:
        if now < self.create + self.wait:
            return "wait"
        if now < self.finish:
            return "run"
        return self.final


def _sort_key(task: CdnTask) -> tuple[int, str]:
    return (-task.create, task.url)


def _sort_key_asc(task: CdnTask) -> tuple[int, str]:
    return (task.create, task.url)


@dataclass(frozen=True)
class SlotSummary:
    """What a (user, kind, minute) slot holds, without building its tasks: enough to count."""

    count: int
    settled_at: float  # from this time on every task of the slot is in its final state
    finals: Mapping[str, int]  # final status -> tasks
    visible_at: float = -math.inf  # from this time on every task of the slot is served
    usage: Mapping[str, int] = field(default_factory=dict)  # quota unit -> what the slot's tasks took of it


_EMPTY_SUMMARY = SlotSummary(0, -math.inf, {})
TARGETS = ("urls", "directories", "regexes", "tags")
MAX_PREFETCH_SIZE = 20 * 2**20  # prefetched files are 0..20 MiB, 10 MiB on average


def task_usage(kind: str, task: CdnTask) -> dict[str, int]:
    """What submitting ``task`` took of its account's daily quota of ``kind``: a prefetch one URL and its size in
    bytes, a purge one of its target."""
    if kind == "prefetch":
        return {"urls": 1, "bytes": task.size}
    return {task.target: 1}


def _draw_extras(kind: str, bits: int) -> tuple[int, str]:
    """(size, target) of the stream task drawn as ``bits``: from bits of their own (mix64 of the draw, salted),
    so that the draws everything else is cut from stay as they were. About 10% of purges name a directory,
    1% a regex and 0.4% a tag."""
    m = mix64(bits ^ 0x5DEECE66D)
    size = 1024 + (m & 0xFFFFFF) * MAX_PREFETCH_SIZE // 0x1000000 if kind == "prefetch" else 0
    pick = (m >> 32) & 0xFF
    target = "urls" if kind == "prefetch" or pick >= 29 else (
        "directories" if pick < 26 else "regexes" if pick < 28 else "tags")
    return size, target


@dataclass(frozen=True)
class CdnStream:
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
        m = mix64(bits)
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


class CdnModel:
    """Every account's prefetch and purge tasks, what the API served of them, and its query answer."""

    def __init__(self, settings: Settings, tz: timezone, clock: Callable[[], float], lock: threading.RLock) -> None:
        self._settings = settings
        self._tz = tz
        self._clock = clock
        self._lock = lock
        self._manual: dict[tuple[str, str], dict[int, list[CdnTask]]] = {}
        self._streams: dict[tuple[str, str], list[CdnStream]] = {}
        self._generation: collections.Counter[tuple[str, str]] = collections.Counter()
        self._summary_cache: collections.OrderedDict[tuple[str, str, int, int], SlotSummary] = (
            collections.OrderedDict())
        self._tasks_cache: collections.OrderedDict[tuple[str, str, int, int], tuple[CdnTask, ...]] = (
            collections.OrderedDict())
        # (user, kind, url, create) -> when the API last served the task: what a client could know.
        self.served: dict[tuple[str, str, str, int], float] = {}

    # ------------------------------------------------------------------------------------ population

    def add_task(self, username: str, kind: str, url: str, create_ts: float, *, wait: float, run: float,
                 final: str, rate: int | None, item_id: str | None, visible_after: float, size: int | None = None,
                 target: str = "urls") -> None:
        _check_kind(kind)
        if target not in TARGETS or (kind == "prefetch" and target != "urls"):
            raise ValueError(f"target must be one of {TARGETS} (urls for a prefetch), not {target!r}")
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
            item_id = hashlib.blake2b(f"{self._settings.seed}|{username}|{kind}|{url}|{create}".encode(),
                                      digest_size=16).hexdigest()
        if size is None:  # a size of its own, the same whenever the task is made
            size = hash_int(self._settings.seed, "size", username, kind, url, create) % MAX_PREFETCH_SIZE
        task = CdnTask(create, float(wait), float(run), final, int(rate), url, item_id,
                       create + float(visible_after) if visible_after > 0 else -math.inf,
                       size if kind == "prefetch" else 0, target)
        with self._lock:
            slots = self._manual.setdefault((username, kind), {})
            slots.setdefault(create // SLOT_SECONDS, []).append(task)
            self._generation[(username, kind)] += 1

    def add_stream(self, username: str, kind: str, *, per_hour: float, failure_ratio: float, start_ts: float,
                   end_ts: float | None, slow_ratio: float, slow_range: tuple[float, float], late_ratio: float,
                   late_max: float) -> None:
        _check_kind(kind)
        if per_hour < 0 or not 0 <= failure_ratio <= 1 or not 0 <= slow_ratio <= 1 or not 0 <= late_ratio <= 1:
            raise ValueError("per_hour must be >= 0 and failure_ratio, slow_ratio, late_ratio within 0..1")
        with self._lock:
            streams = self._streams.setdefault((username, kind), [])
            streams.append(CdnStream(len(streams), per_hour, failure_ratio, start_ts, end_ts, slow_ratio,
                                     slow_range, late_ratio, late_max))
            self._generation[(username, kind)] += 1

    # --------------------------------------------------------------------------------------- truth

    def truth(self, username: str, kind: str, start_ts: float, end_ts: float, at: float | None,
              served: bool) -> dict[str, int]:
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

    def usage(self, username: str, kind: str, start_ts: float, end_ts: float) -> dict[str, int]:
        """What the tasks submitted (created) in [start_ts, end_ts] took of the quota of ``kind``, by unit: served
        or not yet (a task the API shows late was submitted all the same)."""
        used: collections.Counter[str] = collections.Counter()
        lo, hi = math.ceil(start_ts), math.floor(end_ts)
        with self._lock:
            for slot_no, summary, whole in self._slots_desc(username, kind, lo, hi):
                if whole:
                    used.update(summary.usage)
                    continue
                for task in self._slot_tasks(username, kind, slot_no):
                    if lo <= task.create <= hi:
                        used.update(task_usage(kind, task))
        return dict(used)

    def late_count(self, username: str, kind: str, start_ts: float, end_ts: float) -> int:
        lo, hi = math.ceil(start_ts), math.floor(end_ts)
        with self._lock:
            return sum(1 for slot_no, summary, _ in self._slots_desc(username, kind, lo, hi)
                       if summary.visible_at > -math.inf
                       for t in self._slot_tasks(username, kind, slot_no)
                       if lo <= t.create <= hi and t.visible > t.create)

    def known_truth(self, username: str, kind: str, start_ts: float, end_ts: float) -> dict[str, int]:
        now = self._clock()
        counts = dict.fromkeys(TASK_STATUSES, 0)
        succeeded_since = 0
        lo, hi = math.ceil(start_ts), math.floor(end_ts)
        with self._lock:
            served = [(url, create, at) for (user, k, url, create), at in self.served.items()
                      if user == username and k == kind and lo <= create <= hi]
            by_slot: dict[int, dict[tuple[str, int], CdnTask]] = {}
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

    def changes(self, username: str, kind: str, start_ts: float, end_ts: float, after: float,
                until: float) -> list[tuple[str, int, int, str, float]]:
        """Every change the API showed in ``(after, until]`` of the tasks created in ``[start_ts, end_ts]``, as
        ``(url, create, phase, status, at)``: phase 0 the task appears waiting, 1 it runs, 2 it ends in
        ``status``. A task served late appears in the phase it has by then (the earlier phases are not seen).

        What a client could have learnt and when: the real truth that staleness is measured against."""
        lo, hi = math.ceil(start_ts), min(math.floor(end_ts), math.floor(until))
        out: list[tuple[str, int, int, str, float]] = []
        with self._lock:
            for slot_no, summary, _ in self._slots_desc(username, kind, lo, hi):
                if max(summary.settled_at, summary.visible_at) <= after:
                    continue  # every task of the slot settled and was served before ``after``: nothing new
                for task in self._slot_tasks(username, kind, slot_no):
                    if not lo <= task.create <= hi:
                        continue
                    times = (max(task.create, task.visible), max(task.create + task.wait, task.visible),
                             max(task.finish, task.visible))
                    for phase, at in enumerate(times):
                        if phase < 2 and times[phase + 1] <= at:
                            continue  # skipped: the task is already further on when it is first served
                        if after < at <= until:
                            status = ("wait", "run", task.final)[phase]
                            out.append((task.url, task.create, phase, status, at))
        return out

    def tasks_at(self, username: str, kind: str, start_ts: float, end_ts: float,
                 at: float | None) -> list[dict[str, Any]]:
        now = self._clock() if at is None else at
        lo, hi = math.ceil(start_ts), min(math.floor(end_ts), math.floor(now))
        with self._lock:
            _, tasks = self._select(username, kind, lo, hi, now, None, None, None, 0, math.inf)
        return [{**self._detail(task, now), "create_ts": task.create} for task in tasks]

    # -------------------------------------------------------------------------------------- slots

    # A slot is generated twice over, cheaply: a summary (counts only, no objects) serves counting
    # queries over whole days; the tasks themselves are built only for the slots a page shows or
    # whose tasks are still changing. Both decode the same draws, so they always agree.

    def _slot_summary(self, username: str, kind: str, slot_no: int) -> SlotSummary:
        key = (username, kind, self._generation[(username, kind)], slot_no)
        summary = _lru_get(self._summary_cache, key)
        if summary is not None:
            return summary
        count, settled_at, visible_at = 0, -math.inf, -math.inf
        finals: collections.Counter[str] = collections.Counter()
        used: collections.Counter[str] = collections.Counter()
        for task in self._manual.get((username, kind), {}).get(slot_no, ()):
            count += 1
            settled_at = max(settled_at, task.finish)
            visible_at = max(visible_at, task.visible)
            finals[task.final] += 1
            used.update(task_usage(kind, task))
        slot_start = slot_no * SLOT_SECONDS
        for stream in self._streams.get((username, kind), ()):
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
                size, target = _draw_extras(kind, bits)
                if kind == "prefetch":
                    used["urls"] += 1
                    used["bytes"] += size
                else:
                    used[target] += 1
            count += kept
            finals["failure"] += failed
            finals["success"] += kept - failed
        summary = SlotSummary(count, settled_at, {k: v for k, v in finals.items() if v}, visible_at,
                              dict(used)) if count else _EMPTY_SUMMARY
        _lru_put(self._summary_cache, key, summary, SUMMARY_CACHE_SIZE)
        return summary

    def _slot_tasks(self, username: str, kind: str, slot_no: int) -> tuple[CdnTask, ...]:
        """The slot's tasks in wire order (by createTime as ``order`` says, then url)."""
        key = (username, kind, self._generation[(username, kind)], slot_no)
        tasks = _lru_get(self._tasks_cache, key)
        if tasks is not None:
            return tasks
        built = list(self._manual.get((username, kind), {}).get(slot_no, ()))
        for stream in self._streams.get((username, kind), ()):
            built.extend(self._stream_slot_tasks(username, kind, stream, slot_no))
        built.sort(key=_sort_key if self._settings.order == "desc" else _sort_key_asc)
        tasks = tuple(built)
        _lru_put(self._tasks_cache, key, tasks, TASKS_CACHE_SIZE)
        return tasks

    def _stream_slot_draws(self, username: str, kind: str, stream: CdnStream,
                           slot_no: int) -> tuple[list[int], list[str]]:
        """One 64-bit draw per task of the slot, and the slot's itemIds (one per 10 tasks).

        Every draw comes from the slot's own RNG in a fixed order, so a slot is the same whenever and
        however often it is generated. Each task's fields are cut from its single draw (randint() per
        field is ten times slower, and a 100k-task day must answer in well under a second).
        """
        if not stream.overlaps(slot_no * SLOT_SECONDS):
            return [], []
        rng = random.Random(hash_int(self._settings.seed, "cdn", username, kind, stream.index, slot_no))
        n = poisson(rng, stream.per_hour / 60.0)
        batch_ids = [f"{rng.getrandbits(128):032x}" for _ in range((n + 9) // 10)]
        return [rng.getrandbits(64) for _ in range(n)], batch_ids

    def _stream_slot_tasks(self, username: str, kind: str, stream: CdnStream, slot_no: int) -> list[CdnTask]:
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
            size, target = _draw_extras(kind, bits)
            out.append(CdnTask(
                create,
                float(5 + (bits >> 32) % 116),  # wait 5..120 s
                float(10 + (bits >> 40) % 591) + slow,  # run 10..600 s (slow ones: hours more)
                "failure" if failed else "success",
                (bits >> 8) % 100 if failed else 100,
                f"{prefixes[(bits >> 6) & 3]}{i:03d}-{(bits >> 8) & 0xFFFFFF:06x}.jpg",
                batch_ids[i // 10],
                create + late if late else -math.inf,
                size,
                target,
            ))
        return out

    def _slots_desc(self, username: str, kind: str, lo: int,
                    hi: int) -> Iterator[tuple[int, SlotSummary, bool]]:
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
                limit: float) -> tuple[int, list[CdnTask]]:
        """Count the matches and return those in [offset, offset + limit) of the wire order.

        Slots come in wire order, so whole settled slots are counted from their summaries and only
        the slots that overlap the requested page, or are still changing, are built.
        """
        simple = url is None and item_id is None

        def matches(task: CdnTask) -> bool:
            return (task.visible <= now
                    and (status is None or task.status_at(now) == status)
                    and (url is None or task.url == url)
                    and (item_id is None or task.item_id == item_id))

        count = 0
        page: list[CdnTask] = []
        end = offset + limit
        slots = self._slots_desc(username, kind, lo, hi)
        if self._settings.order == "asc":
            slots = reversed(list(slots))
        for slot_no, summary, whole in slots:
            matched: list[CdnTask] | None = None
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

    # --------------------------------------------------------------------------------- the wire

    def _fmt(self, ts: float) -> str:
        return datetime.fromtimestamp(math.floor(ts), self._tz).strftime(TIME_FORMAT)

    def _parse_time(self, value: object) -> float | None:
        if not isinstance(value, str) or not _TIME_RE.match(value):
            return None
        try:
            return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=self._tz).timestamp()
        except ValueError:
            return None

    def _detail(self, task: CdnTask, now: float) -> dict[str, Any]:
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

    def query(self, kind: str, user: str | None, body: bytes, now: float) -> Response:
        """The answer to an authenticated ItemIdQuery: seed 002's validations in its order, then one page."""
        settings = self._settings
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return cdn_error(MSG_PARSE_JSON)
        if not isinstance(request, dict):
            return cdn_error(MSG_PARSE_JSON)
        start_raw, end_raw = request.get("startTime"), request.get("endTime")
        if start_raw in (None, "") or end_raw in (None, ""):
            return cdn_error(MSG_TIME_EMPTY)
        start, end = self._parse_time(start_raw), self._parse_time(end_raw)
        if start is None or end is None:
            return cdn_error(MSG_TIME_ERROR)
        if end < start:
            return cdn_error(MSG_END_BEFORE_START)
        if end - start > MAX_QUERY_SPAN:
            return cdn_error(MSG_TIME_ERROR)
        if start < now - settings.max_query_age:
            return cdn_error(MSG_TOO_OLD)
        page_size = _parse_count(request.get("pageSize"), 20)
        if page_size is None or not 1 <= page_size <= settings.max_page_size:
            return cdn_error(MSG_PAGE_SIZE)
        if settings.silent_page_cap is not None:
            page_size = min(page_size, settings.silent_page_cap)
        page_no = _parse_count(request.get("pageNo"), 1)
        if page_no is None or page_no < 1:
            return cdn_error(MSG_PAGE_NO)
        status = request.get("status") or None
        if status is not None and status not in QUERY_STATUSES:
            return cdn_error(MSG_STATUS)
        url = request.get("url") or None
        item_id = request.get("itemId") or None
        if not all(v is None or isinstance(v, str) for v in (url, item_id)):
            return cdn_error(MSG_PARSE_JSON)

        assert user is not None
        lo, hi = math.ceil(start), min(math.floor(end), math.floor(now))
        with self._lock:
            count, tasks = self._select(user, kind, lo, hi, now, status, url, item_id,
                                        (page_no - 1) * page_size, page_size)
        for task in tasks:
            self.served[(user, kind, task.url, task.create)] = now
        answered_page = max(1, math.ceil(count / page_size)) if settings.page_no_total else page_no
        numbers: list[int | str] = [count, answered_page, page_size]
        if settings.string_numbers:
            numbers = [str(n) for n in numbers]
        payload = {
            "count": numbers[0],
            "Code": 1,
            "message": "success",
            "pageNo": numbers[1],
            "pageSize": numbers[2],
            "resultDetail": [self._detail(task, now) for task in tasks],
        }
        return json_response(200, payload, "ok", CDN_CONTENT_TYPE)
