"""``--log.level debug`` shows every vendor request: one line per call of either client, against the simulator,
with what was asked, what came back, the duration and the result (``ok`` or the error's kind)."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
from conftest import T0, make_config

from exporter.fmgr.wire import FmgrApiError, FmgrClient
from exporter.vendor.cdn import ApiError, CdnClient

DURATION = r"duration=\d+\.\d{3}s"
# As the request says it: the account's time zone (+08:00 here), to the second.
RANGE = r'range="2026-11-22 15:00:00\.\.2026-11-22 16:00:00"'


def messages(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


def test_each_cdn_request_is_one_debug_line(sim_factory, clock, tmp_path: Path, caplog) -> None:
    sim = sim_factory()
    for i in range(3):
        sim.add_cdn_task("acme", "prefetch", f"http://example.com/{i}", T0 - 900 + i)
    account = make_config(sim.url, str(tmp_path / "s.db")).accounts[0]
    clock.advance(60)
    caplog.set_level(logging.DEBUG, logger="exporter.vendor.cdn")

    page = CdnClient(account, clock=clock, timeout=5).query("prefetch", T0 - 3600, T0, page_no=1, page_size=2)
    assert (page.count, page.rows) == (3, 2)
    (line,) = messages(caplog, "exporter.vendor.cdn")
    assert re.fullmatch(rf"vendor request api=prefetch account=acme {RANGE} page=1 page_size=2 count=3 rows=2 "
                        rf"{DURATION} result=ok", line), line

    caplog.clear()
    wrong = dataclasses.replace(account, api_key="not-the-key")
    with pytest.raises(ApiError):
        CdnClient(wrong, clock=clock, timeout=5).query("prefetch", T0 - 3600, T0, page_no=2, page_size=50)
    (line,) = messages(caplog, "exporter.vendor.cdn")
    assert re.fullmatch(rf"vendor request api=prefetch account=acme {RANGE} page=2 page_size=50 error=.+ "
                        rf"{DURATION} result=auth", line), line


def test_each_fmgr_request_is_one_debug_line(sim_factory, clock, caplog) -> None:
    sim = sim_factory()
    sim.add_fmgr_task("job-1", ["fetch", "copy"], created_ts=T0)
    caplog.set_level(logging.DEBUG, logger="exporter.fmgr.wire")
    client = FmgrClient(sim.url, timeout=5)

    assert client.status("job-1").id == "job-1"
    with pytest.raises(FmgrApiError):
        client.status("ghost")
    ok, missing = messages(caplog, "exporter.fmgr.wire")
    assert re.fullmatch(rf"vendor request api=fmgr id=job-1 code=0 items=2 {DURATION} result=ok", ok), ok
    assert re.fullmatch(rf"vendor request api=fmgr id=ghost error=.+ {DURATION} result=not_found", missing), missing


def test_nothing_is_logged_above_debug(sim_factory, clock, tmp_path: Path, caplog) -> None:
    sim = sim_factory()
    sim.add_fmgr_task("job-1", ["fetch"], created_ts=T0)
    account = make_config(sim.url, str(tmp_path / "s.db")).accounts[0]
    caplog.set_level(logging.INFO)
    CdnClient(account, clock=clock, timeout=5).query("prefetch", T0 - 3600, T0)
    FmgrClient(sim.url, timeout=5).status("job-1")
    assert not [r for r in caplog.records if r.name in ("exporter.vendor.cdn", "exporter.fmgr.wire")]
