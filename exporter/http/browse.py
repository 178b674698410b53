"""The task browser's queries: from an alert to the failing URLs.

What ``/tasks``, ``/fmgr`` and their JSON twins (``/api/v1/cdn/tasks``, ``/api/v1/fmgr/tasks``) ask the store,
written once for the pages and the API: the query parameters parsed and checked (a ``BadRequest`` names the
parameter and its valid values), the bounded reads, the cursor, the per-window summary and the JSON shapes.
The pages (``pages.py``) render what this returns.

Bounded whatever the store holds: each (account, kind) of a filter is one index range read of at most
``limit + 1`` rows (all of them together at most ``ROW_BUDGET``) in the order shown (the status index for a
status filter, the unfinished index for stuck tasks, the window index otherwise); a url substring filter reads
at most ``SCAN_ROWS`` index entries of the range in all, and when that stops it before the page is full the
answer says how far it got and its cursor goes on from there. A time range is at most ``MAX_RANGE``, a page at
most ``MAX_LIMIT`` rows.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone, tzinfo
from typing import Any

from exporter.config import Config
from exporter.fmgr import wire as fmgrwire
from exporter.fmgr.tracking import API_STATES, api_view, state_filter
from exporter.metrics.collector import cdn_ratios
from exporter.storage.model import BrowseRow, FmgrApiRow, FmgrItemRow
from exporter.storage.store import CDN_STATUSES, Store

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000  # as the registration API's listing always allowed
SCAN_ROWS = 50_000  # rows a url filter may read for one page, shared by the (account, kind) pairs
ROW_BUDGET = 20_000  # rows the (account, kind) pairs of one page may return in all
MAX_RANGE = 31 * 86400.0  # the longest from..to a filter may ask for
MAX_URL_PART = 256
DAY = 86400.0

# A cursor: the sort key of the last row of a page (create_ts or first_seen, then names), opaque to clients.
Key = tuple[Any, ...]


class BadRequest(Exception):
    """A query parameter that cannot be used: the message names it and says what is valid."""


def one_of(values: Sequence[str]) -> str:
    return ", ".join(values)


# ------------------------------------------------------------------------------------------- parameters
Params = Mapping[str, list[str]]


def _single(params: Params, name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name}: given {len(values)} times; give it once")
    return values[0]


def _shown(value: str) -> str:
    """A bad value, safe to repeat in a message (bounded, printable)."""
    text = value if len(value) <= 40 else value[:37] + "..."
    return repr(text) if text.isprintable() else "(not printable)"


def _choices(params: Params, name: str, valid: Sequence[str]) -> tuple[str, ...]:
    """Every value of a repeatable parameter (also comma-separated), each one of ``valid``; () when absent."""
    got: list[str] = []
    for value in params.get(name, []):
        for part in value.split(","):
            if not part:
                continue
            if part not in valid:
                raise BadRequest(f"{name}: {_shown(part)} is not valid; expected one of: {one_of(valid)}")
            if part not in got:
                got.append(part)
    return tuple(got)


_INT = re.compile(r"[0-9]{1,16}")
_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")


def _int(params: Params, name: str, lo: int, hi: int, default: int | None) -> int | None:
    value = _single(params, name)
    if value is None:
        return default
    if not _INT.fullmatch(value) or not lo <= int(value) <= hi:
        raise BadRequest(f"{name}: expected an integer from {lo} to {hi}")
    return int(value)


def parse_time(name: str, value: str) -> float:
    """Unix seconds, or an RFC 3339 time with a zone (``2026-11-22T08:00:00Z``, ``...+08:00``)."""
    if _NUMBER.fullmatch(value):
        return float(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise BadRequest(f"{name}: expected unix seconds or an RFC 3339 time with a zone, "
                         "e.g. 2026-11-22T08:00:00Z")
    return parsed.timestamp()


def _range(params: Params, windows: Mapping[str, float], now: float, default: float
           ) -> tuple[str | None, float, float]:
    """(window name or None, start, end): ``window`` (one of ``windows``) covers (now - W, now] as the gauges do;
    ``from``/``to`` a range of at most MAX_RANGE; neither, the last ``default`` seconds."""
    window = _single(params, "window")
    start_text, end_text = _single(params, "from") or None, _single(params, "to") or None
    if window:
        if start_text or end_text:
            raise BadRequest("window: give either window or from/to, not both")
        if window not in windows:
            raise BadRequest(f"window: {_shown(window)} is not a configured window; expected one of: "
                             f"{one_of(list(windows))}")
        return window, math.floor(now - windows[window]) + 1, now
    end = parse_time("to", end_text) if end_text else now
    start = parse_time("from", start_text) if start_text else end - default
    if start > end:
        raise BadRequest("from: must not be later than to")
    if end - start > MAX_RANGE:
        raise BadRequest(f"from: the range is at most {int(MAX_RANGE // DAY)} days")
    return None, start, end


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def _cursor(params: Params, shape: tuple[Any, ...]) -> Key | None:
    text = _single(params, "cursor")
    if not text:
        return None
    try:
        if len(text) > 2048:
            raise ValueError
        key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(key, list) or len(key) != len(shape):
            raise ValueError
        for value, kind in zip(key, shape, strict=True):
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("cursor: not a cursor this exporter gave out (take it from the last page's next link)")\
            from None
    return tuple(key)


# ------------------------------------------------------------------------------------------- CDN tasks
@dataclass(frozen=True)
class CdnFilter:
    accounts: tuple[str, ...]
    kinds: tuple[str, ...]
    status: str | None
    window: str | None
    start: float
    end: float
    url: str | None
    limit: int
    stuck: bool
    cursor: Key | None = None
    ranged: bool = False  # from or to was given (else the range is the default one, shown blank in the form)

    def query(self, cursor: Key | None = None) -> list[tuple[str, str]]:
        """The query string of this filter (``cursor``: of its next page), as a list of pairs."""
        out: list[tuple[str, str]] = []
        if self.stuck:
            out.append(("stuck", ""))
        out += [("account", a) for a in self.accounts] + [("kind", k) for k in self.kinds]
        if self.status:
            out.append(("status", self.status))
        if self.window:
            out.append(("window", self.window))
        elif not self.stuck:
            out += [("from", rfc3339(self.start)), ("to", rfc3339(self.end))]
        if self.url:
            out.append(("url", self.url))
        if self.limit != DEFAULT_LIMIT:
            out.append(("limit", str(self.limit)))
        if cursor is not None:
            out.append(("cursor", encode_cursor(cursor)))
        return out


CDN_PARAMS = ("account", "kind", "status", "window", "from", "to", "url", "limit", "cursor", "stuck")


def _known(params: Params, names: Sequence[str]) -> None:
    for name in params:
        if name not in names:
            raise BadRequest(f"{_shown(name)} is not a parameter here; expected: {one_of(names)}")


def parse_cdn(params: Params, config: Config, now: float) -> CdnFilter:
    _known(params, CDN_PARAMS)
    accounts = _choices(params, "account", [a.name for a in config.accounts])
    enabled = [k for k, _ in config.task_kinds()]
    kinds = _choices(params, "kind", enabled)
    stuck = "stuck" in params
    status = _single(params, "status") or None
    if status is not None and status not in CDN_STATUSES:
        raise BadRequest(f"status: {_shown(status)} is not valid; expected one of: {one_of(CDN_STATUSES)}")
    chosen = kinds or tuple(enabled)
    # The windows every chosen kind is configured with: the ones /metrics has a gauge for.
    common = [w for w in (config.kinds[chosen[0]].windows if chosen else ())
              if all(w.name in {x.name for x in config.kinds[k].windows} for k in chosen)]
    windows = {w.name: w.seconds for w in common}
    if stuck:
        if status is not None and status not in ("wait", "run", "unknown"):
            raise BadRequest("status: stuck tasks are unfinished; expected one of: wait, run, unknown")
        if any(p in params for p in ("window", "from", "to")):
            raise BadRequest("stuck: lists every unfinished task the API can still be asked about; "
                             "window, from and to do not apply")
        reach = max((config.kinds[k].max_query_age for k in chosen), default=3 * DAY)
        window, start, end = None, now - reach, now
    else:
        widest = max(windows.values(), default=DAY)
        window, start, end = _range(params, windows, now, widest)
    url = _single(params, "url") or None
    if url is not None and len(url) > MAX_URL_PART:
        raise BadRequest(f"url: at most {MAX_URL_PART} characters")
    limit = _int(params, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    assert limit is not None
    return CdnFilter(accounts or tuple(a.name for a in config.accounts), chosen, status, window, start, end, url,
                     limit, stuck, _cursor(params, (float | int, str, str, str)),
                     ranged=bool(params.get("from") or params.get("to")))


@dataclass(frozen=True)
class CdnPage:
    rows: list[BrowseRow]
    next: Key | None  # the cursor of the next page; None: this is the last
    scanned_to: float | None  # the url filter stopped its scan here (a createTime) before filling the page


def _key(row: BrowseRow) -> Key:
    return (row.create_ts, row.account, row.kind, row.url)


def query_cdn(store: Store, f: CdnFilter, *, scan_rows: int = SCAN_ROWS, row_budget: int = ROW_BUDGET) -> CdnPage:
    """One page of ``f``: (create_ts, account, kind, url) descending (stuck: ascending) across the pairs; a url
    filter reads at most ``scan_rows`` rows in all (and at least a page's worth per pair)."""
    pairs = [(a, k) for a in f.accounts for k in f.kinds]
    scan = max(f.limit + 1, scan_rows // max(1, len(pairs)))
    # Each pair reads up to a page and one row more, but all of them together at most ROW_BUDGET rows: with
    # many accounts a pair reads fewer, and one that fills its share cuts the page where its share ends (as the
    # url scan does), so that the page is still exact and the next one goes on from there.
    share = min(f.limit + 1, max(2, row_budget // max(1, len(pairs))))
    rows: list[BrowseRow] = []
    cuts: list[Key] = []
    for account, kind in pairs:
        start, end, after = f.start, f.end, None
        if f.cursor is not None:
            ts, c_account, c_kind, c_url = f.cursor
            mine = (account, kind)
            if mine == (c_account, c_kind):
                after = (float(ts), c_url)
            elif (mine < (c_account, c_kind)) != f.stuck:  # already past ts: the rest of its tasks created at ts
                end, start = (end, max(start, ts)) if f.stuck else (min(end, ts), start)
            else:
                after = (float(ts), None)
        got, scanned_to = store.repo.cdn_browse(
            account, kind, start, end, status=f.status, unfinished=f.stuck and f.status is None, url_part=f.url,
            after=after, limit=share, scan=scan, oldest_first=f.stuck)
        rows += got
        if scanned_to is not None:
            cuts.append((scanned_to[0], account, kind, scanned_to[1]))
        elif share <= f.limit and len(got) == share:
            cuts.append(_key(got[-1]))
    rows.sort(key=_key, reverse=not f.stuck)
    # Past the nearest point where a pair's scan stopped, that pair's rows are not known: stop there too.
    cut = (max(cuts) if not f.stuck else min(cuts)) if cuts else None
    if cut is not None:
        rows = [r for r in rows if (_key(r) >= cut if not f.stuck else _key(r) <= cut)]
    if len(rows) > f.limit:
        return CdnPage(rows[:f.limit], _key(rows[f.limit - 1]), None)
    return CdnPage(rows, cut, None if cut is None else float(cut[0]))


@dataclass(frozen=True)
class Summary:
    account: str
    kind: str
    window: str
    counts: dict[str, int]
    success_ratio: float | None
    rate_ratio: float | None


def summaries(store: Store, config: Config, f: CdnFilter, now: float) -> list[Summary]:
    """For a window filter, each (account, kind)'s numbers for that window at ``now``: the window counts and
    ratios /metrics serves, from the same counters (``Store.cdn_window_counts``) and the same formula."""
    if f.window is None:
        return []
    out = []
    for account in f.accounts:
        for kind in f.kinds:
            names = [w.name for w in config.kinds[kind].windows]
            # The collector's window list, so that both read the same cached sums.
            sums = store.cdn_window_counts(account, kind, now, [w.seconds for w in config.kinds[kind].windows])
            c = sums[names.index(f.window)]
            success, rate = cdn_ratios(c)
            out.append(Summary(account, kind, f.window, {s: int(c.get(("status", s), 0)) for s in CDN_STATUSES},
                               success, rate))
    return out


def rfc3339(ts: float | None, tz: tzinfo = timezone.utc) -> str:
    if ts is None:
        return ""
    t = datetime.fromtimestamp(ts, tz)
    text = t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{int((ts % 1) * 1000):03d}" if ts % 1 else "")
    offset = t.strftime("%z")
    return text + ("Z" if offset in ("+0000", "") and tz is timezone.utc else f"{offset[:3]}:{offset[3:]}")


def cdn_row_json(row: BrowseRow, tz: tzinfo, now: float) -> dict[str, Any]:
    finished = row.finish_ts is not None and row.status in ("success", "failure")
    return {
        "account": row.account, "kind": row.kind, "url": row.url, "status": row.status,
        "createTime": rfc3339(row.create_ts), "createTimeLocal": rfc3339(row.create_ts, tz),
        "beginTime": rfc3339(row.begin_ts) or None, "finishTime": rfc3339(row.finish_ts) or None,
        "durationSeconds": (row.finish_ts - row.create_ts) if finished and row.finish_ts is not None else None,
        "ageSeconds": None if finished else max(0.0, now - row.create_ts),
        "rate": row.rate, "lastRead": rfc3339(row.updated_ts),
    }


def summary_json(s: Summary) -> dict[str, Any]:
    return {"account": s.account, "kind": s.kind, "window": s.window, "tasks": s.counts,
            "successRatio": s.success_ratio, "rateRatio": s.rate_ratio}


def account_zones(config: Config) -> dict[str, tzinfo]:
    return {a.name: a.tz for a in config.accounts}


def cdn_json(page: CdnPage, f: CdnFilter, sums: list[Summary], config: Config, now: float) -> dict[str, Any]:
    zones = account_zones(config)
    return {
        "filter": {"account": list(f.accounts), "kind": list(f.kinds), "status": f.status, "window": f.window,
                   "from": rfc3339(f.start), "to": rfc3339(f.end), "url": f.url, "stuck": f.stuck,
                   "limit": f.limit},
        "at": rfc3339(now),
        "summary": [summary_json(s) for s in sums],
        "tasks": [cdn_row_json(r, zones[r.account], now) for r in page.rows],
        "next": encode_cursor(page.next) if page.next is not None else None,
        "scanLimited": page.scanned_to is not None,
        "scannedTo": rfc3339(page.scanned_to) if page.scanned_to is not None else None,
    }


# ------------------------------------------------------------------------------------------- Fmgr tasks
@dataclass(frozen=True)
class FmgrFilter:
    state: str | None
    code: int | None
    op: str | None
    pending: bool | None
    window: str | None
    start: float
    end: float
    limit: int
    cursor: Key | None = None
    ranged: bool = False

    def query(self, cursor: Key | None = None) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for name, value in (("state", self.state), ("code", self.code), ("op", self.op)):
            if value is not None:
                out.append((name, str(value)))
        if self.pending is not None:
            out.append(("pending", "true" if self.pending else "false"))
        if self.window:
            out.append(("window", self.window))
        else:
            out += [("from", rfc3339(self.start)), ("to", rfc3339(self.end))]
        if self.limit != DEFAULT_LIMIT:
            out.append(("limit", str(self.limit)))
        if cursor is not None:
            out.append(("cursor", encode_cursor(cursor)))
        return out


FMGR_PARAMS = ("state", "code", "op", "pending", "window", "from", "to", "limit", "cursor")
FMGR_OPS = (*sorted(fmgrwire.KNOWN_OPS), fmgrwire.OTHER)


def parse_fmgr(params: Params, config: Config, now: float) -> FmgrFilter:
    _known(params, FMGR_PARAMS)
    state = _single(params, "state") or None
    if state is not None and state not in API_STATES:
        raise BadRequest(f"state: {_shown(state)} is not valid; expected one of: {one_of(API_STATES)}")
    code = _int(params, "code", 0, fmgrwire.MAX_JSON_INT, None)
    op = _single(params, "op") or None
    if op is not None and op not in FMGR_OPS:
        raise BadRequest(f"op: {_shown(op)} is not valid; expected one of: {one_of(FMGR_OPS)}")
    pending_text = _single(params, "pending")
    if pending_text not in (None, "true", "false"):
        raise BadRequest("pending: expected true or false")
    windows = {w.name: w.seconds for w in config.fmgr.windows}
    window, start, end = _range(params, windows, now, min(max(config.fmgr.max_task_age, DAY), MAX_RANGE))
    limit = _int(params, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    assert limit is not None
    return FmgrFilter(state, code, op, None if pending_text is None else pending_text == "true", window, start, end,
                      limit, _cursor(params, (float | int, str)), ranged=bool(params.get("from") or params.get("to")))


@dataclass(frozen=True)
class FmgrTask:
    row: FmgrApiRow
    items: list[tuple[int, FmgrItemRow]]
    notifications: tuple[int, float] | None  # (received, last received)


@dataclass(frozen=True)
class FmgrPage:
    tasks: list[FmgrTask]
    next: Key | None
    scanned_to: float | None


def query_fmgr(store: Store, f: FmgrFilter, *, scan_rows: int = SCAN_ROWS) -> FmgrPage:
    where = state_filter(f.state, f.pending)
    after = None if f.cursor is None else (float(f.cursor[0]), str(f.cursor[1]))
    scan = max(f.limit + 1, scan_rows)
    rows, scanned_to = store.repo.fmgr_browse(where, start=f.start, end=f.end, code=f.code, op=f.op, after=after,
                                              limit=f.limit + 1, scan=scan)
    more = len(rows) > f.limit
    rows = rows[:f.limit]
    items, notes = store.repo.fmgr_details([r.id for r in rows])
    tasks = [FmgrTask(r, items.get(r.id, []), notes.get(r.id)) for r in rows]
    if more:
        return FmgrPage(tasks, (rows[-1].first_seen, rows[-1].id), None)
    return FmgrPage(tasks, scanned_to, None if scanned_to is None else scanned_to[0])


def notification_outcome(task: FmgrTask) -> str:
    """What became of the vendor's notification of this task, in words."""
    code = task.row.code
    received = f"; {task.notifications[0]} received here" if task.notifications else ""
    if code == 6:
        return "delivered" + received
    if code == 5:
        return "the vendor could not deliver it" + received
    if code == 4:
        return "being sent" + received
    if task.notifications:
        return received[2:]
    if code == 3 and task.row.final_seen is not None and task.row.confirmed:
        return "none (no notifyURL)"
    return "not yet"


def fmgr_task_json(task: FmgrTask) -> dict[str, Any]:
    view = api_view(task.row)
    view.update({
        "firstSeenTime": rfc3339(task.row.first_seen), "finalSeenTime": rfc3339(task.row.final_seen) or None,
        "items": [{"index": idx, "op": i.op, "code": i.code,
                   "state": "unknown" if i.code is None else fmgrwire.item_state(i.code),
                   "error": i.error, "key": i.key, "fsize": i.fsize} for idx, i in task.items],
        "notifications": {"received": task.notifications[0] if task.notifications else 0,
                          "lastReceived": rfc3339(task.notifications[1]) if task.notifications else None,
                          "outcome": notification_outcome(task)},
    })
    return view


def fmgr_json(page: FmgrPage, f: FmgrFilter, now: float) -> dict[str, Any]:
    return {
        "filter": {"state": f.state, "code": f.code, "op": f.op, "pending": f.pending, "window": f.window,
                   "from": rfc3339(f.start), "to": rfc3339(f.end), "limit": f.limit},
        "at": rfc3339(now),
        "tasks": [fmgr_task_json(t) for t in page.tasks],
        "next": encode_cursor(page.next) if page.next is not None else None,
        "scanLimited": page.scanned_to is not None,
        "scannedTo": rfc3339(page.scanned_to) if page.scanned_to is not None else None,
    }


def with_cursor(f: CdnFilter, cursor: Key | None) -> CdnFilter:
    return replace(f, cursor=cursor)
