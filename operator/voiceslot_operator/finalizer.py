"""The ``voiceslot.io/reclaim`` finalizer: what deleting a VoiceSlot does, carried out.

The decision is :func:`.deletion.decide_delete`'s; this module gathers its facts (the
voice from the allocator, the claims from kopf's index, the object's annotations and
deletion time), carries the verdict out, and says so on the object (condition
``DeletionBlocked`` while waiting, a Kubernetes event for the outcome). Raising
``kopf.TemporaryError`` keeps the finalizer, with an exponentially growing delay.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import kopf

from voiceslot.logs import get_logger
from voiceslot_operator.backoff import backoff_delay
from voiceslot_operator.claims import Claim, claim_of
from voiceslot_operator.client import AllocatorError, BadVoiceId, NotNow, VoiceGone
from voiceslot_operator.conditions import (
    DELETION_BLOCKED,
    VoiceSnapshot,
    default_conditions,
    set_condition,
)
from voiceslot_operator.deletion import (
    DeleteFacts,
    Verdict,
    decide_delete,
    deletion_age_s,
    is_forced,
)
from voiceslot_operator.reconciler import Reconciler, standing
from voiceslot_operator.runtime import OperatorRuntime

log = get_logger("voiceslot.operator")

FINALIZER = "voiceslot.io/reclaim"


class Finalizer:
    def __init__(self, rt: OperatorRuntime, reconciler: Reconciler) -> None:
        self.rt = rt
        self.reconciler = reconciler

    def _retry(self, message: str, retry: int) -> kopf.TemporaryError:
        c = self.rt.config
        delay = backoff_delay(retry, base_s=c.retry_delay_s, cap_s=c.retry_max_delay_s)
        return kopf.TemporaryError(message, delay=delay)

    async def release(
        self,
        *,
        body: kopf.Body,
        spec: Mapping[str, Any],
        meta: Mapping[str, Any],
        status: Mapping[str, Any],
        patch: kopf.Patch,
        claims: Iterable[Claim],
        retry: int,
    ) -> None:
        """Decide and act; returns when the VoiceSlot may go, raises while it may not."""
        rt = self.rt
        voice_id = str(spec.get("voiceId") or "")
        me = claim_of(meta)
        try:
            voice: VoiceSnapshot | None = await rt.admin.get_voice(voice_id)
        except (VoiceGone, BadVoiceId):
            voice = None
        except AllocatorError as exc:
            rt.metrics.errors.labels("finalizer").inc()
            self.reconciler.unreachable(body=body, meta=meta, status=status, patch=patch, error=exc)
            raise self._retry(f"cannot ask the allocator about {voice_id}: {exc}", retry) from exc
        facts = DeleteFacts(
            voice_exists=voice is not None,
            permitted=False,
            owns_voice=False,
            successor=None,
            forced=is_forced(meta),
            phase=voice.phase if voice else None,
            active_leases=voice.active_leases if voice else 0,
            waited_s=deletion_age_s(meta, now=datetime.now(UTC)),
            wait_bound_s=rt.config.delete_lease_wait_s,
        )
        if voice is not None:
            claims = list(claims)
            stand = standing(rt, me, voice, claims)
            # Ownership among all claims as they were before any deletion began: a
            # duplicate's deletion must never count as the owner's.
            oldest = standing(rt, _alive(me), voice, [_alive(c) for c in claims])
            owns = stand.permitted and (stand.acts or oldest.acts)
            successor = stand.owner.ref if owns and not stand.acts and stand.owner else None
            facts = replace(facts, permitted=stand.permitted, owns_voice=owns, successor=successor)
        verdict = decide_delete(facts)
        rt.metrics.deletions.labels(verdict.value).inc()
        await self._carry_out(
            verdict, facts, voice, body=body, meta=meta, status=status, patch=patch, retry=retry
        )

    async def _carry_out(
        self,
        verdict: Verdict,
        facts: DeleteFacts,
        voice: VoiceSnapshot | None,
        *,
        body: kopf.Body,
        meta: Mapping[str, Any],
        status: Mapping[str, Any],
        patch: kopf.Patch,
        retry: int,
    ) -> None:
        voice_id = voice.voice_id if voice else "?"
        if verdict == Verdict.WAIT_SETTLE:
            raise self._retry(f"voice {voice_id} is {facts.phase}; deleting once it settles", retry)
        if verdict == Verdict.WAIT_LEASE:
            left = max(0.0, facts.wait_bound_s - facts.waited_s)
            message = (
                f"voice {voice_id} has {facts.active_leases} live lease(s); the remote voice "
                f"is reclaimed once they end (giving up in {left:.0f}s; annotate "
                f'voiceslot.io/force-delete="true" to reclaim now)'
            )
            self._blocked(status, meta, patch, "LeaseActive", message)
            if retry == 0:
                kopf.event(body, type="Normal", reason="DeletionWaitsForLease", message=message)
            raise self._retry(message, retry)
        self.reconciler.forget(meta)
        if verdict == Verdict.RELEASE:
            return
        if verdict == Verdict.HAND_OVER:
            kopf.event(
                body,
                type="Normal",
                reason="HandedOver",
                message=f"{facts.successor} stands for voice {voice_id} now; it is kept",
            )
            return
        if verdict == Verdict.GIVE_UP:
            await self._unpin(voice)
            kopf.event(
                body,
                type="Warning",
                reason="ReclaimAbandoned",
                message=f"voice {voice_id} stayed leased for {facts.waited_s:.0f}s; released "
                "without reclaiming (unpinned: idle reclaim frees the slot later)",
            )
            return
        await self._reclaim(
            voice_id,
            forced=verdict == Verdict.FORCE_RECLAIM,
            body=body,
            retry=retry,
            pinned=bool(voice and voice.pinned),
        )

    async def _reclaim(
        self, voice_id: str, *, forced: bool, body: kopf.Body, retry: int, pinned: bool
    ) -> None:
        rt = self.rt
        try:
            if pinned and not forced:
                # Unpin first, then reclaim without force: the allocator refuses
                # atomically if a lease was taken since we looked.
                await rt.admin.set_pinned(voice_id, False)
            voice = await rt.admin.reclaim_slot(voice_id, force=forced)
        except (VoiceGone, BadVoiceId):
            return
        except NotNow as exc:
            # Leased (or no longer ready) since we looked: decide again.
            raise self._retry(f"reclaim {voice_id}: {exc}", retry) from exc
        except AllocatorError as exc:
            rt.metrics.errors.labels("finalizer").inc()
            raise self._retry(f"reclaim {voice_id}: {exc}", retry) from exc
        if voice.phase in ("Ready", "Reclaiming") or voice.remote_id:
            # The provider refused the delete; the voice went back to READY.
            rt.metrics.errors.labels("finalizer").inc()
            raise self._retry(
                f"the provider did not delete {voice_id}'s remote voice: {voice.last_error}",
                retry,
            )
        rt.metrics.reclaims.inc()
        kopf.event(
            body,
            type="Normal",
            reason="SlotReclaimed",
            message=f"remote voice deleted at {voice.provider}; the sample is kept"
            + (" (forced)" if forced else ""),
        )

    async def _unpin(self, voice: VoiceSnapshot | None) -> None:
        if voice is None or not voice.pinned:
            return
        try:
            await self.rt.admin.set_pinned(voice.voice_id, False)
        except AllocatorError as exc:
            raise kopf.TemporaryError(f"unpin {voice.voice_id}: {exc}") from exc

    def _blocked(
        self,
        status: Mapping[str, Any],
        meta: Mapping[str, Any],
        patch: kopf.Patch,
        reason: str,
        message: str,
    ) -> None:
        now = datetime.now(UTC)
        generation = meta.get("generation")
        conditions = default_conditions(
            status.get("conditions") or [], now=now, generation=generation
        )
        conditions = set_condition(
            conditions, DELETION_BLOCKED, "True", reason, message, now=now, generation=generation
        )
        patch.status["conditions"] = conditions


def _alive(claim: Claim) -> Claim:
    return replace(claim, deleting=False)
