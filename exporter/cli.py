"""Command line: Go-style flags like other Prometheus exporters, logging, signals, demo mode."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter import __version__
from exporter.allocator import limit_arenas
from exporter.config import Config, ConfigError, load_config, parse_config
from exporter.http.web import parse_listen_address
from exporter.http.webconfig import WebConfig, load_web_config
from exporter.kinds import NAMES
from exporter.storage.sqlite_repo import path_problem

log = logging.getLogger("exporter")

EXIT_CONFIG = 2
# --check-config: the configuration is valid, but the database storage.url names cannot be used (it does not
# answer, refuses the role, is read-only, or holds a newer schema). Distinct from EXIT_CONFIG so that a check
# run where the database is out of reach (a CI job) can tell the two apart.
EXIT_STORAGE = 3
STOP_GRACE_SECONDS = 8.0


# What an exit that cannot wait for a clean stop still removes: the demo's temporary storage.
_TEMPORARY: list[Path] = []


def _exit_now(signum: int) -> None:
    for directory in _TEMPORARY:
        shutil.rmtree(directory, ignore_errors=True)
    logging.shutdown()
    os._exit(128 + signum)


def _give_up_stopping(signum: int) -> None:
    log.error("did not stop within %.0fs of %s, exiting now", STOP_GRACE_SECONDS, signal.Signals(signum).name)
    _exit_now(signum)


LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")

# The settings that have an environment variable: dest -> (flag, variable).
ENV_VARS = {
    "config_file": ("--config.file", "CDNETWORKS_EXPORTER_CONFIG_FILE"),
    "listen_address": ("--web.listen-address", "CDNETWORKS_EXPORTER_LISTEN_ADDRESS"),
    "web_config_file": ("--web.config.file", "CDNETWORKS_EXPORTER_WEB_CONFIG_FILE"),
    "storage_path": ("--storage.path", "CDNETWORKS_EXPORTER_STORAGE_PATH"),
    "log_level": ("--log.level", "CDNETWORKS_EXPORTER_LOG_LEVEL"),
    "log_format": ("--log.format", "CDNETWORKS_EXPORTER_LOG_FORMAT"),
    "external_url": ("--web.external-url", "CDNETWORKS_EXPORTER_WEB_EXTERNAL_URL"),
}


class _FromFlag(argparse.Action):
    """Stores the value and remembers that it came from the command line, not from the environment variable
    that gave the default: a problem with it is reported under the name the user typed."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.from_flag = {*getattr(namespace, "from_flag", ()), self.dest}


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="cdnetworks-exporter",
        description=f"Prometheus exporter for CDNetworks asynchronous task APIs ({', '.join(NAMES)}, Fmgr).",
    )
    p.add_argument("--config.file", dest="config_file", action=_FromFlag,
                   default=env("CDNETWORKS_EXPORTER_CONFIG_FILE", "config.yml"),
                   help="path to the YAML configuration (env CDNETWORKS_EXPORTER_CONFIG_FILE; default: %(default)s)")
    p.add_argument("--web.listen-address", dest="listen_address", action=_FromFlag,
                   default=env("CDNETWORKS_EXPORTER_LISTEN_ADDRESS", ":9891"),
                   help="address to serve HTTP on: :port (every interface, IPv4 and IPv6), host:port or "
                        "[IPv6]:port (env CDNETWORKS_EXPORTER_LISTEN_ADDRESS; default: %(default)s)")
    p.add_argument("--web.config.file", dest="web_config_file", action=_FromFlag,
                   default=env("CDNETWORKS_EXPORTER_WEB_CONFIG_FILE"),
                   help="exporter-toolkit web config for TLS and basic auth (env CDNETWORKS_EXPORTER_WEB_CONFIG_FILE; "
                        "default: none)")
    p.add_argument("--web.external-url", dest="external_url", action=_FromFlag,
                   default=env("CDNETWORKS_EXPORTER_WEB_EXTERNAL_URL"),
                   help="the URL the exporter is reached at (behind a proxy, with its path prefix), the base of the "
                        "links its pages render (env CDNETWORKS_EXPORTER_WEB_EXTERNAL_URL; default: links relative "
                        "to the host)")
    p.add_argument("--storage.path", dest="storage_path", action=_FromFlag,
                   default=env("CDNETWORKS_EXPORTER_STORAGE_PATH"),
                   help="SQLite database path, overriding storage.path in the config "
                        "(env CDNETWORKS_EXPORTER_STORAGE_PATH)")
    p.add_argument("--log.level", dest="log_level", action=_FromFlag,
                   default=env("CDNETWORKS_EXPORTER_LOG_LEVEL", "info"), choices=LOG_LEVELS,
                   help="log level (env CDNETWORKS_EXPORTER_LOG_LEVEL; default: %(default)s)")
    p.add_argument("--log.format", dest="log_format", action=_FromFlag,
                   default=env("CDNETWORKS_EXPORTER_LOG_FORMAT", "logfmt"), choices=LOG_FORMATS,
                   help="log format (env CDNETWORKS_EXPORTER_LOG_FORMAT; default: %(default)s)")
    p.add_argument("--log.task-failures", dest="log_task_failures", action="store_true",
                   help="log one line per CDN task and per Fmgr item that ends in failure (logger exporter.failures), "
                        "each once, also across restarts and replicas (default: off)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the flags, environment variables, configuration and web config, print every "
                        "problem, exit 0 or 2; then check that the store can be used (the SQLite path can be "
                        "created and written, or the storage.url database answers and its schema fits; exit 3 if "
                        "not)")
    # No environment variable: a one-shot operation must not run again at every start of a container.
    p.add_argument("--storage.migrate-from", dest="migrate_from", metavar="SQLITE_PATH",
                   help="copy the SQLite store at this path into the empty PostgreSQL store of storage.url, "
                        "verify the row counts, print what was copied and exit (0, 1 if it failed, 2 for a "
                        "configuration problem)")
    p.add_argument("--demo", action="store_true",
                   help="run against the built-in simulator with a generated configuration (no config needed); "
                        "its temporary storage is removed at exit unless --storage.path is given")
    p.add_argument("--version", action="version", version=f"cdnetworks-exporter {__version__}")
    return p


