"""The C allocator's arena limit: what keeps a long-running exporter's memory flat.

glibc gives each thread that allocates while another holds an arena a new one, up to 8 per core, and an arena
keeps the pages it once held. The exporter's HTTP workers, pollers, lease keeper and group commit all allocate
(Python objects, SQLite pages), so its RSS crept up for minutes after start-up: +12.9% over a 10-minute soak
(``benchmarks/bench_soak.py``), all of it anonymous memory, against +0.0% from the second minute on with two
arenas. Python's small objects come from its own allocator (pymalloc), so the cap concerns only larger
allocations and SQLite's; the notification and scrape benchmarks showed no difference beyond their noise.

Applied at start-up, before the threads exist, with ``mallopt(M_ARENA_MAX)``; an operator's own
``MALLOC_ARENA_MAX`` (which glibc reads itself) wins. Elsewhere (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

ARENA_MAX = 2
_M_ARENA_MAX = -8  # from glibc's <malloc.h>


def limit_arenas(arenas: int = ARENA_MAX) -> bool:
    """Cap glibc's malloc arenas at ``arenas``; True when the cap is in force (set here or by the
    environment)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return True  # glibc applied the operator's value when the process started
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        ok = bool(libc.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(arenas)))
    except (OSError, AttributeError) as exc:
        log.warning("could not limit malloc arenas: %s", exc)
        return False
    if not ok:
        log.warning("mallopt(M_ARENA_MAX, %d) was refused", arenas)
    return ok
