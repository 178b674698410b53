"""In-process fake of the vendor: the CDN task status queries and the object-storage Fmgr API.

It is the test double for the whole vendor (the test suite and ``--demo`` run the real HTTP path
against it), so it is strict wherever the vendor documents are (seed 002 for the CDN, seeds 000/001
for Fmgr) and deterministic: every task is a pure function of ``(seed, inputs, time)`` and the clock
is injected, so a test can move time forward instead of sleeping.

High-volume CDN streams are generated lazily, one minute slot at a time, by seeding a private RNG
from a hash of the slot; nothing is stored up front and ``cdn_truth`` sees exactly what the wire
serves.

One module per concern, composed by ``Simulator`` (server.py):

* ``clock``: ``ManualClock``, the settable clock shared with the exporter in tests and benchmarks.
* ``settings``: the tunables every part reads at request time; ``draws``: seeded, order-free draws.
* ``wire``: paths, content types, seed 002's messages and the response shapes.
* ``cdn``: CDN tasks, streams, slot summaries and the ItemIdQuery answer.
* ``quota``: the daily quotas (drop as tasks are submitted, start over at midnight UTC+8) and their answer.
* ``fmgr``: Fmgr tasks, streams, status codes and the ``/fmgr/status`` answer.
* ``notifier``: signed notification delivery (retries, give-ups, duplicates, forgeries).
* ``auth``: the accounts, Basic and AK/SK verification.
* ``faults``: injected faults (some paced or streamed: a trickle, a stall, a huge answer);
  ``limits``: rate limits and the request log.
* ``server``: the HTTP server, the router and the ``Simulator`` facade.
"""

from exporter.simulator.auth import AKSK_TIMESTAMP_SKEW
from exporter.simulator.cdn import (
    MAX_QUERY_SPAN,
    QUERY_STATUSES,
    SLOT_SECONDS,
    SUMMARY_CACHE_SIZE,
    TASK_KINDS,
    TASK_STATUSES,
    TASKS_CACHE_SIZE,
    TIME_FORMAT,
    parse_offset,
)
from exporter.simulator.clock import ManualClock
from exporter.simulator.faults import CODE0_FAULT_PREFIX, FAULTS, HUGE, MALFORMED_CDN_BODY, MALFORMED_FMGR_BODY, PACED
from exporter.simulator.fmgr import FMGR_ITEM_DESC, FMGR_OPS, FMGR_TASK_DESC
from exporter.simulator.server import Simulator
from exporter.simulator.wire import (
    APIS,
    CDN_CONTENT_TYPE,
    CDN_PATHS,
    FMGR_PATH,
    JSON_CONTENT_TYPE,
    MSG_AUTH_FAILED,
    MSG_END_BEFORE_START,
    MSG_PAGE_NO,
    MSG_PAGE_SIZE,
    MSG_PARSE_JSON,
    MSG_RATE_LIMITED,
    MSG_STATUS,
    MSG_TIME_EMPTY,
    MSG_TIME_ERROR,
    MSG_TOO_OLD,
    MSG_USERNAME_INVALID,
    QUOTA_PATHS,
)

__all__ = [
    "AKSK_TIMESTAMP_SKEW",
    "APIS",
    "CDN_CONTENT_TYPE",
    "CDN_PATHS",
    "CODE0_FAULT_PREFIX",
    "FAULTS",
    "FMGR_ITEM_DESC",
    "FMGR_OPS",
    "FMGR_PATH",
    "FMGR_TASK_DESC",
    "HUGE",
    "JSON_CONTENT_TYPE",
    "MALFORMED_CDN_BODY",
    "MALFORMED_FMGR_BODY",
    "MAX_QUERY_SPAN",
    "MSG_AUTH_FAILED",
    "MSG_END_BEFORE_START",
    "MSG_PAGE_NO",
    "MSG_PAGE_SIZE",
    "MSG_PARSE_JSON",
    "MSG_RATE_LIMITED",
    "MSG_STATUS",
    "MSG_TIME_EMPTY",
    "MSG_TIME_ERROR",
    "MSG_TOO_OLD",
    "MSG_USERNAME_INVALID",
    "PACED",
    "QUERY_STATUSES",
    "QUOTA_PATHS",
    "SLOT_SECONDS",
    "SUMMARY_CACHE_SIZE",
    "TASKS_CACHE_SIZE",
    "TASK_KINDS",
    "TASK_STATUSES",
    "TIME_FORMAT",
    "ManualClock",
    "Simulator",
    "parse_offset",
]