def setting_name(args: argparse.Namespace, dest: str) -> str:
    """Where a setting's value came from: its flag, or else its environment variable when that is set."""
    flag, variable = ENV_VARS[dest]
    if dest in getattr(args, "from_flag", ()) or variable not in os.environ:
        return flag
    return variable


def _one_of(values: Sequence[str]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1]


def setting_problems(args: argparse.Namespace) -> list[str]:
    """The flags and environment variables that cannot work, one line each naming the flag or the variable
    and the expected form. argparse already refused a bad flag with choices; its variable is checked here."""
    problems = []
    try:
        parse_listen_address(args.listen_address)
    except ValueError as exc:
        problems.append(f"{setting_name(args, 'listen_address')}: {exc}")
    if args.external_url:
        problem = external_url_problem(args.external_url)
        if problem is not None:
            problems.append(f"{setting_name(args, 'external_url')}: {args.external_url!r}: {problem}")
    for dest, allowed in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
        value = getattr(args, dest)
        if value not in allowed:
            problems.append(f"{setting_name(args, dest)}: {value!r}: expected {_one_of(allowed)}")
    return problems


_LOGFMT_BARE = re.compile(r"[A-Za-z0-9_.:/@+-]+")


def _logfmt_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    return text if _LOGFMT_BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def external_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the base of the exporter's links (None when it can)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "expected an http:// or https:// URL with a host, e.g. https://exporter.example.com/cdn"
    if parts.query or parts.fragment:
        return "expected no query and no fragment (a base URL, with a path prefix at most)"
    return None


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        quoted = json.dumps(msg, ensure_ascii=False)
        # A structured line (exporter/failurelog.py) carries its fields as extra={"fields": {...}}.
        fields = "".join(f" {k}={_logfmt_value(v)}" for k, v in getattr(record, "fields", {}).items())
        return (f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S%z')} level={record.levelname.lower()} "
                f"logger={record.name} msg={quoted}{fields}")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": "WARNING"}.get(level, level.upper()))
    # cheroot and urllib3 are chatty at info level about things that are not ours to act on.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.migrate_from is not None and (args.check_config or args.demo):
        parser.error("--storage.migrate-from cannot be combined with --check-config or --demo")
    settings = setting_problems(args)
    setup_logging(args.log_level if args.log_level in LOG_LEVELS else "info",
                  args.log_format if args.log_format in LOG_FORMATS else "logfmt")

    if args.check_config:
        return check_config(args, settings)
    if settings:  # before anything is read, opened or created
        for p in settings:
            print(p, file=sys.stderr)
        return EXIT_CONFIG
    if args.migrate_from is not None:
        return migrate(args)
    limit_arenas()  # before any thread allocates: see exporter/allocator.py

    # Handlers first, before the configuration is even read: from the moment the HTTP server answers, a SIGHUP
    # must reload (its default action would kill the process) and a SIGTERM stop cleanly, also as PID 1 in a
    # container, where signals without a handler are ignored. A signal that arrives while the exporter is
    # still being built is acted on as soon as the main loop runs.
    stop = threading.Event()
    wake = threading.Event()

    def on_stop(signum: int, _frame: object) -> None:
        if stop.is_set():  # a second signal: the operator does not want to wait
            _exit_now(signum)
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()
        wake.set()
        # Whatever the main thread is stuck in (a reload, a store that does not answer), the process ends.
        watchdog = threading.Timer(STOP_GRACE_SECONDS, _give_up_stopping, (signum,))
        watchdog.daemon = True  # a clean stop returns from main() long before it fires
        watchdog.start()

    def on_hup(_signum: int, _frame: object) -> None:
        reload_requested.set()
        wake.set()

    reload_requested = threading.Event()
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, on_hup)

    config, web_config, problems = load_configs(args)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return EXIT_CONFIG

    from exporter.app import Exporter, ReloadError

    sim = runner = None
    demo_dir: Path | None = None  # the demo's temporary storage, removed at exit
    loader = lambda: load_config(args.config_file)  # noqa: E731
    storage = storage_path_flag(args, config) if config is not None else args.storage_path
    if args.demo:
        from exporter.demo import DEMO_TOKEN, JobRunner, demo_config, fixed_port, local_base_url, start_simulator

        args.listen_address = fixed_port(args.listen_address)
        exporter_url = local_base_url(args.listen_address)
        if web_config is not None and web_config.tls_enabled:
            exporter_url = exporter_url.replace("http://", "https://", 1)
        if args.storage_path:
            storage = args.storage_path
        else:
            demo_dir = Path(tempfile.mkdtemp(prefix="cdnetworks-demo-"))
            _TEMPORARY.append(demo_dir)
            storage = str(demo_dir / "demo.db")
        sim = start_simulator(exporter_url)
        demo = demo_config(sim.url, exporter_url, storage)
        config = parse_config(demo)
        loader = lambda: parse_config(demo)  # noqa: E731  (a reload rebuilds the same demo configuration)
        log.info("demo mode: simulator at %s, storage %s (%s), register token %r", sim.url, storage,
                 "removed at exit" if demo_dir is not None else "kept", DEMO_TOKEN)
    assert config is not None

    try:
        if config.storage.url is None:
            problem = path_problem(storage or config.storage.path)
            if problem is not None:
                raise RuntimeError(f"storage path {storage or config.storage.path}: {problem}")
        exporter = Exporter(config, storage_path=storage, web_config=web_config, listen_address=args.listen_address,
                            config_loader=loader, demo=args.demo, external_url=args.external_url,
                            log_task_failures=args.log_task_failures)
        exporter.start()
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        log.error("cannot start: %s", exc)
        if sim is not None:
            sim.stop()
        _remove_demo_storage(demo_dir)
        return 1
    if sim is not None:
        runner = JobRunner(sim, exporter.server.local_url)
        runner.start()
    log.info("cdnetworks-exporter %s serving on %s", __version__, exporter.server.url)

    while not stop.is_set():
        wake.wait()
        wake.clear()
        if reload_requested.is_set() and not stop.is_set():
            reload_requested.clear()
            try:
                exporter.reload()
            except ReloadError:
                pass  # logged by reload(); the running configuration goes on
            except Exception:  # a reload must never end the loop that also handles SIGTERM
                log.exception("reload failed, keeping the running configuration")

    if runner is not None:
        runner.stop()
    exporter.stop()
    if sim is not None:
        sim.stop()
    _remove_demo_storage(demo_dir)
    log.info("stopped")
    return 0


