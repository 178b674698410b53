"""The command line as a user runs it: a real ``python -m exporter.cli`` process for every test.

Flags, exit codes and messages of --version, --help and --check-config; the demo end to end (metrics
filled, ready, clean exit on SIGTERM); and a SIGHUP reload of a real config pointed at a simulator.
Every wait is bounded; every started process is stopped (killed if it will not stop) at the end.
"""

from __future__ import annotations

import html
import os
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import requests
import yaml
from conftest import require_tool
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.cli import build_parser
from exporter.simulator import Simulator
from exporter.storage.sql_repo import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "exporter.cli"]
FLAGS = ("--config.file", "--web.listen-address", "--web.config.file", "--web.external-url", "--storage.path",
         "--storage.migrate-from", "--log.level", "--log.format", "--log.task-failures", "--check-config", "--demo",
         "--version")
DEMO_WAIT = 30.0
STOP_WAIT = 10.0

posix_signals = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="needs POSIX signals")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the exporter's own variables (they would change flag defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDNETWORKS_EXPORTER_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False,
                          env=env if env is not None else clean_env(), cwd=cwd or ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exporter exited with {proc.returncode} while waiting for {what}:\n{tail(log)}")
        try:
            if check():
                return
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}:\n{tail(log)}")


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"


def samples(url: str) -> dict[tuple[str, frozenset], float]:
    text = requests.get(url + "/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(metrics: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in metrics.items() if n == name and want <= lab)


@pytest.fixture
def start_exporter(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, Path]]]:
    started: list[tuple[subprocess.Popen, IO[bytes]]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"exporter-{len(started)}.log"
        out = log.open("wb")
        proc = subprocess.Popen([*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env=env or clean_env(),
                                cwd=tmp_path)
        started.append((proc, out))
        return proc, log

    yield start
    for proc, out in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_WAIT)
        out.close()


def stop(proc: subprocess.Popen, log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"exporter did not exit within {STOP_WAIT:g}s of SIGTERM:\n{tail(log)}")


# ------------------------------------------------------------------------------------ flags and help


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"cdnetworks-exporter {__version__}"


def test_console_script_is_installed() -> None:
    # The README's quick start runs `cdnetworks-exporter`; it is installed next to this interpreter.
    script = shutil.which("cdnetworks-exporter", path=str(Path(sys.executable).parent)) or shutil.which(
        "cdnetworks-exporter")
    if script is None:
        pytest.skip("cdnetworks-exporter is not on PATH (package not installed)")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and __version__ in result.stdout


def test_help_lists_every_flag() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout, flag
    # And the fixed list above is complete: a new flag must be added here (and to the README).
    declared = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    assert declared - {"--help"} == set(FLAGS)


def test_readme_documents_every_flag() -> None:
    readme = (ROOT / "README.md").read_text()
    for flag in FLAGS:
        assert f"`{flag}" in readme, f"README.md does not document {flag}"


# ---------------------------------------------------------------------------------------- check-config


def example_config_dir(tmp_path: Path) -> Path:
    """config.example.yml with the secret files it names, in a directory of its own."""
    shutil.copy(ROOT / "config.example.yml", tmp_path / "config.yml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "globex_secret_key").write_text("globex-secret\n")
    (tmp_path / "secrets" / "fmgr_ak2_secret_key").write_text("ak2-secret\n")
    return tmp_path / "config.yml"


EXAMPLE_ENV = {"ACME_API_KEY": "acme-key", "FMGR_SECRET_KEY": "fmgr-secret", "EXPORTER_REGISTER_TOKEN": "token"}


def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    config = example_config_dir(tmp_path)
    result = run_cli("--config.file", str(config), "--check-config", env=clean_env(**EXAMPLE_ENV))
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout
    for secret in (*EXAMPLE_ENV.values(), "globex-secret", "ak2-secret"):
        assert secret not in result.stdout + result.stderr


def test_config_file_flag_has_an_env_var(tmp_path: Path) -> None:
    config = example_config_dir(tmp_path)
    env = clean_env(**EXAMPLE_ENV, CDNETWORKS_EXPORTER_CONFIG_FILE=str(config))
    result = run_cli("--check-config", env=env)
    assert result.returncode == 0, result.stderr


def test_check_config_without_the_secrets_names_what_is_missing(tmp_path: Path) -> None:
    config = example_config_dir(tmp_path)
    (tmp_path / "secrets" / "globex_secret_key").unlink()
    result = run_cli("--config.file", str(config), "--check-config",
                     env=clean_env(**{k: v for k, v in EXAMPLE_ENV.items() if k != "ACME_API_KEY"}))
    assert result.returncode == 2
    assert "ACME_API_KEY" in result.stderr
    assert "accounts[1].secret_key_file" in result.stderr


BROKEN = """\
accounts:
  - name: acme
    api_key: k
    timezone: "+25:00"
prefetch:
  windows: [15m, 2x]
  poll_interval: soon
  page_sizes: 10
fmgr:
  notify:
    max_body_bytes: 5
"""
BROKEN_PATHS = ("accounts[0].username", "accounts[0].timezone", "prefetch.windows[1]", "prefetch.poll_interval",
                "prefetch.page_sizes", "fmgr.notify.max_body_bytes")
KEY_PATH = r"[A-Za-z_]+(?:\[[0-9]+\])?(?:\.[A-Za-z_]+(?:\[[0-9]+\])?)*"


@pytest.mark.parametrize("check_only", [True, False], ids=["check-config", "start"])
def test_broken_config_lists_every_problem_with_its_key_path(tmp_path: Path, check_only: bool) -> None:
    config = tmp_path / "config.yml"
    config.write_text(BROKEN)
    args = ["--config.file", str(config), "--storage.path", str(tmp_path / "never.db")]
    result = run_cli(*args, *(["--check-config"] if check_only else []))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{config}: ")]
    for path in BROKEN_PATHS:
        assert any(line.startswith(f"{config}: {path}: ") for line in lines), (path, result.stderr)
    for line in lines:
        assert re.match(rf"{re.escape(str(config))}: {KEY_PATH}: \S", line), line
    assert len(lines) == len(BROKEN_PATHS)
    assert not (tmp_path / "never.db").exists()  # nothing started


@pytest.mark.parametrize("check_only", [True, False], ids=["check-config", "start"])
def test_missing_config_file(tmp_path: Path, check_only: bool) -> None:
    missing = tmp_path / "nope.yml"
    result = run_cli("--config.file", str(missing), *(["--check-config"] if check_only else []))
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "cannot read: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("check_only", [True, False], ids=["check-config", "start"])
def test_broken_web_config(tmp_path: Path, check_only: bool) -> None:
    config = example_config_dir(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: not-a-bcrypt-hash\ntls_server_config:\n  cert_file: missing.pem\n")
    result = subprocess.run(
        [*CLI, "--config.file", str(config), "--web.config.file", str(web), "--web.listen-address",
         f"127.0.0.1:{free_port()}", *(["--check-config"] if check_only else [])],
        capture_output=True, text=True, timeout=60, check=False, env=clean_env(**EXAMPLE_ENV))
    assert result.returncode == 2
    assert f"{web}: basic_auth_users.alice: " in result.stderr
    assert f"{web}: tls_server_config.cert_file: " in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------- flags and environment variables

@pytest.mark.parametrize("check_only", [True, False], ids=["check-config", "start"])
@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("--web.listen-address", "9891", "has no port (the colon is missing)"),
        ("--web.listen-address", "localhost:99999", "the port must be a number from 0 to 65535"),
        ("CDNETWORKS_EXPORTER_LISTEN_ADDRESS", "abc", "has no port"),
        ("CDNETWORKS_EXPORTER_LOG_LEVEL", "verbose", "expected debug, info, warn or error"),
        ("CDNETWORKS_EXPORTER_LOG_FORMAT", "text", "expected logfmt or json"),
    ],
)
def test_a_bad_flag_or_variable_is_one_line_naming_it_and_nothing_is_created(
        tmp_path: Path, check_only: bool, name: str, value: str, message: str) -> None:
    config = example_config_dir(tmp_path)
    db = tmp_path / "never" / "exporter.db"
    args = ["--config.file", str(config), "--storage.path", str(db), *(["--check-config"] if check_only else [])]
    if name.startswith("--"):
        result = run_cli(*args, name, value, env=clean_env(**EXAMPLE_ENV))
    else:
        result = run_cli(*args, env=clean_env(**EXAMPLE_ENV, **{name: value}))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "configuration is valid" not in result.stdout
    problems = [line for line in result.stderr.splitlines() if line.startswith(f"{name}: ")]
    assert len(problems) == 1, result.stderr
    assert repr(value) in problems[0] and message in problems[0], problems[0]
    if not check_only:
        assert result.stderr.splitlines() == problems  # one line, nothing logged before it
    assert not db.exists() and not db.parent.exists()


def test_check_config_reports_the_settings_and_the_file_together(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(BROKEN)
    result = run_cli("--config.file", str(config), "--check-config", "--web.listen-address", "9891",
                     env=clean_env(CDNETWORKS_EXPORTER_LOG_FORMAT="text"))
    assert result.returncode == 2
    assert result.stderr.startswith("--web.listen-address: '9891'")
    assert "CDNETWORKS_EXPORTER_LOG_FORMAT: 'text'" in result.stderr
    assert f"{config}: prefetch.windows[1]: " in result.stderr
    assert f"{len(BROKEN_PATHS) + 2} problem(s) found" in result.stderr


def test_a_flag_wins_over_a_bad_variable(tmp_path: Path) -> None:
    config = example_config_dir(tmp_path)
    env = clean_env(**EXAMPLE_ENV, CDNETWORKS_EXPORTER_LOG_LEVEL="verbose",
                    CDNETWORKS_EXPORTER_LISTEN_ADDRESS="abc")
    result = run_cli("--config.file", str(config), "--check-config", "--log.level", "debug",
                     "--web.listen-address", "127.0.0.1:9891", "--storage.path", str(tmp_path / "s.db"), env=env)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


def test_a_bad_log_level_flag_is_refused_by_the_parser() -> None:
    result = run_cli("--log.level", "verbose", "--check-config")
    assert result.returncode == 2
    assert "--log.level: invalid choice: 'verbose'" in result.stderr and "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------- storage path


def unusable_paths(tmp_path: Path) -> list[tuple[Path, str]]:
    """Storage paths that cannot work even for root, with the reason the exporter must give."""
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("x")
    return [(tmp_path / "a-directory", "is a directory"),
            (tmp_path / "a-file" / "sub" / "exporter.db", f"{tmp_path / 'a-file'} is not a directory")]


@pytest.mark.parametrize("case", [0, 1], ids=["directory", "under-a-file"])
def test_an_unusable_storage_path_is_named_with_its_reason(tmp_path: Path, case: int) -> None:
    config = example_config_dir(tmp_path)
    path, reason = unusable_paths(tmp_path)[case]
    env = clean_env(**EXAMPLE_ENV)
    args = ["--config.file", str(config), "--web.listen-address", f"127.0.0.1:{free_port()}"]

    check = run_cli(*args, "--storage.path", str(path), "--check-config", env=env)
    assert check.returncode == 3, check.stdout + check.stderr
    assert "configuration is valid" not in check.stdout
    assert f"--storage.path: {path}: " in check.stderr and reason in check.stderr, check.stderr

    via_env = run_cli(*args, "--check-config", env={**env, "CDNETWORKS_EXPORTER_STORAGE_PATH": str(path)})
    assert via_env.returncode == 3 and f"CDNETWORKS_EXPORTER_STORAGE_PATH: {path}: {reason}" in via_env.stderr

    start = run_cli(*args, "--storage.path", str(path), env=env)
    assert start.returncode == 1
    assert f"cannot start: storage path {path}: " in start.stderr and reason in start.stderr, start.stderr
    assert "unable to open database file" not in start.stderr and "Traceback" not in start.stderr


def test_check_config_names_the_configs_storage_path(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"accounts": [{"name": "acme", "username": "acme", "api_key": "k"}],
                                      "storage": {"path": str(tmp_path / "a-file" / "exporter.db")}}))
    result = run_cli("--config.file", str(config), "--check-config")
    assert result.returncode == 3
    assert f"{config}: storage.path: {tmp_path / 'a-file' / 'exporter.db'}: " in result.stderr
    fine = run_cli("--config.file", str(config), "--check-config", "--storage.path", str(tmp_path / "new" / "x.db"))
    assert fine.returncode == 0, fine.stderr
    assert f"storage path: {tmp_path / 'new' / 'x.db'}: can be written" in fine.stdout
    assert not (tmp_path / "new").exists()  # checked, not created


