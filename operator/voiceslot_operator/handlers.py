"""kopf wiring: VoiceSlot custom resources as the Kubernetes face of the allocator's slots.

The allocator's database is the source of truth; a VoiceSlot mirrors one voice into its
status and carries two intents back: ``spec.pinned`` and deletion. This module only
registers thin handlers on a fresh ``kopf.OperatorRegistry`` (tests build one per
operator; nothing touches kopf's default registry); the work is elsewhere:

- :mod:`.reconciler`: refresh one VoiceSlot (create/resume, ``spec.pinned``, a timer);
- :mod:`.finalizer`: what deleting a VoiceSlot does (``voiceslot.io/reclaim``);
- :mod:`.loops`: operator-wide maintenance and listings;
- :mod:`.claims`, :mod:`.tenancy`, :mod:`.deletion`, :mod:`.backoff`: pure decisions.

A kopf index (``voiceslot_claims``: voice id -> the VoiceSlots naming it) tells each
handler which VoiceSlot owns a voice; kopf fills it before any handler runs.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf

from voiceslot.logs import get_logger
from voiceslot_operator.backoff import backoff_delay
from voiceslot_operator.claims import Claim, claim_of
from voiceslot_operator.client import AllocatorError, AllocatorUnavailable
from voiceslot_operator.conditions import CONFLICT, is_deletion_ongoing
from voiceslot_operator.finalizer import FINALIZER, Finalizer
from voiceslot_operator.kube import GROUP, PLURAL, VERSION
from voiceslot_operator.loops import Loops
from voiceslot_operator.metrics import OperatorMetrics
from voiceslot_operator.mirror import MANAGED_BY, is_mirrored
from voiceslot_operator.reconciler import Reconciler
from voiceslot_operator.runtime import AdminFactory, OperatorRuntime
from voiceslot_operator.settings import OperatorConfig

log = get_logger("voiceslot.operator")

# kopf's own bookkeeping (progress, last-handled spec) goes under our domain too; kopf
# then ignores every ``voiceslot.io/`` annotation when diffing, our ledger's included.
STORAGE_PREFIX = "voiceslot.io"

# The kopf index of VoiceSlots by voice id; kopf passes it to handlers under this name.
CLAIMS_INDEX = "voiceslot_claims"

LoginFn = Callable[..., kopf.ConnectionInfo | None | Awaitable[kopf.ConnectionInfo | None]]


def configure_settings(
    settings: kopf.OperatorSettings, config: OperatorConfig, *, identity: str | None = None
) -> None:
    """kopf settings for VoiceSlots: our finalizer, annotation-only storage (the CRD's
    structural schema would prune anything kopf wrote under status), bounded watches."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = config.watch_server_timeout_s
    settings.watching.client_timeout = config.watch_client_timeout_s
    settings.watching.connect_timeout = config.watch_connect_timeout_s
    # kopf would post every handler's success as an event; ours are the ones that matter.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = MANAGED_BY
    settings.posting.reporting_instance = (
        identity or os.environ.get("POD_ID") or socket.gethostname()
    )


def _claims(kw: Mapping[str, Any]) -> list[Claim]:
    """The VoiceSlots naming the same voice, from the handler's kopf index kwarg."""
    index: kopf.Index[str, Claim] | None = kw.get(CLAIMS_INDEX)
    voice_id = str((kw.get("spec") or {}).get("voiceId") or "")
    return [] if index is None else list(index.get(voice_id, []))


def _object_args(kw: Mapping[str, Any], *, spec: bool = True) -> dict[str, Any]:
    """The per-object kwargs kopf passes that the reconciler and finalizer take."""
    names = (
        ("body", "spec", "meta", "status", "patch") if spec else ("body", "meta", "status", "patch")
    )
    return {name: kw[name] for name in names}


