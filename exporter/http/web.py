"""HTTP: the landing page, ``/metrics``, health, reload, and the routes to Fmgr's endpoints (exporter.fmgr.endpoints).

A hand-written WSGI app served by ``exporter.httpd``. Each handler is a method returning a ``Response``; the
dispatcher adds the configured headers, applies basic auth where it belongs and turns unexpected
exceptions into a logged 500 so that no stack trace reaches a client.
"""

from __future__ import annotations

import gzip
import html
import ipaddress
import logging
import re
import shlex
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs

import prometheus_client
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from exporter.fmgr.endpoints import API_MAX_BODY_BYTES, NotifyEndpoint, RegistrationApi, authorize
from exporter.fmgr.tracking import API_STATES
from exporter.http import served as httpd_app
from exporter.http import server as httpd
from exporter.http.responses import REALM, Response, json_response, parse_int_param, text
from exporter.http.webconfig import (
    AUTH_FAILURE_REASONS,
    MISSING,
    NEW,
    REPEATED,
    VERIFIED,
    AuthFailures,
    BasicAuth,
)
from exporter.metrics import catalogue as metrics

log = logging.getLogger(__name__)

NAME = "cdnetworks-exporter"
API_PREFIX = "/api/v1/"
TASKS_PATH = "/api/v1/fmgr/tasks"
CDN_TASKS_PATH = "/api/v1/cdn/tasks"
RELOAD_PATH = "/-/reload"
OTHER_MAX_BODY_BYTES = 4096
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 1000
_AUTHORIZED = "exporter.basic_auth_remembered"  # set by admit(): the password was checked before
STATE_PARAM = re.compile(r"[A-Za-z0-9_]{1,32}")

StartResponse = Callable[..., Any]


class TaskBrowserRoutes(Protocol):
    """The task browser (``pages.TaskBrowser``): its GET routes (behind basic auth, on the slow lane), the listing
    of the Fmgr registration API, and the links it builds (``--web.external-url``)."""

    def pages(self) -> Mapping[str, Callable[[dict[str, Any]], Response]]: ...
    def fmgr_api(self, environ: dict[str, Any]) -> Response: ...
    def link(self, path: str, query: Sequence[tuple[str, str]] = ()) -> str: ...