# ---------------------------------------------------------------------------------------------- demo


@posix_signals
def test_demo_serves_metrics_and_stops_on_sigterm(tmp_path: Path, start_exporter) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, log = start_exporter("--demo", "--web.listen-address", f"127.0.0.1:{port}",
                               "--storage.path", str(tmp_path / "demo.db"))

    def filled() -> bool:
        m = samples(url)
        return (total(m, "cdnetworks_prefetch_tasks", status="success") > 0
                and total(m, "cdnetworks_fmgr_notifications_total", result="accepted") > 0)

    wait_for("prefetch successes and accepted notifications", filled, DEMO_WAIT, log, proc)
    assert requests.get(url + "/readyz", timeout=5).status_code == 200
    assert stop(proc, log) == 0, tail(log)
    assert "stopped" in log.read_text()
    assert (tmp_path / "demo.db").is_file()  # given with --storage.path: kept


@posix_signals
def test_demo_on_port_zero_receives_its_own_notifications(tmp_path: Path, start_exporter) -> None:
    # Port 0 asks for any free port; the simulator must still be told a port it can reach.
    proc, log = start_exporter("--demo", "--web.listen-address", "127.0.0.1:0",
                               "--storage.path", str(tmp_path / "demo.db"))
    found: list[str] = []

    def serving() -> bool:
        found[:] = re.findall(r"serving on (http://127\.0\.0\.1:[0-9]+)", log.read_text())
        return bool(found)

    wait_for("the serving line", serving, DEMO_WAIT, log, proc)
    url = found[0]
    assert not url.endswith(":0")
    wait_for("accepted notifications",
             lambda: total(samples(url), "cdnetworks_fmgr_notifications_total", result="accepted") > 0,
             DEMO_WAIT, log, proc)
    assert stop(proc, log) == 0, tail(log)