def build_registry(
    config: OperatorConfig,
    *,
    metrics: OperatorMetrics | None = None,
    login: LoginFn | None = None,
    admin_factory: AdminFactory | None = None,
    environ: Mapping[str, str] | None = None,
) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the VoiceSlot operator.

    ``login`` returns kopf's ``ConnectionInfo`` (default: ``kopf.login_via_client``, i.e.
    in-cluster service account or kubeconfig); ``admin_factory`` builds the allocator
    client (default: from ``config``).
    """
    registry = kopf.OperatorRegistry()
    rt = OperatorRuntime(
        config, metrics=metrics or OperatorMetrics(), admin_factory=admin_factory, environ=environ
    )
    rec = Reconciler(rt)
    fin = Finalizer(rt, rec)
    loops = Loops(rt)
    login_fn: LoginFn = login or kopf.login_via_client
    resource = (GROUP, VERSION, PLURAL)

    def retry_later(exc: AllocatorError, retry: int) -> kopf.TemporaryError:
        delay = backoff_delay(retry, base_s=config.retry_delay_s, cap_s=config.retry_max_delay_s)
        return kopf.TemporaryError(str(exc), delay=delay)

    async def refresh_once(where: str, kw: Mapping[str, Any]) -> Any:
        """Reconcile; on an unreachable allocator say so on the object and re-raise."""
        try:
            return await rec.reconcile(**_object_args(kw), claims=_claims(kw))
        except AllocatorError as exc:
            rt.metrics.errors.labels(where).inc()
            if isinstance(exc, AllocatorUnavailable):
                rec.unreachable(**_object_args(kw, spec=False), error=exc)
            raise

    @kopf.on.login(registry=registry)
    async def authenticate(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Async on purpose: kopf runs sync handlers in threads, and the event below
        # belongs to the operator's loop.
        info = login_fn(**kwargs)
        if inspect.isawaitable(info):
            info = await info
        # Kept for the VoiceSlot writes kopf has no API for (mirroring); refreshed on
        # every re-login.
        rt.connection = info
        if info is not None:
            rt.logged_in.set()
        return info

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings, config)
        loops.start()

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await loops.stop()
        await rt.close()

    @kopf.index(*resource, id=CLAIMS_INDEX, registry=registry)
    def voiceslot_claims(spec: kopf.Spec, meta: kopf.Meta, **_: Any) -> dict[str, Claim]:
        return {str(spec.get("voiceId") or ""): claim_of(meta)}

    # One handler for a new object, a restart, and a changed spec.pinned: the refresh
    # applies the pin, once it knows this VoiceSlot may.
    @kopf.on.resume(*resource, registry=registry)
    @kopf.on.create(*resource, registry=registry)
    @kopf.on.field(*resource, field="spec.pinned", registry=registry)
    async def observe(meta: kopf.Meta, retry: int, **kw: Any) -> None:
        if is_deletion_ongoing(meta):
            return  # the finalizer owns the object now
        try:
            await refresh_once("reconcile", {**kw, "meta": meta})
        except AllocatorError as exc:
            raise retry_later(exc, retry) from exc

    @kopf.timer(*resource, interval=config.reconcile_interval_s, registry=registry)
    async def refresh(meta: kopf.Meta, **kw: Any) -> None:
        if is_deletion_ongoing(meta):
            return
        try:
            voice = await refresh_once("reconcile", {**kw, "meta": meta})
        except AllocatorError as exc:
            # Said on the object; the next tick is the retry.
            log.warning("refresh failed", name=meta.get("name"), error=str(exc))
            return
        # A mirrored VoiceSlot is redundant once its voice is gone, or once a declared
        # VoiceSlot stands for the voice (it then owns it; deleting a non-owner never
        # touches the voice).
        redundant = voice is None or rec.ignored_for(meta) == CONFLICT
        if redundant and is_mirrored(meta) and config.mirror_voice_slots:
            try:
                await loops.forget_mirrored(meta)
            except Exception as exc:  # the next tick tries again
                rt.metrics.errors.labels("mirror").inc()
                log.warning("deleting a mirrored VoiceSlot failed", error=repr(exc))

    @kopf.on.delete(*resource, registry=registry)
    async def release(retry: int, **kw: Any) -> None:
        await fin.release(**_object_args(kw), claims=_claims(kw), retry=retry)

    return registry