def _remove_demo_storage(directory: Path | None) -> None:
    """The demo's temporary storage goes at exit; a demo given --storage.path keeps its database."""
    if directory is None:
        return
    shutil.rmtree(directory, ignore_errors=True)
    if directory.exists():
        log.warning("could not remove the demo's temporary storage %s", directory)
    else:
        log.info("removed the demo's temporary storage %s", directory)


def _in_file(path: str, error: str) -> str:
    # File-level errors (unreadable, YAML syntax) already name the file.
    return error if error.startswith(f"{path}:") else f"{path}: {error}"


def load_configs(args: argparse.Namespace) -> tuple[Config | None, WebConfig | None, list[str]]:
    """Load the config (unless in demo mode) and the web config; every problem, prefixed by its file."""
    problems: list[str] = []
    config = web_config = None
    if not args.demo:
        try:
            config = load_config(args.config_file)
        except ConfigError as exc:
            problems.extend(_in_file(args.config_file, e) for e in exc.errors)
    if args.web_config_file:
        try:
            web_config = load_web_config(args.web_config_file)
        except ConfigError as exc:
            problems.extend(_in_file(args.web_config_file, e) for e in exc.errors)
    return config, web_config, problems


def storage_path_flag(args: argparse.Namespace, config: Config) -> str | None:
    """``--storage.path`` (or its environment variable) as the store's location: it overrides ``storage.path``,
    an SQLite file, and is not used when the configuration chooses PostgreSQL with ``storage.url`` (the image
    and the systemd unit set it for the SQLite default, which must not hide the configured database)."""
    if config.storage.url is None or not args.storage_path:
        return args.storage_path  # type: ignore[no-any-return]
    from exporter.storage.postgres_repo import mask_url

    log.info("storage.url is set: the store is %s; --storage.path (%s) is not used",
             mask_url(config.storage.url), args.storage_path)
    return None