LISTEN_FORMS = "expected host:port, :port or [IPv6]:port, e.g. :9891, 127.0.0.1:9891 or [::1]:9891"
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def parse_listen_address(value: str) -> tuple[str, int]:
    """``:9891`` -> ("", 9891), every interface (IPv4 and IPv6, see ``httpd.Server``); ``127.0.0.1:0``;
    ``[::1]:9891``; ``localhost:9891``. A ValueError says what is wrong and the expected form."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{value!r}: {LISTEN_FORMS}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} in brackets is not an IPv6 address; {LISTEN_FORMS}") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} has no port (the colon is missing); {LISTEN_FORMS}")
        if ":" in host:
            raise ValueError(f"{value!r}: put an IPv6 address in brackets, e.g. [::1]:9891")
        if host and not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{value!r}: {host!r} is not a host name or IPv4 address; {LISTEN_FORMS}")
    number = parse_int_param(port, 0, 65535)
    if number is None:
        raise ValueError(f"{value!r}: the port must be a number from 0 to 65535; {LISTEN_FORMS}")
    return host, number


class App:
    """The exporter's WSGI application."""

    def __init__(
        self,
        *,
        registry: prometheus_client.CollectorRegistry,
        version: str,
        ready: Callable[[], tuple[bool, str]],
        notify: NotifyEndpoint | None = None,
        api: RegistrationApi | None = None,
        basic_auth: BasicAuth | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        reload: Callable[[], None] | None = None,
        demo_token: str | None = None,
        browser: TaskBrowserRoutes | None = None,
    ) -> None:
        self._registry = registry
        self._browser = browser
        # Served on the server's slow lane, so that rendering a page never delays a scrape.
        self._slow_paths = {TASKS_PATH} if browser is not None else set()
        self._demo_token = demo_token  # --demo: a public token, shown on the landing page
        self._version = version
        self._ready = ready
        self._notify = notify
        self._api = api
        self._basic_auth = basic_auth
        self._headers = list((headers or {}).items())
        self._clock = clock
        self._reload = reload
        # path -> {method: handler}; HEAD is answered wherever GET is, without the body.
        self._routes: dict[str, dict[str, Callable[[dict[str, Any]], Response]]] = {
            "/": {"GET": self._landing},
            "/metrics": {"GET": self._metrics},
            "/healthz": {"GET": self._healthz},
            "/readyz": {"GET": self._readyz},
            TASKS_PATH: {"GET": self._list_tasks, "POST": self._register},
        }
        if browser is not None:
            for page, handler in browser.pages().items():
                self._routes[page] = {"GET": handler}
                self._slow_paths.add(page)
        if reload is not None:
            self._routes[RELOAD_PATH] = {"POST": self._reload_config}
        if notify is not None:
            if not notify.path.startswith("/") or notify.path in self._routes or notify.path.startswith(API_PREFIX):
                raise ValueError(f"notify path {notify.path!r} must start with / and not shadow another route")
            self._routes[notify.path] = {"POST": lambda environ: notify.handle(environ, self._clock)}

    def body_limit(self, path: str) -> int:
        """The largest request body ``path`` accepts; the server refuses (413) anything larger unread."""
        if self._notify is not None and path == self._notify.path:
            return self._notify.max_body_bytes
        if path.startswith(API_PREFIX):
            return API_MAX_BODY_BYTES
        # No other route reads a body; a small one is read and dropped so a stray POST still gets its 405.
        return OTHER_MAX_BODY_BYTES


    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            response = self._dispatch(environ, method)
        except Exception:
            log.exception("unhandled error serving %s %s", method, environ.get("PATH_INFO"))
            response = text("500 Internal Server Error", "internal error")
        status, headers, body = self._render(response, method)
        start_response(status, headers)
        return [body]

    def _render(self, response: Response, method: str) -> tuple[str, list[tuple[str, str]], bytes]:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
            *self._headers,
        ]
        return response.status, headers, b"" if method == "HEAD" else response.body

    def admit(self, environ: dict[str, Any], slow_lane_full: bool, first_lane_full: bool) -> httpd_app.Verdict:
        """Called by the server on its event loop, before a worker is taken, so it must not block.

        None: run the request on the common workers (no basic auth needed, or a remembered password).
        ``httpd_app.SLOW``: it needs a bcrypt check, which runs on the server's few slow-lane workers, so that
        a flood of wrong passwords queues there and not in front of Prometheus' scrapes. ``httpd_app.SLOW_FIRST``:
        a password refused unchecked before (throttled), on a lane of its own, checked ahead of new ones: the
        next scrape with a password the flood kept out. A finished response (401) when there are no usable
        credentials, for a password already found wrong, or when the candidate's lane is full.
        """
        path = environ.get("PATH_INFO") or "/"
        if self._basic_auth is None or self._auth_exempt(path):
            return self._lane(environ, path, slow_lane_full)
        header = environ.get("HTTP_AUTHORIZATION")
        verdict = self._basic_auth.assess(header)
        if verdict == VERIFIED:
            environ[_AUTHORIZED] = True
            return self._lane(environ, path, slow_lane_full)
        if verdict == REPEATED and not first_lane_full:
            return httpd_app.SLOW_FIRST
        if verdict in (NEW, REPEATED) and not slow_lane_full:
            return httpd_app.SLOW
        if verdict in (NEW, REPEATED):
            self._basic_auth.throttled(header)
        else:
            self._basic_auth.failures.inc("missing" if verdict == MISSING else "wrong")
        return self._render(self._unauthorized(), environ.get("REQUEST_METHOD", "GET"))

    def _lane(self, environ: dict[str, Any], path: str, slow_lane_full: bool) -> httpd_app.Verdict:
        """The lane of an admitted request: the task browser's reads on the slow lane (503 when it is full),
        everything else on the common workers."""
        method = environ.get("REQUEST_METHOD", "GET")
        if path not in self._slow_paths or method not in ("GET", "HEAD"):
            return None
        if slow_lane_full:
            response = text("503 Service Unavailable", "busy: too many pages at once, try again")
            response.headers.append(("Retry-After", "1"))
            return self._render(response, method)
        return httpd_app.SLOW

    @staticmethod
    def _unauthorized() -> Response:
        response = text("401 Unauthorized", "unauthorized")
        response.headers.append(("WWW-Authenticate", f'Basic realm="{REALM}"'))
        return response

    def _is_notify(self, path: str) -> bool:
        return self._notify is not None and path == self._notify.path

    def _auth_exempt(self, path: str) -> bool:
        # The notify path is authenticated by its signature, the registration API by its bearer token; the CDN
        # task API is read like the pages, behind basic auth.
        return self._is_notify(path) or (path.startswith(API_PREFIX) and path != CDN_TASKS_PATH)

    def _dispatch(self, environ: dict[str, Any], method: str) -> Response:
        path = environ.get("PATH_INFO") or "/"
        if (
            self._basic_auth is not None
            and not environ.get(_AUTHORIZED)
            and not self._auth_exempt(path)
            and not self._basic_auth.check(environ.get("HTTP_AUTHORIZATION"))
        ):
            return self._unauthorized()
        handlers = self._routes.get(path)
        if environ.get(httpd_app.BODY_TOO_LARGE) and not (path.startswith(API_PREFIX) or self._is_notify(path)):
            return text("413 Payload Too Large", "request body too large")
        if handlers is None:
            if path.startswith(API_PREFIX):
                return json_response("404 Not Found", {"error": f"no such API route: {path}"})
            return text("404 Not Found", "not found")
        handler = handlers.get("GET" if method == "HEAD" else method)
        if handler is None:
            allowed = sorted({*handlers, *(("HEAD",) if "GET" in handlers else ())})
            response = text("405 Method Not Allowed", "method not allowed")
            response.headers.append(("Allow", ", ".join(allowed)))
            return response
        return handler(environ)

    # ---------------------------------------------------------------------------------------------
    # Pages

    def _landing(self, environ: dict[str, Any]) -> Response:
        notes = []
        if self._notify is not None:
            notes.append(f"Fmgr notifications are received with POST {self._notify.path}.")
        if self._api is not None:
            notes.append(f"Fmgr tasks can be registered with POST {TASKS_PATH} (bearer token).")
        links = "".join(
            f'<li><a href="{p}">{p}</a></li>' for p in ("/metrics", "/healthz", "/readyz")
        )
        if self._browser is not None:
            link = self._browser.link
            links += "".join(f'<li><a href="{html.escape(link(p, q))}">{name}</a></li>' for name, p, q in (
                ("/tasks: the task browser", "/tasks", ()),
                ("failed CDN tasks", "/tasks", (("status", "failure"),)),
                ("stuck CDN tasks", "/tasks", (("stuck", ""),)),
                ("/fmgr: Fmgr tasks and their items", "/fmgr", ())))
        extra = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
        page = (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{NAME}</title></head><body>"
            f"<h1>{NAME}</h1><p>Version {html.escape(self._version)}</p>"
            f"{self._demo_section(environ)}<ul>{links}</ul>{extra}</body></html>\n"
        )
        return Response("200 OK", page.encode(), "text/html; charset=utf-8")

    def _demo_section(self, environ: dict[str, Any]) -> str:
        """In ``--demo`` mode: what this is, and the demo's register token with ready-to-run examples."""
        if self._demo_token is None:
            return ""
        host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME')}:{environ.get('SERVER_PORT')}"
        url = f"{environ.get('wsgi.url_scheme', 'http')}://{host}{TASKS_PATH}"
        auth = shlex.quote(f"Authorization: Bearer {self._demo_token}")
        examples = [
            f"curl -H {auth} {shlex.quote(url + '?state=unknown&limit=5')}",
            f"curl -H {auth} -H 'Content-Type: application/json' "
            f"-d '{{\"persistentIds\": [\"my-job-1\"]}}' {shlex.quote(url)}",
        ]
        code = "".join(f"<pre>{html.escape(e)}</pre>" for e in examples)
        return (
            "<h2>Demo mode</h2><p>This is <code>cdnetworks-exporter --demo</code>: it polls the built-in vendor "
            "simulator (two CDN accounts, Fmgr jobs that notify this exporter) with a generated configuration, "
            "and a job runner registers Fmgr ids through the registration API. Nothing here is a real account.</p>"
            f"<p>The demo's register token is <code>{html.escape(self._demo_token)}</code>. List the tasks "
            "registered but not polled yet, then register one of your own:</p>"
            f"{code}"
        )

    def _metrics(self, environ: dict[str, Any]) -> Response:
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        registry: Any = self._registry
        names = parse_qs(environ.get("QUERY_STRING", "")).get("name[]")
        if names:
            registry = _NameFilter(registry, set(names))
        output = encoder(registry)
        response = Response("200 OK", output, content_type, [("Vary", "Accept, Accept-Encoding")])
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            response.body = gzip.compress(output)
            response.headers.append(("Content-Encoding", "gzip"))
        return response

    def _healthz(self, environ: dict[str, Any]) -> Response:
        return text("200 OK", "ok")

    def _readyz(self, environ: dict[str, Any]) -> Response:
        ok, reason = self._ready()
        return text("200 OK", "ready") if ok else text("503 Service Unavailable", reason or "not ready")

    def _reload_config(self, environ: dict[str, Any]) -> Response:
        # Like Prometheus: the answer comes once the new configuration serves, or says why it was refused.
        assert self._reload is not None  # the route exists only when reloading is possible
        try:
            self._reload()
        except Exception as exc:
            return text("500 Internal Server Error", f"reload failed, keeping the running configuration: {exc}")
        return text("200 OK", "configuration reloaded")

    # ---------------------------------------------------------------------------------------------
    # Registration API (exporter.fmgr.endpoints), behind its bearer token

    def _register(self, environ: dict[str, Any]) -> Response:
        denied = authorize(self._api, environ)
        if denied is not None:
            return denied
        assert self._api is not None
        return self._api.register(environ)

    def _list_tasks(self, environ: dict[str, Any]) -> Response:
        denied = authorize(self._api, environ)
        if denied is not None:
            return denied
        if self._browser is not None:
            return self._browser.fmgr_api(environ)
        api = self._api
        assert api is not None
        params = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        state = params.get("state", [None])[0] or None
        if state is not None and state not in API_STATES:
            shown = f"{state!r} is not a state" if STATE_PARAM.fullmatch(state) else "not a state name"
            return json_response("400 Bad Request",
                                 {"error": f"state: {shown}; expected one of: {', '.join(API_STATES)}"})
        limit = parse_int_param(params.get("limit", [str(LIST_LIMIT_DEFAULT)])[0], 1, LIST_LIMIT_MAX)
        if limit is None:
            return json_response(
                "400 Bad Request", {"error": f"limit: expected an integer from 1 to {LIST_LIMIT_MAX}"}
            )
        pending_param = params.get("pending", [None])[0]
        if pending_param not in (None, "true", "false"):
            return json_response("400 Bad Request", {"error": "pending: expected true or false"})
        pending = None if pending_param is None else pending_param == "true"
        return json_response("200 OK", {"tasks": api.registry.list_tasks(state, limit, pending=pending)})


