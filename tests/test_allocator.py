"""The malloc arena cap applied at start-up (exporter/allocator.py), counted by glibc itself (malloc_info)."""

import os
import platform
import subprocess
import sys

import pytest

from exporter import cli

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the cap is glibc's")

# Eight threads that each allocate (objects above Python's small-object size come from malloc), then glibc's
# own report of its heaps: one <heap nr=...> per arena.
PROGRAM = r"""
import ctypes, ctypes.util, re, sys, tempfile, threading
from exporter.allocator import limit_arenas
if sys.argv[1] == "cap":
    assert limit_arenas()
barrier = threading.Barrier(8)
def work():
    barrier.wait()
    keep = [bytes(4096 + i) for i in range(200)]
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile() as f:
    fp = libc.fopen(f.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fclose(ctypes.c_void_p(fp))
    print(len(re.findall(r'<heap nr="\d+"', open(f.name).read())))
"""


def arenas(mode: str, env: dict[str, str] | None = None) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {})
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, timeout=60,
                         env=environ, check=True)
    return int(out.stdout.strip())


def test_the_cap_holds_threads_to_two_arenas_where_they_would_take_one_each():
    without = arenas("none")
    assert without > 4, "eight allocating threads should each take an arena by default"
    assert arenas("cap") <= 2


def test_an_operators_malloc_arena_max_wins():
    assert arenas("cap", {"MALLOC_ARENA_MAX": "4"}) in (3, 4)


def test_the_exporter_applies_it_before_its_threads_start(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "limit_arenas", lambda: calls.append("cap"))
    monkeypatch.setattr(cli, "load_configs", lambda args: (calls.append("config"), None, ["stop here"]))
    assert cli.main(["--demo"]) == cli.EXIT_CONFIG
    assert calls == ["cap", "config"]
