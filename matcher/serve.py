"""Run :class:`~matcher.service.MatcherService` from a config file, with signals.

Also serves the provincial dashboard (:mod:`matcher.dashboard`) when enabled; its reads run on
the service's store thread. SIGTERM and SIGINT stop the service after the message in hand.
SIGHUP reloads the gateway registry: newly enrolled gateways are accepted without a restart
(until then their batches are refused as ``unknown_gateway`` without an ack, so they wait in
the gateway's outbox).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from contract.registry import load_registry
from contract.sealing import load_matcher_private_key
from core.errors import BzgwError, ConfigError
from matcher.audit import AuditLog
from matcher.config import MatcherConfig
from matcher.service import MatcherService, default_client_id
from matcher.store import open_store

log = logging.getLogger(__name__)


def build_service(cfg: MatcherConfig, config_path: Path | None = None) -> MatcherService:
    """The service a matcher config describes (store opened and migrated).

    Raises:
        BzgwError: no MQTT section, unreadable key or registry, unreachable database.
    """
    if cfg.mqtt is None:
        raise ConfigError([(str(config_path or ""), "matcher -> mqtt: the matcher needs an "
                            "mqtt section (broker, CA, client certificate)")])
    registry = load_registry(cfg.registry)
    private = load_matcher_private_key(cfg.private_key)
    store = open_store(cfg.db)
    return MatcherService(store=store, registry=registry, private_key=private, mqtt=cfg.mqtt,
                          client_id=cfg.client_id or default_client_id(),
                          retention_days=cfg.retention_days,
                          purge_interval_s=cfg.purge_interval_s,
                          max_wire=cfg.max_batch_bytes,
                          max_plaintext=cfg.max_plaintext_bytes)


async def _dashboard(service: MatcherService, cfg: MatcherConfig) -> Any:
    """Start the dashboard on the service's store thread, or log why not (ingest goes on)."""
    if not cfg.dashboard_enabled:
        return None
    from matcher.dashboard import auth_from_config, start_dashboard
    from matcher.dashboard_queries import load_exposure_venues

    reports = cfg.reports_dir
    exposures = (lambda: load_exposure_venues(reports)) if reports is not None else None
    try:
        auth = auth_from_config(cfg, service.audit)
        runner = await start_dashboard(service.store, cfg, exposures=exposures,
                                       run_db=service.run_db, auth=auth)
    except BzgwError as err:  # e.g. a second matcher process on this host: port taken
        log.error("%s; serving ingest without the dashboard", err)
        return None
    log.warning("dashboard on http://%s:%d/", cfg.dashboard_listen, cfg.dashboard_port)
    if not auth.users.list():
        log.warning("no dashboard users in %s: create the first admin with `bzgw matcher "
                    "user add NAME --role admin --config FILE`", cfg.users_db)
    return runner


async def serve_async(service: MatcherService, cfg: MatcherConfig) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads the registry."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    runner = await _dashboard(service, cfg)

    def reload() -> None:
        try:
            service.set_registry(load_registry(cfg.registry))
            log.warning("registry reloaded: %d gateways", len(service.registry.gateways))
        except BzgwError as err:
            log.error("registry not reloaded: %s", err)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    task = asyncio.create_task(service.run(stop), name="matcher-service")
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        waiter.cancel()
        if runner is not None:  # before the service closes the store thread it reads on
            await runner.cleanup()
        await task
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def open_audit(cfg: MatcherConfig) -> AuditLog:
    """The matcher's audit log, verified; the signing key is made on first start.

    Raises:
        AuditError: the log was changed, cut or reordered: the matcher does not start.
    """
    return AuditLog.open(cfg.audit_log, cfg.audit_key)


def serve(cfg: MatcherConfig, config_path: Path | None = None) -> None:
    """Blocking entry point of ``bzgw matcher serve``."""
    audit = open_audit(cfg)
    service = build_service(cfg, config_path)
    audit.append("start", actor=service.client_id, store=service.store.db.dialect)
    service.audit = audit
    log.warning("matcher %s: %d gateways registered, store %s", service.client_id,
                len(service.registry.gateways), service.store.db.dialect)
    try:
        asyncio.run(serve_async(service, cfg))
    finally:
        service.store.close()
