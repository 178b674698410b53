"""The app's side of the HTTP server: the interface it serves (``ServedApp``: a WSGI call, the body limit of a
route, the lane a request runs on) and the worker threads those lanes are (``Workers``). The server in
``server.py`` owns the connections, HTTP/1.1 framing and limits; it calls the app only through this interface.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)

# Set in the environ of a request whose body was over its route's limit and was not read: answer 413.
BODY_TOO_LARGE = "exporter.body_too_large"

# What an app's admit() returns for a request that needs slow work (a bcrypt check) before it can be served,
# and for one whose slow work goes first (a password refused unchecked before), on a lane of its own.
SLOW = "slow"
SLOW_FIRST = "slow-first"

# A finished WSGI answer: status line, headers, body.
Finished = tuple[str, list[tuple[str, str]], bytes]
# What admit() returns: None (run on the common workers), SLOW or SLOW_FIRST (run on that lane), or a finished
# answer.
Verdict = Finished | str | None



@runtime_checkable
class ServedApp(Protocol):
    """What the server serves: a WSGI app that also says, before its body is read, how large a body a route
    accepts (``body_limit``) and on which lane a request runs (``admit``: a ``Verdict``)."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]: ...

    def body_limit(self, path: str) -> int: ...

    def admit(self, environ: dict[str, Any], slow_lane_full: bool, first_lane_full: bool) -> Verdict: ...


class PlainApp:
    """A bare WSGI callable as a ``ServedApp``: the default body limit, every request on the common workers."""

    def __init__(self, app: Callable[..., Iterable[bytes]], body_bytes: int) -> None:
        self.app, self.body_bytes = app, body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self.app(environ, start_response)

    def body_limit(self, path: str) -> int:
        return self.body_bytes

    def admit(self, environ: dict[str, Any], slow_lane_full: bool, first_lane_full: bool) -> Verdict:
        return None


class Workers:
    """Threads that run blocking calls for the event loop: a call goes in with a future of the loop and its
    result comes back to that future. (``run_in_executor`` does the same through a second, thread-safe
    future chained to the loop's; on the notification path that bookkeeping costs about as much as
    verifying the signature.)"""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[Any], Any],
                                             Any] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> asyncio.Future[Any]:
        """Run ``fn(arg)`` on a worker; the future (of the running loop) gets its result or its exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put((loop, future, fn, arg))
        return future

    def stop(self, timeout: float) -> None:
        """No new work; wait up to ``timeout`` in all for calls in progress (each worker ends after its current
        one; a worker still busy then is a daemon thread and does not keep the process alive)."""
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            loop, future, fn, arg = work
            result: Any = None
            error: Exception | None = None
            try:
                result = fn(arg)
            except Exception as exc:  # handed to the awaiting coroutine, which decides
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: the server stopped and nobody waits for this answer
                log.debug("an answer finished after the server stopped; dropped")


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
