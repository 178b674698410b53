"""The task browser's pages and API: ``/tasks`` (and ``/tasks?stuck``), ``/fmgr``, ``/api/v1/cdn/tasks`` and the
listing of ``/api/v1/fmgr/tasks``.

Server-rendered HTML with no script and no build step: a filter form (a plain GET form), a summary line per
(account, kind) for a window filter, a table of rows, a link to the next page and to the same data as JSON.
Every string from the vendor or the request is HTML-escaped where it is written; the pages carry a
Content-Security-Policy that allows no script at all and only their own inline style (by its hash). The queries
are ``browse.py``'s; the server runs these routes on its slow lane, so a page never holds up a scrape
(``web.App.admit``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any
from urllib.parse import parse_qs, urlencode

from exporter.config import Config
from exporter.fmgr import wire as fmgrwire
from exporter.fmgr.tracking import API_STATES
from exporter.http import browse
from exporter.http.responses import Response, json_response
from exporter.http.web import CDN_TASKS_PATH, TASKS_PATH
from exporter.storage.store import CDN_STATUSES, Store

TASKS_PAGE = "/tasks"
FMGR_PAGE = "/fmgr"

STYLE = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:1em 2em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;"
    "vertical-align:top}th{background:#f0f0f0}td.url{word-break:break-all;min-width:22em;max-width:40em}"
    ".failure,.failed{color:#b00020;font-weight:bold}.success,.succeeded{color:#1b5e20}"
    "form label{margin-right:1em}nav a{margin-right:1em}.note{background:#fff3cd;padding:4px 8px}"
    "table.items td,table.items th{font-size:12px}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# No script, no frames, nothing from elsewhere: only this page's own style, its links and its form.
CSP = (f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self'; form-action 'self'; "
       "base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff"),
                    ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store")]


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def local_time(ts: float | None, tz: tzinfo) -> str:
    """``2026-11-22 16:00:00 +08:00`` (``... UTC`` in UTC). Formatted by hand: strftime was a third of a
    1,000-row page's time."""
    if ts is None:
        return ""
    t = datetime.fromtimestamp(ts, tz)
    if tz is timezone.utc:
        zone = "UTC"
    else:
        minutes = int((t.utcoffset() or timedelta()).total_seconds() // 60)
        zone = f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}:{t.minute:02d}:{t.second:02d} {zone}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)  # whole seconds elapsed, as an age reads
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h) + [f"{m}m"] * bool(m) + [f"{s}s"] * (bool(s) or not (d or h or m))
    return " ".join(parts)


def ratio(value: float | None) -> str:
    return "none finished" if value is None else f"{value:.4f}"