@posix_signals
def test_demo_explains_itself_and_removes_its_temporary_storage(tmp_path: Path, start_exporter) -> None:
    curl = require_tool("curl")
    temp = tmp_path / "tmp"
    temp.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # `:port`, as a newcomer types it: the demo's own job runner must reach it too.
    proc, log = start_exporter("--demo", "--web.listen-address", f":{port}", env=clean_env(TMPDIR=str(temp)))
    wait_for("ready", lambda: requests.get(url + "/readyz", timeout=5).status_code == 200, DEMO_WAIT, log, proc)
    (storage,) = temp.glob("cdnetworks-demo-*")
    assert (storage / "demo.db").is_file()

    page = requests.get(url + "/", timeout=5).text
    assert "Demo mode" in page and "<code>demo-register-token</code>" in page
    examples = [html.unescape(e) for e in re.findall(r"<pre>(.*?)</pre>", page, flags=re.S)]
    assert len(examples) == 2
    for example in examples:  # run as printed, with curl
        argv = shlex.split(example)
        assert argv[0] == "curl"
        result = subprocess.run([curl, "-sS", "--fail", *argv[1:]], capture_output=True, text=True, timeout=30,
                                check=False)
        assert result.returncode == 0, (example, result.stderr)
        assert result.stdout.startswith("{"), result.stdout
    assert "demo-register-token" in log.read_text()  # the start-up log names it too

    assert stop(proc, log) == 0, tail(log)
    assert not storage.exists(), "the demo left its temporary storage behind"
    assert f"removed the demo's temporary storage {storage}" in log.read_text()
    assert list(temp.iterdir()) == []


