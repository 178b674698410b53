"""Wiring: one running exporter (store, pollers, collector, HTTP app) built from a Config.

The CLI, the demo and the end-to-end tests all build the exporter through here, so they run the
same code path.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from exporter import __version__
from exporter.config import Config, ConfigError, StorageConfig
from exporter.fmgr.endpoints import notify_endpoint, registration_api
from exporter.fmgr.ingest import FmgrIngest
from exporter.http.server import RejectCounter
from exporter.http.web import App, Server, WebCollector
from exporter.http.webconfig import AuthFailures, BasicAuth, WebConfig, build_ssl_context
from exporter.metrics.collector import ExporterCollector, ReloadStatus
from exporter.metrics.health import ApiHealth
from exporter.polling.poller import PollerGroup
from exporter.polling.quota import pollers as running_pollers
from exporter.storage.repository import open_repository
from exporter.storage.store import Store

log = logging.getLogger(__name__)

# Workers that run handlers on whole requests; slow or idle connections never hold one (exporter/httpd.py).
HTTP_WORKERS = 16


class ReloadError(Exception):
    """A reload that was not applied: the running configuration goes on."""


@dataclass(frozen=True)
class Runtime:
    """Everything one configuration decides, built as a whole before it serves, replaced as a whole."""

    config: Config
    store: Store
    pollers: PollerGroup
    collector: ExporterCollector
    registry: CollectorRegistry
    ingest: FmgrIngest
    app: App


def _same_storage(a: StorageConfig, a_target: str, b: StorageConfig, b_target: str) -> bool:
    """One store per database: a reload keeps it unless the database changed (or its password)."""
    if a.url is not None or b.url is not None:
        return (a_target, a.password) == (b_target, b.password)
    return os.path.abspath(a_target) == os.path.abspath(b_target)


class Exporter:
    """The running exporter: the HTTP server (kept for the life of the process) and the current Runtime.

    ``config_loader`` re-reads the configuration for a reload (SIGHUP or ``POST /-/reload``); without it a
    reload needs the new Config passed in. ``demo`` (``--demo``) shows the demo's register token on the
    landing page, with examples.
    """

    def __init__(self, config: Config, *, storage_path: str | None = None, web_config: WebConfig | None = None,
                 listen_address: str = ":9891", clock: Callable[[], float] = time.time,
                 config_loader: Callable[[], Config] | None = None, demo: bool = False) -> None:
        self.clock = clock
        self.demo = demo  # --demo: the landing page says so and shows how to use the registration API
        self.web_config = web_config
        self._storage_flag = storage_path
        self._config_loader = config_loader
        self._reload_lock = threading.Lock()
        self._started = False
        self.health = ApiHealth()
        self.reload_status = ReloadStatus(clock=clock)
        # The web config is read once per process, so basic auth (and its cache of verified passwords) and
        # the HTTP layer's counters outlive reloads.
        self.auth_failures = AuthFailures()
        self.basic_auth = (BasicAuth(web_config.basic_auth_users, self.auth_failures)
                           if web_config and web_config.basic_auth_users else None)
        self.http_rejects = RejectCounter()
        self.web_collector = WebCollector(self.auth_failures, self.http_rejects)
        self.runtime = self._build(config, None)
        if self.basic_auth is not None:
            # Verified passwords are remembered in the store too (as salted, keyed digests), so that a restart
            # does not make the scrapes' password wait for bcrypt again, perhaps behind a flood of wrong ones.
            self.basic_auth.attach(self.runtime.store)
        try:
            self.server = Server(self.runtime.app, listen_address,
                                 ssl_context=build_ssl_context(web_config) if web_config else None,
                                 threads=HTTP_WORKERS, rejects=self.http_rejects)
        except BaseException:
            self.runtime.store.close()
            raise

    # The current runtime's parts, under the names the rest of the code and the tests use.
    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def pollers(self) -> PollerGroup:
        return self.runtime.pollers

    @property
    def collector(self) -> ExporterCollector:
        return self.runtime.collector

    @property
    def registry(self) -> CollectorRegistry:
        return self.runtime.registry

    @property
    def ingest(self) -> FmgrIngest:
        return self.runtime.ingest

    @property
    def app(self) -> App:
        return self.runtime.app

    def _build(self, config: Config, current: Runtime | None) -> Runtime:
        """A complete runtime for ``config``, not started. Raises (and leaves nothing open) when any part
        cannot be built; ``current`` is not touched, except that its store is shared when the path is the
        same (one writer per database file)."""
        storage = config.storage
        target = self._storage_flag or storage.target()
        reuse = current is not None and _same_storage(current.config.storage, self._storage_flag or
                                                      current.config.storage.target(), storage, target)
        store = current.store if current is not None and reuse else Store(
            target, clock=self.clock, repository=open_repository(target, password=storage.password))
        try:
            pollers = PollerGroup(config, store, self.health, clock=self.clock)
            collector = ExporterCollector(
                config, store, self.health, clock=self.clock,
                leases=None if pollers.leases is None else (lambda: pollers.held() or set()))
            registry = CollectorRegistry(auto_describe=True)
            registry.register(collector)
            registry.register(self.reload_status)
            registry.register(self.web_collector)
            ingest = FmgrIngest(store, pollers.fmgr.wake, pollers.fmgr.lifecycle)
            app = self._build_app(config, registry, ingest)
        except BaseException:
            if not reuse:
                store.close()
            raise
        return Runtime(config, store, pollers, collector, registry, ingest, app)

    def _build_app(self, config: Config, registry: CollectorRegistry, ingest: FmgrIngest) -> App:
        wc = self.web_config
        return App(
            registry=registry, version=__version__, ready=self.ready,
            notify=notify_endpoint(config.fmgr, ingest), api=registration_api(config.fmgr, ingest),
            basic_auth=self.basic_auth,
            headers=wc.headers if wc else None, clock=self.clock, reload=self.reload,
            demo_token=config.fmgr.register_token if self.demo else None,
        )

    def ready(self) -> tuple[bool, str]:
        ok, why = self.store.write_health()
        return (True, "ready") if ok else (False, why)

    def start(self) -> None:
        self.server.start()
        self.runtime.pollers.start()
        self._started = True

    def reload(self, config: Config | None = None) -> None:
        """Load ``config`` (default: re-read through the config loader) into a new runtime, then swap it in.

        Everything that can fail (reading and validating the file, opening the store, building the pollers
        and the app) happens before the swap: on any failure the running runtime goes on untouched,
        ``cdnetworks_config_last_reload_successful`` drops to 0 and ReloadError says why. Reloads are
        serialised: SIGHUP and ``POST /-/reload`` take the same path.
        """
        with self._reload_lock:
            old = self.runtime
            try:
                if config is None:
                    if self._config_loader is None:
                        raise ReloadError("no configuration source to reload from")
                    config = self._config_loader()
                new = self._build(config, old)
            except Exception as exc:
                # Building new pollers declared their series; forget those of a configuration that never ran.
                self.health.retain(set(running_pollers(old.config)))
                self.reload_status.record(False)
                if isinstance(exc, ConfigError):
                    reason = "; ".join(exc.errors)
                elif isinstance(exc, ReloadError):
                    reason = str(exc)
                else:
                    reason = f"{type(exc).__name__}: {exc}"
                log.error("reload failed, keeping the running configuration: %s", reason)
                raise ReloadError(reason) from exc
            # The old pollers finish their request in flight first, so that no two pollers of one account
            # share a budget slot; the old app keeps serving meanwhile.
            old.pollers.stop()
            self.runtime = new
            self.server.swap(new.app)
            if self.basic_auth is not None and new.store is not old.store:
                self.basic_auth.attach(new.store)
            self.health.retain(set(running_pollers(config)))
            if self._started:
                new.pollers.start()
            if new.store is not old.store:
                old.store.close()
            self.reload_status.record(True)
            log.info("configuration reloaded")

    def stop(self) -> None:
        self.runtime.pollers.stop()
        self.server.stop()
        self.runtime.store.close()