class TaskBrowser:
    """The routes of the task browser over the current store and configuration (a reload builds a new one)."""

    def __init__(self, store: Store, config: Config, *, clock: Callable[[], float] = time.time,
                 external_url: str | None = None) -> None:
        self.store, self.config, self.clock = store, config, clock
        self.base = (external_url or "").rstrip("/")

    def pages(self) -> dict[str, Callable[[dict[str, Any]], Response]]:
        """GET routes behind basic auth, on the slow lane."""
        return {TASKS_PAGE: self.tasks_page, FMGR_PAGE: self.fmgr_page, CDN_TASKS_PATH: self.cdn_api}

    def link(self, path: str, query: Sequence[tuple[str, str]] = ()) -> str:
        return f"{self.base}{path}" + (f"?{urlencode(list(query))}" if query else "")

    # ------------------------------------------------------------------ JSON
    def cdn_api(self, environ: dict[str, Any]) -> Response:
        now = self.clock()
        try:
            f = browse.parse_cdn(_params(environ), self.config, now)
        except browse.BadRequest as exc:
            return json_response("400 Bad Request", {"error": str(exc)})
        page = browse.query_cdn(self.store, f)
        return _api(json_response("200 OK", browse.cdn_json(page, f, browse.summaries(self.store, self.config, f, now),
                                                            self.config, now)))

    def fmgr_api(self, environ: dict[str, Any]) -> Response:
        now = self.clock()
        try:
            f = browse.parse_fmgr(_params(environ), self.config, now)
        except browse.BadRequest as exc:
            return json_response("400 Bad Request", {"error": str(exc)})
        return _api(json_response("200 OK", browse.fmgr_json(browse.query_fmgr(self.store, f), f, now)))

    # ------------------------------------------------------------------ HTML
    def tasks_page(self, environ: dict[str, Any]) -> Response:
        now = self.clock()
        try:
            f = browse.parse_cdn(_params(environ, form=True), self.config, now)
        except browse.BadRequest as exc:
            return self._bad_request(exc, TASKS_PAGE, "All tasks")
        page = browse.query_cdn(self.store, f)
        sums = browse.summaries(self.store, self.config, f, now)
        title = "Stuck CDN tasks" if f.stuck else "CDN tasks"
        body = [self._cdn_form(f), self._summary(sums, now)]
        if f.stuck:
            body.append(f"<p>Unfinished tasks created since {esc(local_time(f.start, timezone.utc))} (as far back "
                        "as the API can be asked), oldest first, with their age.</p>")
        body.append(self._cdn_table(page, f, now))
        body.append(self._pager(TASKS_PAGE, f.query(), f.query(page.next) if page.next else None, page.scanned_to,
                                CDN_TASKS_PATH, f.query(f.cursor)))
        return self._page("200 OK", title, "".join(body))

    def fmgr_page(self, environ: dict[str, Any]) -> Response:
        now = self.clock()
        try:
            f = browse.parse_fmgr(_params(environ, form=True), self.config, now)
        except browse.BadRequest as exc:
            return self._bad_request(exc, FMGR_PAGE, "All Fmgr tasks")
        page = browse.query_fmgr(self.store, f)
        body = [self._fmgr_form(f), self._fmgr_table(page),
                self._pager(FMGR_PAGE, f.query(), f.query(page.next) if page.next else None, page.scanned_to,
                            TASKS_PATH, f.query(f.cursor), json_note=" (bearer token)")]
        return self._page("200 OK", "Fmgr tasks", "".join(body))

    def _bad_request(self, exc: browse.BadRequest, page: str, label: str) -> Response:
        """A 400 page: what is wrong with the query (the valid values included), and a way back."""
        return self._page("400 Bad Request", "Bad request", f"<p class=\"note\">{esc(exc)}</p>"
                          f"<p><a href=\"{esc(self.link(page))}\">{esc(label)}</a></p>")

    def _page(self, status: str, title: str, body: str) -> Response:
        nav = " ".join(f'<a href="{esc(self.link(p, q))}">{esc(name)}</a>' for name, p, q in (
            ("Home", "/", ()), ("CDN tasks", TASKS_PAGE, ()), ("Failures", TASKS_PAGE, (("status", "failure"),)),
            ("Stuck", TASKS_PAGE, (("stuck", ""),)), ("Fmgr", FMGR_PAGE, ()), ("Metrics", "/metrics", ())))
        text = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)} - "
                f"cdnetworks-exporter</title><style>{STYLE}</style></head><body><nav>{nav}</nav>"
                f"<h1>{esc(title)}</h1>{body}</body></html>\n")
        return Response(status, text.encode(), "text/html; charset=utf-8", list(SECURITY_HEADERS))

    @staticmethod
    def _select(name: str, values: Sequence[str], chosen: Sequence[str], any_label: str = "all") -> str:
        options = [f'<option value=""{" selected" if not chosen else ""}>{esc(any_label)}</option>']
        options += [f'<option value="{esc(v)}"{" selected" if v in chosen else ""}>{esc(v)}</option>' for v in values]
        return f'<label>{esc(name)} <select name="{esc(name)}">{"".join(options)}</select></label>'

    def _cdn_form(self, f: browse.CdnFilter) -> str:
        accounts = [a.name for a in self.config.accounts]
        kinds = [k for k, _ in self.config.task_kinds()]
        windows = sorted({w.name: w.seconds for k in kinds for w in self.config.kinds[k].windows}.items(),
                         key=lambda x: x[1])
        one = len(f.accounts) == 1 and len(accounts) > 1
        parts = [
            '<form method="get" action="">' + ('<input type="hidden" name="stuck" value="">' if f.stuck else ""),
            self._select("account", accounts, f.accounts if one else ()),
            self._select("kind", kinds, f.kinds if len(f.kinds) == 1 and len(kinds) > 1 else ()),
            self._select("status", CDN_STATUSES, (f.status,) if f.status else ()),
        ]
        if not f.stuck:
            parts.append(self._select("window", [w for w, _ in windows], (f.window,) if f.window else (),
                                      "time range below"))
            start = browse.rfc3339(f.start) if f.ranged else ""
            end = browse.rfc3339(f.end) if f.ranged else ""
            parts.append(f'<label>from <input name="from" value="{esc(start)}" size="22"></label>'
                         f'<label>to <input name="to" value="{esc(end)}" size="22"></label>')
        parts.append(f'<label>url contains <input name="url" value="{esc(f.url)}" size="30"></label>'
                     f'<label>rows <input name="limit" value="{f.limit}" size="4"></label>'
                     '<button type="submit">Show</button></form>')
        return "".join(parts)

    def _summary(self, sums: list[browse.Summary], now: float) -> str:
        if not sums:
            return ""
        rows = "".join(
            f"<tr><td>{esc(s.account)}</td><td>{esc(s.kind)}</td><td>{esc(s.window)}</td>"
            f"<td>{sum(s.counts.values())}</td>"
            + "".join(f"<td>{s.counts[st]}</td>" for st in CDN_STATUSES)
            + f"<td>{ratio(s.success_ratio)}</td><td>{ratio(s.rate_ratio)}</td></tr>" for s in sums)
        head = "".join(f"<th>{esc(st)}</th>" for st in CDN_STATUSES)
        return (f"<p>Summary at {esc(local_time(now, timezone.utc))}: the numbers /metrics serves for this window "
                "at this instant (every status, whatever the filters below).</p><table class=\"summary\"><tr>"
                f"<th>account</th><th>kind</th><th>window</th><th>tasks</th>{head}<th>success ratio</th>"
                f"<th>rate ratio</th></tr>{rows}</table>")

    def _cdn_table(self, page: browse.CdnPage, f: browse.CdnFilter, now: float) -> str:
        zones = browse.account_zones(self.config)
        if not page.rows:
            return "<p>No tasks match.</p>"
        last = "age" if f.stuck else "duration"
        head = ("<tr><th>account</th><th>kind</th><th>createTime (account's zone)</th><th>createTime (UTC)</th>"
                f"<th>status</th><th>beginTime</th><th>finishTime</th><th>{last}</th><th>rate</th><th>url</th>"
                "<th>last read</th></tr>")
        out = []
        for r in page.rows:
            tz = zones.get(r.account, timezone.utc)
            span = (max(0.0, now - r.create_ts) if f.stuck else
                    (r.finish_ts - r.create_ts if r.finish_ts is not None and r.status in ("success", "failure")
                     else None))
            out.append(
                f'<tr class="task"><td>{esc(r.account)}</td><td>{esc(r.kind)}</td>'
                f"<td>{esc(local_time(r.create_ts, tz))}</td><td>{esc(local_time(r.create_ts, timezone.utc))}</td>"
                f'<td class="{esc(r.status)}">{esc(r.status)}</td><td>{esc(local_time(r.begin_ts, tz))}</td>'
                f"<td>{esc(local_time(r.finish_ts, tz))}</td><td>{esc(duration(span))}</td>"
                f"<td>{esc('' if r.rate is None else f'{r.rate:g}')}</td><td class=\"url\">{esc(r.url)}</td>"
                f"<td>{esc(local_time(r.updated_ts, timezone.utc))}</td></tr>")
        return f'<table class="tasks">{head}{"".join(out)}</table>'

    def _fmgr_form(self, f: browse.FmgrFilter) -> str:
        windows = [w.name for w in self.config.fmgr.windows]
        start = browse.rfc3339(f.start) if f.ranged else ""
        end = browse.rfc3339(f.end) if f.ranged else ""
        return ('<form method="get" action="">'
                + self._select("state", API_STATES, (f.state,) if f.state else ())
                + f'<label>code <input name="code" value="{esc(f.code)}" size="4"></label>'
                + self._select("op", browse.FMGR_OPS, (f.op,) if f.op else ())
                + self._select("pending", ("true", "false"),
                               () if f.pending is None else ("true" if f.pending else "false",), "either")
                + self._select("window", windows, (f.window,) if f.window else (), "time range below")
                + f'<label>from <input name="from" value="{esc(start)}" size="22"></label>'
                + f'<label>to <input name="to" value="{esc(end)}" size="22"></label>'
                + f'<label>rows <input name="limit" value="{f.limit}" size="4"></label>'
                + '<button type="submit">Show</button></form>')

    def _fmgr_table(self, page: browse.FmgrPage) -> str:
        if not page.tasks:
            return "<p>No tracked Fmgr tasks match.</p>"
        utc = timezone.utc
        out = []
        for t in page.tasks:
            r = t.row
            state = "abandoned" if r.abandoned else ("unknown" if r.code is None else fmgrwire.task_state(r.code))
            items = "".join(
                f"<tr><td>{idx}</td><td>{esc(i.op)}</td><td>{esc(i.code)}</td>"
                f'<td class="{esc(fmgrwire.item_outcome(i.code) or "")}">'
                f'{esc("unknown" if i.code is None else fmgrwire.item_state(i.code))}</td>'
                f'<td class="text">{esc(i.error)}</td><td class="url">{esc(i.key)}</td><td>{esc(i.fsize)}</td></tr>'
                for idx, i in t.items)
            item_table = ('<table class="items"><tr><th>#</th><th>op</th><th>code</th><th>state</th><th>error</th>'
                          f"<th>key</th><th>fsize</th></tr>{items}</table>") if items else "no items yet"
            out.append(
                f'<tr class="task"><td>{esc(r.id)}</td><td>{esc(r.code)}</td><td>{esc(state)}</td>'
                f"<td>{esc(local_time(r.first_seen, utc))}</td><td>{esc(local_time(r.final_seen, utc))}</td>"
                f'<td class="text">{esc(browse.notification_outcome(t))}</td><td>{esc(r.source)}</td>'
                f'<td class="text">{esc(r.last_error)}</td><td>{item_table}</td></tr>')
        return ('<table class="tasks"><tr><th>persistentId</th><th>code</th><th>state</th><th>first seen</th>'
                "<th>final since</th><th>notification</th><th>source</th><th>last poll error</th><th>items</th></tr>"
                f'{"".join(out)}</table>')

    def _pager(self, path: str, first: list[tuple[str, str]], following: list[tuple[str, str]] | None,
               scanned_to: float | None, api: str, this: list[tuple[str, str]], json_note: str = "") -> str:
        notes = []
        if scanned_to is not None:
            notes.append(f'<p class="note">The url filter reads at most {browse.SCAN_ROWS:,} tasks a page and '
                         f"stopped at tasks created {esc(local_time(scanned_to, timezone.utc))}: the next page goes "
                         "on from there.</p>")
        links = [f'<a href="{esc(self.link(path, first))}">First page</a>']
        if following is not None:
            links.append(f'<a rel="next" href="{esc(self.link(path, following))}">Next page</a>')
        links.append(f'<a href="{esc(self.link(api, this))}">This page as JSON</a>{esc(json_note)}')
        return "".join(notes) + "<p>" + " | ".join(links) + "</p>"


def _api(response: Response) -> Response:
    """A JSON answer of vendor strings: never to be sniffed as anything else."""
    response.headers += [("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")]
    return response


def _params(environ: Mapping[str, Any], *, form: bool = False) -> dict[str, list[str]]:
    """The query parameters; for a page (``form``), without the empty ones its form sends for "all" (``stuck``,
    a flag, is kept)."""
    params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if form:
        params = {k: kept for k, v in params.items() if (kept := [x for x in v if x or k == "stuck"])}
    return params