def test_an_exit_without_the_clean_stop_still_removes_the_demos_temporary_storage(tmp_path: Path) -> None:
    # A second Ctrl-C, or a stop that overran its grace, ends the process at once (os._exit, no clean stop):
    # the demo's temporary database must not be left behind in $TMPDIR all the same.
    code = ("import sys, tempfile, pathlib\n"
            "from exporter import cli\n"
            "d = pathlib.Path(tempfile.mkdtemp(prefix='cdnetworks-demo-'))\n"
            "(d / 'demo.db').write_bytes(b'x')\n"
            "cli._TEMPORARY.append(d)\n"
            "print(d, flush=True)\n"
            "cli._exit_now(2)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env=clean_env(TMPDIR=str(tmp_path)), check=False)
    assert result.returncode == 128 + 2, result.stderr
    assert Path(result.stdout.strip()).parent == tmp_path
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- reload


def write_config(path: Path, sim_url: str, windows: list[str]) -> None:
    path.write_text(yaml.safe_dump({
        "accounts": [{"name": "acme", "username": "acme", "api_key": "acme-key", "endpoint": sim_url}],
        "prefetch": {"windows": windows, "poll_interval": "1s", "lookback": "1h",
                     "rate_limit": {"requests": 100, "per": "1s"}, "request_timeout": "5s"},
        "fmgr": {"enabled": False},
    }))


def windows_of(url: str) -> set[str]:
    return {dict(lab)["window"] for (name, lab) in samples(url) if name == "cdnetworks_prefetch_tasks"}


def reload_state(url: str) -> tuple[float, float, set[str]]:
    """(last reload successful, its timestamp, the windows served), all from one scrape."""
    m = samples(url)
    windows = {dict(lab)["window"] for (name, lab) in m if name == "cdnetworks_prefetch_tasks"}
    return (total(m, "cdnetworks_config_last_reload_successful"),
            total(m, "cdnetworks_config_last_reload_success_timestamp_seconds"), windows)


@posix_signals
def test_sighup_reloads_the_config(tmp_path: Path, simulator: Simulator, start_exporter) -> None:
    config = tmp_path / "config.yml"
    write_config(config, simulator.url, ["15m", "1h"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, log = start_exporter("--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}",
                               "--storage.path", str(tmp_path / "store.db"))
    wait_for("the configured windows", lambda: windows_of(url) == {"15m", "1h"}, DEMO_WAIT, log, proc)
    wait_for("a successful poll", lambda: total(samples(url), "cdnetworks_up", api="prefetch") == 1,
             DEMO_WAIT, log, proc)
    ok, loaded_at, _ = reload_state(url)
    assert ok == 1

    # The reload is asynchronous to this test: its end is seen when the success timestamp moves, and from
    # that same scrape on the new windows are served (the swap is one step). The log line is written after
    # the swap, so it is waited for rather than expected at once.
    write_config(config, simulator.url, ["15m", "6h"])
    proc.send_signal(signal.SIGHUP)
    wait_for("the reload to be applied", lambda: reload_state(url)[1] > loaded_at, DEMO_WAIT, log, proc)
    ok, loaded_at, windows = reload_state(url)
    assert (ok, windows) == (1, {"15m", "6h"})
    wait_for("the reload in the log", lambda: "configuration reloaded" in log.read_text(), DEMO_WAIT, log, proc)

    # A broken file on the next SIGHUP keeps the running configuration, and says why.
    config.write_text("prefetch:\n  windows: [2x]\n")
    proc.send_signal(signal.SIGHUP)
    wait_for("the failed reload", lambda: reload_state(url)[0] == 0, DEMO_WAIT, log, proc)
    assert reload_state(url) == (0, loaded_at, {"15m", "6h"})
    wait_for("the reload error in the log", lambda: "reload failed" in log.read_text(), DEMO_WAIT, log, proc)
    assert "prefetch.windows[0]" in log.read_text()
    assert stop(proc, log) == 0, tail(log)


@posix_signals
def test_sighup_in_demo_mode_reloads(tmp_path: Path, start_exporter) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, log = start_exporter("--demo", "--web.listen-address", f"127.0.0.1:{port}",
                               "--storage.path", str(tmp_path / "demo.db"))
    wait_for("the demo to serve", lambda: reload_state(url)[0] == 1, DEMO_WAIT, log, proc)
    _, loaded_at, windows = reload_state(url)
    proc.send_signal(signal.SIGHUP)
    wait_for("the reload to be applied", lambda: reload_state(url)[1] > loaded_at, DEMO_WAIT, log, proc)
    assert reload_state(url)[0] == 1 and reload_state(url)[2] == windows
    assert stop(proc, log) == 0, tail(log)


@posix_signals
def test_readme_online_backup_while_the_exporter_writes(tmp_path: Path, start_exporter) -> None:
    command = next(line for block in readme_blocks("sh") for line in block.splitlines()
                   if line.startswith("python3 -c 'import sqlite3"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "demo.db"
    proc, log = start_exporter("--demo", "--web.listen-address", f"127.0.0.1:{port}", "--storage.path", str(db))
    wait_for("stored tasks", lambda: total(samples(url), "cdnetworks_prefetch_tasks") > 0, DEMO_WAIT, log, proc)
    backup = tmp_path / "backup.db"
    argv = shlex.split(command.replace("/data/cdnetworks-exporter.db", str(db)).replace("/data/backup.db",
                                                                                         str(backup)))
    result = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(backup)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT count(*) FROM cdn_tasks").fetchone()[0] > 0
    finally:
        conn.close()
    assert requests.get(url + "/readyz", timeout=5).status_code == 200
    assert stop(proc, log) == 0, tail(log)


# ---------------------------------------------------------------------------------------------- README


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_readme_quick_start_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1]
    block = re.search(r"```sh\n(.*?)```", quick, flags=re.S)
    assert block is not None
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["pip install . && cdnetworks-exporter --demo", "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec \./scripts/test\b", ci, flags=re.M)


def test_readme_says_what_the_demo_shows_and_keeps() -> None:
    quick = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    text = " ".join(quick.split())
    assert "`demo-register-token`" in text and "landing page" in text
    assert "temporary directory that it removes at exit, unless `--storage.path` names one" in text
    assert "installs the Python test dependencies, Debian's `prometheus`" in text and "`postgresql`" in text


def test_readme_documents_every_environment_variable() -> None:
    source = (ROOT / "exporter" / "cli.py").read_text()
    names = set(re.findall(r'env\("(CDNETWORKS_EXPORTER_[A-Z_]+)"', source))
    assert len(names) == 7
    readme = (ROOT / "README.md").read_text()
    for name in names:
        assert f"`{name}`" in readme, name


def test_readme_promql_examples_parse(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    exprs = [line.strip() for block in readme_blocks("promql") for line in block.splitlines() if line.strip()]
    assert len(exprs) >= 6
    rules = {"groups": [{"name": "readme", "rules": [
        {"record": f"readme:example_{i}", "expr": expr} for i, expr in enumerate(exprs)
    ]}]}
    path = tmp_path / "readme-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_config_example_is_valid(tmp_path: Path) -> None:
    block = next(b for b in readme_blocks("yaml") if b.startswith("accounts:"))
    (tmp_path / "config.yml").write_text(block)
    result = run_cli("--config.file", str(tmp_path / "config.yml"), "--check-config", env=clean_env(**EXAMPLE_ENV))
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------- check-config with storage.url


def storage_config(tmp_path: Path, url: str) -> Path:
    """A minimal valid configuration whose store is the PostgreSQL database at ``url``, given as a file."""
    (tmp_path / "database_url").write_text(url + "\n")
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"accounts": [{"name": "acme", "username": "acme", "api_key": "k"}],
                                      "storage": {"url_file": "database_url"}}))
    return config


def schema_tables(cluster, url: str) -> set[str]:
    return {r[0] for r in cluster.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                                      url.rpartition("%3D")[2])}


@pytest.mark.postgres
def test_check_config_asks_the_database_and_creates_nothing(tmp_path: Path, postgres_cluster, postgres_url) -> None:
    config = storage_config(tmp_path, postgres_url)
    # The image's environment names an SQLite file: it does not hide the database the config chooses.
    env = clean_env(CDNETWORKS_EXPORTER_STORAGE_PATH=str(tmp_path / "never.db"))
    result = run_cli("--config.file", str(config), "--check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert "the database answers; no store yet (the first start creates its tables in schema test_" in result.stdout
    assert "configuration is valid" in result.stdout
    assert schema_tables(postgres_cluster, postgres_url) == set()  # only read
    assert not (tmp_path / "never.db").exists()

    from exporter.storage.repository import open_repository

    open_repository(postgres_url).close()  # what a first start leaves
    result = run_cli("--config.file", str(config), "--check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert f"the database answers; store schema version {SCHEMA_VERSION}" in result.stdout


@pytest.mark.postgres
def test_check_config_refuses_a_newer_schema(tmp_path: Path, postgres_cluster, postgres_url) -> None:
    from exporter.storage.repository import open_repository

    open_repository(postgres_url).close()
    schema = postgres_url.rpartition("%3D")[2]
    newer = SCHEMA_VERSION + 1
    postgres_cluster.sql(f"UPDATE {schema}.meta SET value = '{newer}' WHERE key = 'schema_version'")
    config = storage_config(tmp_path, postgres_url)
    result = run_cli("--config.file", str(config), "--check-config")
    assert result.returncode == 3, result.stdout + result.stderr
    assert (f"{config}: storage.url: {postgres_url}: schema version {newer} is newer than this exporter understands "
            f"({SCHEMA_VERSION})") in result.stderr
    assert "1 problem(s) found" in result.stderr and "configuration is valid" not in result.stdout


@pytest.mark.postgres
@pytest.mark.parametrize(("options", "problem"), [
    ("%20-cdefault_transaction_read_only%3Don", "the database accepts no writes (read-only: a standby?)"),
    ("_missing", "no schema of the search_path exists, so the first start could not create the tables"),
])
def test_check_config_finds_what_would_fail_the_first_start(tmp_path: Path, postgres_url, options: str,
                                                            problem: str) -> None:
    url = postgres_url + options
    result = run_cli("--config.file", str(storage_config(tmp_path, url)), "--check-config")
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"storage.url: {url}: {problem}" in result.stderr


def test_check_config_names_an_unreachable_database_without_its_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = storage_config(tmp_path, f"postgresql://exporter:hunter2@127.0.0.1:{port}/store")
    started = time.monotonic()
    result = run_cli("--config.file", str(config), "--check-config")
    assert result.returncode == 3, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    masked = re.escape(f"{config}: storage.url: postgresql://exporter:***@127.0.0.1:{port}/store: ")
    assert re.search(rf"^{masked}cannot use the database: .*(refused|failed)", result.stderr, flags=re.M), \
        result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # A configuration problem is still exit 2, and then the database is not asked at all.
    config.write_text(config.read_text() + "  lease_ttl: soon\n")
    result = run_cli("--config.file", str(config), "--check-config")
    assert result.returncode == 2 and "storage.lease_ttl" in result.stderr and "cannot use" not in result.stderr


@pytest.mark.postgres
def test_the_images_storage_path_does_not_hide_storage_url(tmp_path: Path, simulator: Simulator, postgres_cluster,
                                                            postgres_url) -> None:
    config = storage_config(tmp_path, postgres_url)
    data = yaml.safe_load(config.read_text())
    data["accounts"][0].update(api_key="acme-key", endpoint=simulator.url)
    config.write_text(yaml.safe_dump(data))
    port = free_port()
    log = tmp_path / "exporter.log"
    env = clean_env(CDNETWORKS_EXPORTER_STORAGE_PATH=str(tmp_path / "never.db"))
    with log.open("wb") as out:
        proc = subprocess.Popen([*CLI, "--config.file", str(config), "--web.listen-address", f"127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for("the first poll", lambda: total(samples(url), "cdnetworks_api_requests_total") > 0, DEMO_WAIT,
                     log, proc)
            assert stop(proc, log) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=STOP_WAIT)
    assert not (tmp_path / "never.db").exists()
    assert "state" in schema_tables(postgres_cluster, postgres_url)
    schema = postgres_url.rpartition("%3D")[2]
    assert postgres_cluster.sql(f"SELECT count(*) FROM {schema}.state")[0][0] > 0
    assert "--storage.path" in log.read_text() and "is not used" in log.read_text()
