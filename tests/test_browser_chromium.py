"""The task browser in a real browser: headless Chromium (Debian's ``chromium``) loads the pages from the exporter
running against the simulator, with no script (the pages have none), and what it shows is checked against the
simulator's truth. It follows links the way a person does: the one in an alert's annotation, a dashboard's data
link, and the "Next page" link read from the page it has loaded. Under CI=true a missing chromium fails (the test
command installs it); elsewhere the test skips.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import test_browser as tb
import yaml
from conftest import ROOT, load_rules_generator, require_tool

HOUR = 3600.0


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = require_tool("chromium", "chromium")
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=120, check=False)


def dom(tmp_path: Path, url: str) -> str:
    """The DOM after load, as Chromium serialises it; no CSP violation reported while loading it."""
    done = chromium(tmp_path, "--dump-dom", url)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Content Security Policy" not in done.stderr, "the page's own style must satisfy its CSP"
    assert "</html>" in done.stdout and "<h1>" in done.stdout, done.stdout[:500]
    return done.stdout


def failures_of(rig: tb.Rig, account: str, kind: str) -> list[dict[str, Any]]:
    now = rig.clock()
    return sorted((t for t in rig.truth(account, kind, tb.window_start(now, HOUR), now) if t["status"] == "failure"),
                  key=tb.key_of, reverse=True)


@pytest.fixture
def rig(sim_factory, clock, tmp_path):
    yield from tb.make_rig(sim_factory, clock, tmp_path)


def test_chromium_shows_the_failing_urls_of_a_filter(rig: tb.Rig, tmp_path: Path) -> None:
    url = f"{rig.url}/tasks?account=acme&kind=prefetch&status=failure&window=1h"
    page = dom(tmp_path, url)
    rows = tb.page_rows(page)
    want = failures_of(rig, "acme", "prefetch")
    assert [row[9] for row in rows] == [t["url"] for t in want] and tb.XSS_URL in [row[9] for row in rows]
    assert {row[4] for row in rows} == {"failure"}
    # The attack in a URL stays text: the DOM the browser built has no element it would have injected.
    assert "<script" not in page.lower() and "<img" not in page.lower()
    shot = tmp_path / "tasks.png"
    done = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", url)
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_chromium_follows_an_alert_annotation_to_its_page(rig: tb.Rig, tmp_path: Path) -> None:
    rules = load_rules_generator()
    groups = yaml.safe_load(rules.render_alerts(rules.Settings(exporter_url=rig.url)))["groups"]
    alert = next(r for g in groups for r in g["rules"] if r["alert"] == "CDNetworksPrefetchSuccessRatioLow")
    # Prometheus fills the template from the firing alert's labels (account="acme").
    url = alert["annotations"]["tasks_url"].replace("{{ $labels.account | urlquery }}", "acme")
    rows = tb.page_rows(dom(tmp_path, url))
    assert [row[9] for row in rows] == [t["url"] for t in failures_of(rig, "acme", "prefetch")]


def test_chromium_follows_a_dashboard_data_link_and_the_next_page_link(rig: tb.Rig, tmp_path: Path) -> None:
    dash = json.loads((ROOT / "dashboards" / "overview.json").read_text())
    panel = next(p for p in dash["panels"] if p.get("title") == "Failed CDN tasks")
    link = next(x["url"] for o in panel["fieldConfig"]["overrides"] for p in o["properties"] if p["id"] == "links"
                for x in p["value"] if "kind=prefetch" in x["url"])
    # As Grafana fills it for the series of account globex, window 1h.
    url = (link.replace("${exporter_url}", rig.url).replace("${__field.labels.account}", "globex")
           .replace("${__field.labels.window}", "1h"))
    rows = tb.page_rows(dom(tmp_path, url))
    assert [row[9] for row in rows] == [t["url"] for t in failures_of(rig, "globex", "prefetch")] and rows
    # Paging without script: read the href of "Next page" from the loaded DOM and load it.
    now = rig.clock()
    want = sorted((t for t in rig.truth("acme", "prefetch", tb.window_start(now, 24 * HOUR), now)),
                  key=tb.key_of, reverse=True)
    page = dom(tmp_path, f"{rig.url}/tasks?account=acme&kind=prefetch&window=24h&limit=25")
    assert [row[9] for row in tb.page_rows(page)] == [t["url"] for t in want[:25]]
    for n in range(1, 3):
        found = re.search(r'<a rel="next" href="([^"]+)"', page)
        assert found is not None
        page = dom(tmp_path, found.group(1).replace("&amp;", "&"))
        assert [row[9] for row in tb.page_rows(page)] == [t["url"] for t in want[25 * n:25 * (n + 1)]]
