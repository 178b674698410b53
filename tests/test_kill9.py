"""``kill -9`` at random moments during a burst of signed notifications, three times.

A real exporter process (``python -m exporter.cli``) receives distinct signed Fmgr notifications from four
keep-alive senders; at a random moment it is killed with SIGKILL and started again on the same store. Then
the vendor's part is played: every notification not answered 200 is sent again, as are some that were
(duplicates). The rule checked after each restart: every notification answered 200 before the kill is there
(tracked and counted), none is counted twice, and once everything has been delivered the accepted counter
equals the number of distinct notifications exactly.
"""

from __future__ import annotations

import base64
import http.client
import json
import random
import signal
import threading
import time
from pathlib import Path

import requests
import test_cli
from prometheus_client.parser import text_string_to_metric_families
from test_cli import DEMO_WAIT, free_port, posix_signals, stop, wait_for

from exporter.vendor import signing

start_exporter = test_cli.start_exporter  # the fixture, shared with the CLI tests

NOTIFY_URL = "https://exporter.example.com/notify/fmgr"
AK, SK = "AK-KILL", "SK-KILL"
SENDERS = 4
BURST = 12000  # more than a burst can send before the kill (about 3,000 a second at most)
ROUNDS = 3


def notification(n: int) -> tuple[str, bytes, str]:
    status = {"id": f"kill9-{n:06d}", "code": 3, "desc": "fileOperateSucceed", "separate": 0, "items": [
        {"cmd": "fetch/aHR0cDovL28uZXhhbXBsZS5jb20veA==/bucket/Yg==", "code": 3, "desc": "fileOperateSucceed",
         "error": None, "fsize": 1000 + n, "key": f"k/{n}", "url": f"http://o.example.com/{n}"}]}
    body = base64.urlsafe_b64encode(json.dumps(status, separators=(",", ":")).encode())
    return status["id"], body, signing.fmgr_notify_authorization(AK, SK, NOTIFY_URL, body)


def send(port: int, numbers: list[int], acked: set[int], stop_on_error: bool) -> list[str]:
    """Send ``numbers`` over SENDERS connections; add those answered 200 to ``acked``; the failures seen."""
    lock = threading.Lock()
    errors: list[str] = []

    def worker(part: list[int]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for n in part:
                _, body, auth = notification(n)
                try:
                    conn.request("POST", "/notify/fmgr", body=body, headers={"Authorization": auth})
                    response = conn.getresponse()
                    response.read()
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    if stop_on_error:
                        return  # the exporter is gone
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    continue
                if response.status == 200:
                    with lock:
                        acked.add(n)
                else:
                    with lock:
                        errors.append(f"HTTP {response.status}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(numbers[i::SENDERS],), daemon=True) for i in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def counts(url: str) -> tuple[float, float, float]:
    """(accepted, duplicate, tracked tasks in the 24h window)."""
    text = requests.get(url + "/metrics", timeout=10).text
    accepted = duplicate = tracked = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "cdnetworks_fmgr_notifications_total":
                accepted += s.value if s.labels.get("result") == "accepted" else 0.0
                duplicate += s.value if s.labels.get("result") == "duplicate" else 0.0
            elif s.name == "cdnetworks_fmgr_tasks" and s.labels.get("window") == "24h":
                tracked += s.value
    return accepted, duplicate, tracked


@posix_signals
def test_kill_9_during_notification_bursts_loses_and_doubles_nothing(tmp_path: Path, start_exporter) -> None:
    config = tmp_path / "config.yml"
    config.write_text(f"""\
prefetch:
  enabled: false
fmgr:
  enabled: true
  windows: [1h, 24h]
  notify:
    url: {NOTIFY_URL}
    keys:
      - access_key: {AK}
        secret_key: {SK}
""")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"\nkill -9 moments drawn with seed {seed}")

    def start() -> tuple[object, Path, str]:
        port = free_port()
        proc, log = start_exporter("--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}",
                                   "--storage.path", str(tmp_path / "k.db"))
        url = f"http://127.0.0.1:{port}"
        wait_for("the exporter to serve", lambda: requests.get(url + "/readyz", timeout=2).ok, DEMO_WAIT, log, proc)
        return proc, log, url

    acked: set[int] = set()  # every notification ever answered 200
    sent_so_far = 0
    proc, log, url = start()
    for round_no in range(ROUNDS):
        numbers = list(range(sent_so_far, sent_so_far + BURST))
        sent_so_far += BURST
        port = int(url.rsplit(":", 1)[1])
        burst = threading.Thread(target=send, args=(port, numbers, acked, True), daemon=True)
        burst.start()
        time.sleep(rng.uniform(0.3, 2.0))
        before_kill = len(acked)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        burst.join(30)
        in_flight = len(acked) - before_kill  # answered between our last look and the kill
        acked_at_kill = set(acked)
        assert 0 < len(acked_at_kill) < sent_so_far, "the kill did not fall inside the burst"

        proc, log, url = start()
        accepted, _, tracked = counts(url)
        # Every 200 is there after the restart, and nothing more than what might have been committed unanswered.
        assert len(acked_at_kill) <= accepted <= len(acked_at_kill) + SENDERS + in_flight, \
            (accepted, len(acked_at_kill))
        assert accepted == tracked, (accepted, tracked)

        # The vendor retries everything not answered 200, and repeats a few that were (duplicates).
        retry = [n for n in range(sent_so_far) if n not in acked]
        repeat = rng.sample(sorted(acked_at_kill), 20)
        port = int(url.rsplit(":", 1)[1])
        errors = send(port, retry + repeat, acked, False)
        assert not errors, errors[:5]
        assert len(acked) == sent_so_far
        accepted, duplicate, tracked = counts(url)
        # Exactly once: one accepted per distinct notification, every other delivery a duplicate.
        assert accepted == tracked == sent_so_far, (round_no, accepted, tracked, sent_so_far)
        assert duplicate >= len(repeat)
        print(f"round {round_no + 1}: {len(acked_at_kill)} answered 200 before the kill, {len(retry)} retried, "
              f"accepted {accepted:.0f} = distinct {sent_so_far}, duplicates {duplicate:.0f}")
    assert stop(proc, log) == 0
    assert "Traceback" not in log.read_text(errors="replace")