def _report(problems: list[str], code: int) -> int:
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(problems)} problem(s) found", file=sys.stderr)
    return code


def check_config(args: argparse.Namespace, settings: Sequence[str] = ()) -> int:
    """The problems of the flags, environment variables and configuration (exit 2); then whether the store
    can be used (exit 3): the SQLite path can be created and written (nothing is created), or the PostgreSQL
    database of storage.url answers, asked with a short timeout and only read (no table is created)."""
    config, _, problems = load_configs(args)
    problems = [*settings, *problems]
    if problems:
        return _report(problems, EXIT_CONFIG)
    if config is not None and config.storage.url is not None:
        from exporter.storage.migrate import check_database

        storage_problems, summary = check_database(config.storage.url, config.storage.password)
        if storage_problems:
            return _report([f"{args.config_file}: storage.url: {p}" for p in storage_problems], EXIT_STORAGE)
        print(f"storage.url: {summary}")
    elif config is not None or args.storage_path:
        path = args.storage_path or (config.storage.path if config is not None else "")
        where = setting_name(args, "storage_path") if args.storage_path else f"{args.config_file}: storage.path"
        problem = path_problem(path)
        if problem is not None:
            return _report([f"{where}: {path}: {problem}"], EXIT_STORAGE)
        print(f"storage path: {path}: can be written")
    print("configuration is valid")
    return 0


def migrate(args: argparse.Namespace) -> int:
    """``--storage.migrate-from``: copy an SQLite store into the configured PostgreSQL store."""
    config, _, problems = load_configs(args)
    if problems:
        return _report(problems, EXIT_CONFIG)
    assert config is not None
    if config.storage.url is None:
        return _report([f"{args.config_file}: storage.url: not set; --storage.migrate-from copies into the "
                        "PostgreSQL store that storage.url names"], EXIT_CONFIG)
    source = Path(args.migrate_from)
    if not source.is_file():
        return _report([f"--storage.migrate-from: {source}: no such file"], EXIT_CONFIG)
    from exporter.storage.migrate import MigrationError, migrate_sqlite

    try:
        report = migrate_sqlite(str(source), config.storage.url, config.storage.password)
    except MigrationError as exc:
        print(f"migration failed: {exc}", file=sys.stderr)
        return 1
    for line in report.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
