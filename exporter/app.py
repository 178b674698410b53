"""Wiring: one running exporter (store, pollers, collector, HTTP app) built from a Config.

The CLI, the demo and the end-to-end tests all build the exporter through here, so they run the
same code path.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from . import __version__
from .collector import ExporterCollector
from .config import Config
from .fmgr import FmgrStatus, Lifecycle
from .health import ApiHealth
from .poller import PollerGroup
from .store import Store
from .web import App, NotifyEndpoint, RegistrationApi, Server
from .webconfig import BasicAuth, WebConfig, build_ssl_context

log = logging.getLogger(__name__)


class FmgrIngest:
    """What the notify receiver and the registration API write to: the store, plus a nudge to the poller
    so that a freshly registered or notified id is polled (confirmed) without waiting for the next tick."""

    def __init__(self, store: Store, wake: Callable[[], None], lifecycle: Lifecycle) -> None:
        self.store = store
        self.wake = wake
        self.lifecycle = lifecycle  # when a notified task gets its confirming poll

    def record_notification(self, status: FmgrStatus, dedup_key: str, received_ts: float) -> bool:
        new = self.store.record_notification(status, dedup_key, received_ts, lifecycle=self.lifecycle)
        if new:
            self.wake()
        return new

    def count_notification(self, result: str) -> None:
        self.store.count_notification(result)

    def register_ids(self, ids: Sequence[str], source: str) -> int:
        added = self.store.register_fmgr_ids(ids, source)
        if added:
            self.wake()
        return added

    def list_tasks(self, state: str | None, limit: int) -> list[dict[str, Any]]:
        return self.store.list_fmgr_tasks(state, limit)


class _Swappable:
    """One indirection so that a reload can swap the WSGI app while the server keeps its socket."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        return self.exporter.app(environ, start_response)

    @property
    def max_request_body_bytes(self) -> int:
        return self.exporter.app.max_request_body_bytes


class Exporter:
    def __init__(self, config: Config, *, storage_path: str | None = None, web_config: WebConfig | None = None,
                 listen_address: str = ":9891", clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.web_config = web_config
        self.store = Store(storage_path or config.storage.path, clock=clock)
        self.health = ApiHealth()
        self.pollers = PollerGroup(config, self.store, self.health, clock=clock)
        self.collector = ExporterCollector(config, self.store, self.health, clock=clock)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.collector)
        self.ingest = FmgrIngest(self.store, self.pollers.fmgr.wake, self.pollers.fmgr.lifecycle)
        self.app = self._build_app(config)
        self.server = Server(_Swappable(self), listen_address,
                             ssl_context=build_ssl_context(web_config) if web_config else None)
        self._config_loaded = True

    def _build_app(self, config: Config) -> App:
        wc = self.web_config
        return App(
            registry=self.registry, version=__version__, ready=self.ready,
            notify=self._notify_endpoint(config), api=self._registration_api(config),
            basic_auth=BasicAuth(wc.basic_auth_users) if wc and wc.basic_auth_users else None,
            headers=wc.headers if wc else None, clock=self.clock,
        )


    def _notify_endpoint(self, config: Config) -> NotifyEndpoint | None:
        n = config.fmgr.notify
        if not config.fmgr.enabled or not n.keys or not n.url:
            return None
        return NotifyEndpoint(path=n.path, url=n.url, keys={k.access_key: k.secret_key for k in n.keys},
                              max_body_bytes=n.max_body_bytes, sink=self.ingest)

    def _registration_api(self, config: Config) -> RegistrationApi | None:
        if not config.fmgr.enabled or not config.fmgr.register_token:
            return None
        return RegistrationApi(token=config.fmgr.register_token, max_ids=config.fmgr.max_register_ids,
                               registry=self.ingest)

    def ready(self) -> tuple[bool, str]:
        if not self._config_loaded:
            return False, "configuration not loaded"
        if not self.store.ping():
            return False, "store is not answering"
        return True, "ready"

    def start(self) -> None:
        self.server.start()
        self.pollers.start()

    def reload(self, config: Config) -> None:
        """SIGHUP: swap pollers, collector view and the notify/API settings; keep the store and server."""
        old = self.pollers
        old.stop()
        self.config = config
        self.health.retain({(a.name, kind) for a in config.accounts for kind, _ in config.task_kinds()}
                           | ({("", "fmgr")} if config.fmgr.enabled and config.fmgr.endpoint else set()))
        self.pollers = PollerGroup(config, self.store, self.health, clock=self.clock)
        self.collector.config = config
        self.ingest.wake = self.pollers.fmgr.wake
        self.ingest.lifecycle = self.pollers.fmgr.lifecycle
        self.app = self._build_app(config)
        self.pollers.start()
        log.info("configuration reloaded")

    def stop(self) -> None:
        self.pollers.stop()
        self.server.stop()
        self.store.close()