class _NameFilter:
    """``name[]=`` filtering done after collecting: a family is served whole when a name is its family name
    or the name of one of its samples.

    prometheus_client's restricted_registry would follow reloads (each configuration gets its own registry,
    exporter/app.py, whose collectors describe their families), but it serves something else: only the
    samples whose names were asked for, so a family name (``cdnetworks_api_requests``, a histogram's name)
    selects nothing and ``..._count`` cuts a histogram down to its counts; and it walks the collectors in set
    order, so the families of a scrape would come in a different order from one scrape to the next."""

    def __init__(self, registry: Any, names: set[str]) -> None:
        self._registry = registry
        self._names = names

    def collect(self) -> Iterable[Any]:
        for family in self._registry.collect():
            if family.name in self._names or any(s.name in self._names for s in family.samples):
                yield family


class WebCollector(Collector):
    """What the HTTP layer refused: failed basic-auth checks and requests the server answered itself.

    Both counters live as long as the process (a reload keeps them), like the exporter's other self-metrics.
    """

    def __init__(self, auth_failures: AuthFailures, rejects: httpd.RejectCounter) -> None:
        self._auth_failures = auth_failures
        self._rejects = rejects

    def describe(self) -> Iterable[Any]:
        return (f.new() for f in metrics.WEB)

    def collect(self) -> Iterable[Any]:
        auth = metrics.WEB_AUTH_FAILURES.new()
        failures = self._auth_failures.snapshot()
        for reason in AUTH_FAILURE_REASONS:
            auth.add_metric([reason], failures.get(reason, 0))
        yield auth
        rejected = metrics.WEB_REJECTED_REQUESTS.new()
        for reason, count in self._rejects.snapshot().items():
            rejected.add_metric([reason], count)
        yield rejected


