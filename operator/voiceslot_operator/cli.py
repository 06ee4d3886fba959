"""Running the operator: ``voiceslot operator`` in the chart's Deployment.

- :func:`serve_operator` runs kopf embedded in the caller's event loop, which kopf then
  owns (tests run it in a thread of its own with a thread-safe ``stop_flag`` and a
  ``login`` for their Kubernetes emulator; production passes neither).
- :func:`run_operator` is the blocking entry point: standalone or peering as configured,
  until SIGTERM/SIGINT (kopf installs the signal handlers).
- :data:`operator_command` is the same as a click command, to be added to the
  ``voiceslot`` group (``cli.add_command(operator_command)``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Mapping
from typing import Any

import click
import kopf
from pydantic import ValidationError

from voiceslot.logs import configure_logging, get_logger
from voiceslot_operator.handlers import AdminFactory, LoginFn, build_registry
from voiceslot_operator.metrics import OperatorMetrics
from voiceslot_operator.settings import OperatorConfig

log = get_logger("voiceslot.operator")

# What kopf accepts as stop/ready flags; thread-safe ones let another thread control an
# operator running in its own loop (kopf cancels every task of its loop when it exits).
Flag = asyncio.Event | asyncio.Future[Any] | threading.Event | concurrent.futures.Future[Any]


async def serve_operator(
    config: OperatorConfig,
    *,
    stop_flag: Flag | None = None,
    ready_flag: Flag | None = None,
    login: LoginFn | None = None,
    admin_factory: AdminFactory | None = None,
    metrics: OperatorMetrics | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Run the VoiceSlot operator until ``stop_flag`` is set (or a signal arrives)."""
    metrics = metrics or OperatorMetrics()
    registry = build_registry(
        config, metrics=metrics, login=login, admin_factory=admin_factory, environ=environ
    )
    namespaces = config.watch_scope(environ=environ)
    log.info(
        "operator starting",
        allocator=config.allocator_target,
        scope="cluster" if config.clusterwide else list(namespaces),
        peering=config.peering or "standalone",
        mirror=config.mirror_voice_slots,
        metrics_port=config.metrics_port,
        liveness=config.liveness_endpoint,
    )
    peering: dict[str, Any] = (
        {"standalone": True}
        if config.standalone
        else {"standalone": False, "peering_name": config.peering, "priority": config.priority}
    )
    # Served for as long as the operator runs (and stopped with it: tests run many).
    stop_metrics = metrics.serve(config.metrics_port) if config.metrics_port else None
    try:
        await kopf.operator(
            registry=registry,
            clusterwide=config.clusterwide,
            namespaces=list(namespaces),
            liveness_endpoint=config.liveness_endpoint,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            **peering,
        )
    finally:
        if stop_metrics is not None:
            await asyncio.to_thread(stop_metrics)


def run_operator(config: OperatorConfig | None = None) -> None:
    """Blocking entry point: read ``VOICESLOT_OPERATOR__*`` (unless given a config) and
    run until SIGTERM/SIGINT."""
    asyncio.run(serve_operator(config or OperatorConfig()))


@click.command("operator")
@click.pass_context
def operator_command(ctx: click.Context) -> None:
    """Run the VoiceSlot operator (kopf) until SIGTERM/SIGINT.

    Configured by VOICESLOT_OPERATOR__* (allocator target and admin key, namespaces or
    cluster-wide, peering, intervals); see voiceslot_operator.settings.
    """
    settings = getattr(ctx.obj, "settings", None)  # the voiceslot group's, when wired there
    configure_logging(
        level=getattr(settings, "log_level", "INFO"), fmt=getattr(settings, "log_format", "json")
    )
    try:
        config = OperatorConfig()
    except ValidationError as exc:
        raise click.UsageError(f"invalid operator configuration: {exc}") from exc
    run_operator(config)
