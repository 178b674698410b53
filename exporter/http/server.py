"""The HTTP/1.1 server: an asyncio front end that reads whole requests, then a small pool runs the WSGI app.

Why not a thread per connection (cheroot, the stdlib): there a worker is taken as soon as a connection
sends its first byte and is held while the client trickles the rest, so a handful of slow clients stops
every scrape. Here connections cost a coroutine, not a worker. A request reaches the pool only once its
head and body are complete, within limits and deadlines that hold for the whole head and the whole body
(not per byte), so no client, slow or large, can hold a worker while it sends. Each connection is an
``asyncio.Protocol`` that feeds what it receives straight into its parser and wakes the connection's task;
a request costs no timer (one per connection, moved only when a deadline comes earlier) and one hop to a
worker and back (``Workers``). HTTP parsing is h11's
(python-hyper's sans-IO HTTP/1.1, the parser under uvicorn, hypercorn and httpx): it enforces the framing
rules (Content-Length vs chunked, keep-alive) that a hand-written parser tends to get wrong.

What a client gets when it breaks a limit (``Limits``): 431 for a head over ``max_header_bytes`` or with
more than ``max_headers`` fields, 414 for a request line over ``max_request_line``, 413 for a body over the
route's limit (decided from Content-Length before anything is read, or cut off at the first byte over it),
408 when the head or the body is not complete within its deadline (an unended chunked body included),
400 for anything h11 cannot parse. Those answers close the connection. A connection with no request in
flight is closed after ``idle_timeout``. At ``max_connections``, a new connection takes the place of the oldest one
with no request in progress (idle between requests, or still sending its head): one client holding more
connections than the limit, re-opening them as they close, cannot keep a scrape out. Only when every connection
has a request in progress is the new one closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import io
import logging
import math
import socket
import ssl
import struct
import sys
import termios
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import h11

from exporter.http.served import (
    BODY_TOO_LARGE,
    SLOW_FIRST,
    PlainApp,
    ServedApp,
    Verdict,
    Workers,
)

log = logging.getLogger(__name__)

SERVER_NAME = "cdnetworks-exporter"
_SERVER = SERVER_NAME.encode()

# Why a request was refused before the app saw it: the label values of cdnetworks_web_rejected_requests_total.
EVICT_SCAN = 64  # idle connections looked at for one that may be closed to make room at the connection limit
REJECT_REASONS = ("header_too_large", "body_too_large", "timeout", "bad_request", "too_many_connections")


LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 2.0
# Bytes a connection may have received and not yet parsed (pipelined behind a request being served) before the
# server stops reading from it until its handler catches up.
READ_AHEAD_BYTES = 256 * 1024


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 16 * 1024  # request line plus every header line
    max_headers: int = 100
    max_request_line: int = 8 * 1024
    header_timeout: float = 10.0  # from a request's first byte to the end of its head (also the TLS handshake)
    body_timeout: float = 30.0  # from the end of the head to the end of the body
    idle_timeout: float = 120.0  # a keep-alive connection waiting for its next request
    write_timeout: float = 30.0  # for the client to take a response
    max_connections: int = 1000
    slow_workers: int = 2  # for requests the app calls slow (bcrypt); most of them wait for one lock anyway
    slow_lane: int = 8  # slow requests running or queued at once; past it the app refuses them (admit)
    first_workers: int = 1  # for the slow requests the app puts first (SLOW_FIRST)
    first_lane: int = 4  # those running or queued at once; past it the app refuses them (admit)
    # A 401 is sent this late: a client guessing passwords on one connection gets one guess a second, and
    # the waiting costs the server a timer, not a worker.
    unauthorized_delay: float = 1.0
    default_body_bytes: int = 0  # routes that take no body
    # Scrapes first: a request for one of these paths runs on workers of its own, and while one runs, other
    # requests wait (up to priority_hold) before they take a worker, so that a burst of notifications does not
    # share the interpreter with the render. The wait is bounded, so a flood of scrapes cannot stop the rest.
    priority_paths: tuple[str, ...] = ("/metrics",)
    priority_workers: int = 2
    priority_hold: float = 0.25


class RejectCounter:
    """Requests refused by the server itself, by reason; kept for the life of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def inc(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {reason: self._counts[reason] for reason in REJECT_REASONS}


class _Refuse(Exception):
    """Answer ``status`` and close the connection; ``reason`` is counted."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class _Closed(Exception):
    """The client went away, or sent nothing before its deadline: close without an answer."""


_STATUS_TEXT = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large", 414: "URI Too Long",
                431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class _Connection(asyncio.Protocol):
    """One client connection: bytes go straight into its h11 parser, and its task (``Server._serve_connection``)
    is woken when there is something new to parse. Deadlines are set per phase (head, body, idle, write),
    not per read; reading stops while READ_AHEAD_BYTES are waiting unparsed, and writing waits while the
    transport's buffer is full."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._loop = asyncio.get_running_loop()
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.limits.max_header_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, str] = ("", "")
        self.closed = False  # the transport is gone
        self.eof = False  # the client sent its end of stream
        self.expired = False  # the current deadline has passed
        self.discarding = False  # lingering: received bytes are counted and dropped
        self.discarded = 0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._eof_told = False
        self.evicted = False  # closed by the server to make room for a new connection

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), str(peer[1]) if len(peer) > 1 else "")
        self.server._connection_made(self)

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            self.discarded += len(data)
        else:
            self.h11.receive_data(data)
            if len(self.h11.trailing_data[0]) > READ_AHEAD_BYTES and not self._reading_paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self._reading_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        if not self.discarding:
            self.h11.receive_data(b"")
        self._wake()
        return True  # keep the transport open: an answer may still be on its way

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- for the connection's task

    def set_deadline(self, seconds: float) -> None:
        """From now on, a wait that lasts past ``seconds`` from now raises TimeoutError.

        One timer per connection, moved only when a deadline comes earlier than the one it is set for; when it
        fires early (the deadline moved later meanwhile) it is set again. A request thus costs no timer."""
        self.expired = False
        at = self._loop.time() + seconds
        self._deadline_at = at
        timer = self._timer
        if timer is None or timer.when() > at:
            if timer is not None:
                timer.cancel()
            self._timer = self._loop.call_at(at, self._expire)

    def clear_deadline(self) -> None:
        self._deadline_at = math.inf
        self.expired = False

    def _expire(self) -> None:
        self._timer = None
        at = self._deadline_at
        if at == math.inf:
            return
        if self._loop.time() < at:
            self._timer = self._loop.call_at(at, self._expire)
            return
        self.expired = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def more(self) -> None:
        """Wait until something was received (or the client closed its side, or the connection is gone).
        TimeoutError once the deadline has passed; ConnectionError when the connection is gone."""
        if self.expired:
            raise TimeoutError
        if self.closed:
            raise ConnectionResetError("connection lost")
        if self.eof:
            if self._eof_told:
                raise ConnectionResetError("the client closed its side")
            self._eof_told = True
            return  # nothing more will come: the parser has been told, let it say what that means
        if self._reading_paused:
            assert self.transport is not None
            self._reading_paused = False
            self.transport.resume_reading()
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        self._check()

    def _check(self) -> None:
        if self.expired:
            raise TimeoutError
        if self.closed and not self.discarding:
            raise ConnectionResetError("connection lost")

    async def write(self, data: bytes, timeout: float) -> None:
        if self.closed:
            raise ConnectionResetError("connection lost")
        assert self.transport is not None
        self.transport.write(data)
        if self._writing_paused:
            self._drained = self._loop.create_future()
            try:
                await asyncio.wait_for(self._drained, timeout)
            finally:
                self._drained = None
            if self.closed:
                raise ConnectionResetError("connection lost")

    def close(self) -> None:
        self.clear_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


