"""docs/metrics.md's cardinality figures for a CDN task kind, against a real scrape of a real exporter."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from conftest import make_config
from prometheus_client.exposition import generate_latest

from exporter.app import Exporter

ROOT = Path(__file__).resolve().parents[1]


def test_the_per_kind_series_counts_are_what_a_scrape_serves(tmp_path: Path) -> None:
    config = make_config("http://127.0.0.1:9", str(tmp_path / "s.db"))  # never polled
    accounts, windows = len(config.accounts), len(config.kinds["prefetch"].windows)
    assert (accounts, windows) == (2, 3)
    exporter = Exporter(config, listen_address="127.0.0.1:0")
    try:
        text = generate_latest(exporter.registry).decode()
    finally:
        exporter.store.close()
    families: Counter[str] = Counter()
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name.startswith("cdnetworks_prefetch_"):
            families[re.sub(r"_(bucket|sum|count)$", "", name)] += 1
    assert families["cdnetworks_prefetch_tasks_finished_total"] == 2 * accounts
    assert families["cdnetworks_prefetch_duration_seconds"] == 15 * accounts
    assert "cdnetworks_prefetch_success_ratio" not in families  # absent while none finished
    served = sum(families.values())
    with_ratios = served + 2 * accounts * windows  # success and rate ratio per account and window, once finished

    doc = (ROOT / "docs" / "metrics.md").read_text()
    line = re.search(r"^\* per task kind: (.*?)(?=^\*)", doc, flags=re.M | re.S)
    assert line is not None
    text = " ".join(line.group(1).split())
    assert "`2·A` counters" in text and "`15·A` histogram" in text, text
    assert f"{with_ratios} series for {accounts} accounts and {windows} windows ({served} before any task finished)" \
        in text, text