# -------------------------------------------------------------------------------------------------
# Server


class Server:
    """The exporter's HTTP server (``exporter.httpd``) on a listen address, on a background thread."""

    def __init__(
        self,
        app: httpd_app.ServedApp | Callable[..., Iterable[bytes]],
        listen_address: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        threads: int = 8,
        limits: httpd.Limits | None = None,
        rejects: httpd.RejectCounter | None = None,
    ) -> None:
        host, port = parse_listen_address(listen_address)
        self._server = httpd.Server(app, host, port, ssl_context=ssl_context, threads=threads, limits=limits,
                                    rejects=rejects)
        self._scheme = "https" if ssl_context is not None else "http"

    def swap(self, app: httpd_app.ServedApp | Callable[..., Iterable[bytes]]) -> None:
        """Serve ``app`` from the next request on, on the same socket (a reload)."""
        self._server.swap(app)

    @property
    def rejects(self) -> httpd.RejectCounter:
        return self._server.rejects

    def start(self) -> None:
        self._server.start()  # binds; raises here if the address is taken
        log.info("listening on %s", self.url)

    def stop(self) -> None:
        self._server.stop()

    @property
    def host(self) -> str:
        return self._server.bind_addr[0]

    @property
    def port(self) -> int:
        return self._server.bind_addr[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self._scheme}://{host}:{self.port}"

    @property
    def local_url(self) -> str:
        """The URL a client on this machine uses: a wildcard address is reached through the loopback."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        host = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{host}:{self.port}"