def _nofile_limit() -> int:
    try:
        import resource  # not on Windows

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return soft if soft > 0 else 1 << 16
    except (ImportError, OSError, ValueError):
        return 1 << 16


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket. An empty host or ``::`` is every interface, IPv4 and IPv6 on one dual-stack socket,
    as Go exporters listen on ``:port``; a kernel without IPv6 gets the IPv4 wildcard. ``0.0.0.0`` is IPv4 only,
    any other address that address alone."""
    if host in ("", "::"):
        if socket.has_dualstack_ipv6():
            try:
                return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=1024)
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
                    raise
        if host == "":
            host = "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=1024)



def _pending_bytes(conn: _Connection) -> int:
    """Bytes the client has sent on ``conn`` that the server has not read yet (FIONREAD); 0 when unknown."""
    sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
    if sock is None:
        return 0
    try:
        buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", buf)[0])


class Server:
    """Serves a WSGI app on ``host:port`` from a background thread (the event loop) and ``threads`` workers.

    The app is a ``ServedApp`` (a bare WSGI callable is served as a ``PlainApp``); ``swap`` replaces it while
    the socket stays open (a reload). A request whose body is over the app's ``body_limit`` is still given to
    the app, with an empty body and ``environ[BODY_TOO_LARGE]`` set, so that the app answers 413 in its own
    format (and counts it); the connection is closed after that answer.
    """

    def __init__(
        self,
        app: ServedApp | Callable[..., Iterable[bytes]],
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        threads: int = 8,
        limits: Limits | None = None,
        rejects: RejectCounter | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.app: ServedApp = self._served(app)
        self.rejects = rejects or RejectCounter()
        self._host, self._port = host, port
        self._ssl = ssl_context
        self._threads = threads
        # Keep some descriptors for the store, the vendor clients and the listening socket itself.
        self._max_connections = max(16, min(self.limits.max_connections, _nofile_limit() - 64))
        self._connections = 0
        # Open connections with no request in progress, the one idle longest first: the ones to close at the limit.
        self._idle: OrderedDict[_Connection, None] = OrderedDict()
        # The same, for connections that have carried a request (a scraper's keep-alive connection between two
        # scrapes): closed to make room only when no connection that never carried one is left to close.
        self._idle_used: OrderedDict[_Connection, None] = OrderedDict()
        self._sock: socket.socket | None = None
        self._addr: tuple[str, int] = ("", 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Workers | None = None
        self._slow_pool: Workers | None = None
        self._priority_pool: Workers | None = None
        self._slow_pending = 0
        self._first_pool: Workers | None = None
        self._first_pending = 0
        self._priority_running = 0
        self._priority_done: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None

    # ---------------------------------------------------------------------------------------------
    # Life cycle

    def start(self) -> None:
        # Bound here, on the caller's thread, so that an address in use fails start() itself.
        self._sock = _listen(self._host, self._port)
        addr = self._sock.getsockname()
        self._addr = (str(addr[0]), int(addr[1]))
        self._pool = Workers(self._threads, "http-worker")
        self._slow_pool = Workers(self.limits.slow_workers, "http-slow")
        self._first_pool = Workers(self.limits.first_workers, "http-slow-first")
        self._priority_pool = Workers(self.limits.priority_workers, "http-priority")
        self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)
        self._thread.start()
        self._started.wait(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception:
            log.exception("HTTP server stopped with an error")
        finally:
            # A connection accepted while stopping may still be running: end it on the loop, not at garbage
            # collection after the loop is closed (its cleanup would fail there).
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        self._priority_done = asyncio.Event()
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        server = await loop.create_server(
            lambda: _Connection(self), sock=self._sock, ssl=self._ssl, backlog=1024,
            ssl_handshake_timeout=self.limits.header_timeout if self._ssl else None,
        )
        self._started.set()
        async with server:
            await self._stopping.wait()
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)

    def stop(self) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for pool in (self._pool, self._slow_pool, self._first_pool, self._priority_pool):
            if pool is not None:
                pool.stop(timeout=5)
        self._pool = self._slow_pool = self._first_pool = self._priority_pool = None
        if self._sock is not None:
            self._sock.close()

    @property
    def bind_addr(self) -> tuple[str, int]:
        assert self._sock is not None, "not started"
        return self._addr

    def _served(self, app: ServedApp | Callable[..., Iterable[bytes]]) -> ServedApp:
        return app if isinstance(app, ServedApp) else PlainApp(app, self.limits.default_body_bytes)

    def swap(self, app: ServedApp | Callable[..., Iterable[bytes]]) -> None:
        """Serve ``app`` from the next request on (a reload); requests in progress finish on the old one."""
        self.app = self._served(app)

    @property
    def connections(self) -> int:
        return self._connections

    # ---------------------------------------------------------------------------------------------
    # One connection

    def _connection_made(self, conn: _Connection) -> None:
        """Called by a new connection's protocol, on the loop: past the limit it takes the place of the connection
        idle longest (or is refused when every one has a request in progress); then its task starts."""
        if self._connections >= self._max_connections:
            self.rejects.inc("too_many_connections")
            oldest = self._victim()
            if oldest is None:
                conn.close()
                return
            self._idle.pop(oldest, None)
            self._idle_used.pop(oldest, None)
            oldest.evicted = True  # counted out now: its task ends at the next turn of the loop
            self._connections -= 1
            oldest.close()
        self._connections += 1
        self._idle[conn] = None
        task = asyncio.get_running_loop().create_task(self._serve_connection(conn))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._connection_done, conn))

    def _victim(self) -> _Connection | None:
        """The connection idle longest that has no request waiting to be read, among those that never carried a
        request first (a client holding connections open without using them goes before a scraper's keep-alive
        connection waiting for its next scrape). A connection whose request bytes are in the kernel's buffer but
        not read yet (the loop is busy accepting a flood) is about to be served: closing it would let a client
        re-opening connections as fast as it can push out a scrape that was let in a moment before. At most
        EVICT_SCAN of each kind are looked at, so a full table costs a bounded walk."""
        for idle in (self._idle, self._idle_used):
            for i, conn in enumerate(idle):
                if i >= EVICT_SCAN:
                    break
                if not _pending_bytes(conn):
                    return conn
        return None

    def _connection_done(self, conn: _Connection, task: asyncio.Task[None]) -> None:
        self._idle.pop(conn, None)
        self._idle_used.pop(conn, None)
        if not conn.evicted:
            self._connections -= 1
        self._tasks.discard(task)

    def _set_busy(self, conn: _Connection, busy: bool) -> None:
        """A request is in progress on ``conn`` (its head is in), or not (answered; or its 401 is only waiting to be
        sent): only connections without one may be closed to make room for a new connection."""
        if busy:
            self._idle.pop(conn, None)
            self._idle_used.pop(conn, None)
        elif not conn.evicted and not conn.closed:
            self._idle_used[conn] = None
            self._idle_used.move_to_end(conn)

    async def _serve_connection(self, conn: _Connection) -> None:
        try:
            await self._requests(conn)
        except (ConnectionError, _Closed, asyncio.CancelledError, ssl.SSLError, TimeoutError):
            pass  # the client went away or was too slow: nothing to answer, nothing to report
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            conn.close()

    async def _requests(self, conn: _Connection) -> None:
        lim = self.limits
        first = True
        while True:
            try:
                request, body, too_large = await self._read_request(conn, first)
            except _Refuse as refuse:
                self.rejects.inc(refuse.reason)
                await self._send_error(conn, refuse.status, refuse.message)
                await self._linger(conn)
                return
            first = False
            environ = self._environ(request, body, conn)
            if too_large:
                # The app answers (and counts) it like any oversized body; the rest of it is never read.
                self.rejects.inc("body_too_large")
                environ[BODY_TOO_LARGE] = True
            status, headers, payload = await self._dispatch(environ)
            if status.startswith("401") and lim.unauthorized_delay > 0:
                self._set_busy(conn, False)  # a refusal waiting to be sent may make room for another connection
                await asyncio.sleep(lim.unauthorized_delay)
                if conn.evicted:
                    return
                self._set_busy(conn, True)
            keep = await self._send_response(conn, request, status, headers, payload, close=too_large)
            if too_large:
                await self._linger(conn)
                return
            h = conn.h11
            if not keep or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
                return
            h.start_next_cycle()
            self._set_busy(conn, False)

    async def _read_request(self, conn: _Connection, first: bool) -> tuple[h11.Request, bytes, bool]:
        lim = self.limits
        h = conn.h11
        # Waiting for a request to begin: a new connection gets the head deadline, a kept-alive one the idle one.
        conn.set_deadline(lim.header_timeout if first else lim.idle_timeout)
        started = False  # a byte of this request has arrived
        try:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    # h11 keeps the head in its buffer until it is complete.
                    buffered = h.trailing_data[0]
                    if not started and buffered:  # a byte arrived (or was pipelined behind the last request)
                        started = True
                        conn.set_deadline(lim.header_timeout)
                    if len(buffered) > lim.max_request_line and b"\n" not in buffered[: lim.max_request_line + 2]:
                        raise _Refuse(414, "header_too_large", "request line too long")
                    try:
                        await conn.more()
                    except TimeoutError:
                        if started or h.trailing_data[0]:
                            raise _Refuse(408, "timeout", "request head not complete in time") from None
                        raise _Closed from None
                    continue
                if isinstance(event, h11.ConnectionClosed):
                    raise _Closed
                if isinstance(event, h11.Request):
                    break
                raise _Closed  # nothing else can come first
        except h11.RemoteProtocolError as exc:
            if not started and not h.trailing_data[0]:
                raise _Closed from None  # closed before sending anything
            status = exc.error_status_hint
            raise _Refuse(status, "header_too_large" if status == 431 else "bad_request", str(exc)) from None
        request = event
        self._set_busy(conn, True)
        if len(request.target) > lim.max_request_line:
            raise _Refuse(414, "header_too_large", "request line too long")
        if len(request.headers) > lim.max_headers:
            raise _Refuse(431, "header_too_large", f"more than {lim.max_headers} header fields")

        limit = self._body_limit(request)
        declared = _content_length(request)
        if declared is not None and declared > limit:
            conn.clear_deadline()
            return request, b"", True  # refused unread; the connection closes after the 413
        if h.they_are_waiting_for_100_continue:
            await conn.write(h.send(h11.InformationalResponse(status_code=100, headers=[])) or b"",
                             lim.write_timeout)
        body = bytearray()
        conn.set_deadline(lim.body_timeout)
        try:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    try:
                        await conn.more()
                    except TimeoutError:
                        raise _Refuse(408, "timeout", "request body not complete in time") from None
                    continue
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > limit:
                        conn.clear_deadline()
                        return request, b"", True
                    continue
                if isinstance(event, h11.EndOfMessage):
                    conn.clear_deadline()
                    return request, bytes(body), False
                raise _Closed
        except h11.RemoteProtocolError as exc:
            raise _Refuse(400, "bad_request", str(exc)) from None

    def _body_limit(self, request: h11.Request) -> int:
        target = request.target.split(b"?", 1)[0]
        path = unquote_to_bytes(target).decode("latin-1")
        try:
            return int(self.app.body_limit(path))
        except Exception:
            log.exception("body_limit failed for %s", path)
            return self.limits.default_body_bytes

    # ---------------------------------------------------------------------------------------------
    # The app, on a worker

    def _environ(self, request: h11.Request, body: bytes, conn: _Connection) -> dict[str, Any]:
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        if path.startswith(("http://", "https://")):  # absolute-form: keep the path
            path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
        host, port = self._addr
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii", "replace"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1") if "%" in path else path,
            "QUERY_STRING": query,
            "SERVER_NAME": host,
            "SERVER_PORT": str(port),
            "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
            "REMOTE_ADDR": conn.peer[0],
            "REMOTE_PORT": conn.peer[1],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "https" if self._ssl is not None else "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body)),
        }
        for raw_name, raw_value in request.headers:
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if name == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
                continue
            if name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue  # the body is already whole; CONTENT_LENGTH says its size
            key = "HTTP_" + name
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    async def _dispatch(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        assert self._pool is not None and self._slow_pool is not None and self._first_pool is not None
        verdict: Verdict = None
        if not environ.get(BODY_TOO_LARGE):
            try:
                verdict = self.app.admit(environ, self._slow_pending >= self.limits.slow_lane,
                                         self._first_pending >= self.limits.first_lane)
            except Exception:
                log.exception("admission failed for %s", environ.get("PATH_INFO"))
                return "500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")], b"internal error\n"
        if verdict is None:
            if environ["PATH_INFO"] in self.limits.priority_paths:
                return await self._run_first(environ)
            if self._priority_running:
                await self._after_priority()
            return await self._pool.submit(self._call_app, environ)  # type: ignore[no-any-return]
        if verdict == SLOW_FIRST:
            self._first_pending += 1
            try:
                return await self._first_pool.submit(self._call_app, environ)  # type: ignore[no-any-return]
            finally:
                self._first_pending -= 1
        if isinstance(verdict, str):  # SLOW, the other str verdict
            self._slow_pending += 1
            if self._priority_running:  # a page render or a bcrypt check starts once the scrapes are served
                await self._after_priority()
            try:
                return await self._slow_pool.submit(self._call_app, environ)  # type: ignore[no-any-return]
            finally:
                self._slow_pending -= 1
        return verdict  # answered without a worker

    async def _run_first(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        """A priority request (a scrape), on its own workers, while other requests wait to start."""
        assert self._priority_pool is not None and self._priority_done is not None
        self._priority_running += 1
        self._priority_done.clear()
        try:
            return await self._priority_pool.submit(self._call_app, environ)  # type: ignore[no-any-return]
        finally:
            self._priority_running -= 1
            if not self._priority_running:
                self._priority_done.set()

    async def _after_priority(self) -> None:
        """Wait until no priority request runs, or ``priority_hold`` has passed (then go ahead anyway)."""
        assert self._priority_done is not None
        with contextlib.suppress(asyncio.TimeoutError):  # held long enough: served now, next to the scrapes
            await asyncio.wait_for(self._priority_done.wait(), self.limits.priority_hold)

    def _call_app(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        captured: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., None]:
            captured[:] = [status, headers]
            return lambda _data: None

        try:
            result = self.app(environ, start_response)
            try:
                payload = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            status, headers = captured
            return str(status), list(headers), payload
        except Exception:
            log.exception("unhandled error serving %s %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"))
            return "500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8")], b"internal error\n"

    # ---------------------------------------------------------------------------------------------
    # Writing

    async def _send_response(
        self, conn: _Connection, request: h11.Request, status: str, headers: list[tuple[str, str]], payload: bytes,
        *, close: bool = False,
    ) -> bool:
        code, _, reason_text = status.partition(" ")
        status_code, reason = int(code), reason_text.encode("latin-1")
        out = []
        has_length = False
        for n, v in headers:
            low = n.lower()
            if low == "connection":
                continue
            has_length = has_length or low == "content-length"
            out.append((n.encode("latin-1"), v.encode("latin-1")))
        if not has_length:
            out.append((b"Content-Length", str(len(payload)).encode()))
        out.append((b"Server", _SERVER))
        keep = not close and not self._stopping_soon()
        if not keep:
            out.append((b"Connection", b"close"))
        # One write for head and body: separate small segments meet the client's delayed ACK (40 ms each).
        h = conn.h11
        data = h.send(h11.Response(status_code=status_code, headers=out, reason=reason)) or b""
        if payload and request.method != b"HEAD":
            data += h.send(h11.Data(data=payload)) or b""
        data += h.send(h11.EndOfMessage()) or b""
        await conn.write(data, self.limits.write_timeout)
        return keep

    async def _linger(self, conn: _Connection) -> None:
        """Before closing on a refused request, drop a little of what the client is still sending: closing
        with unread data makes the kernel send a reset, which can destroy the answer before it is read."""
        conn.discarding = True
        conn.set_deadline(LINGER_SECONDS)
        with contextlib.suppress(TimeoutError, ConnectionError):  # the deadline or the client ends the lingering
            while conn.discarded < LINGER_BYTES and not conn.eof and not conn.closed:
                await conn.more()

    def _stopping_soon(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    async def _send_error(self, conn: _Connection, status: int, message: str) -> None:
        body = f"{_STATUS_TEXT.get(status, 'Error')}: {message}\n".encode()
        headers = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Content-Length", str(len(body)).encode()),
                   (b"Connection", b"close"), (b"Server", _SERVER)]
        h = conn.h11
        if h.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                data = h.send(h11.Response(
                    status_code=status, headers=headers, reason=_STATUS_TEXT.get(status, "Error").encode())) or b""
                data += h.send(h11.Data(data=body)) or b""
                data += h.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError:
                data = b""
        else:
            data = b""
        if not data:
            # h11 will not frame a response in this state (e.g. the request line never parsed): write it raw.
            head = f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\n".encode()
            data = head + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body
        with contextlib.suppress(TimeoutError, ConnectionError):  # the client is gone: nobody to tell
            await conn.write(data, self.limits.write_timeout)


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is one well-formed number
    return None
