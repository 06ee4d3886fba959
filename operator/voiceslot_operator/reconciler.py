"""One VoiceSlot's status, refreshed from the allocator; ``spec.pinned`` applied.

Before acting, a refresh checks that the VoiceSlot may act for the voice at all:

- its namespace may act for the voice's owner (:mod:`.tenancy`), else ``Refused``;
- it is the VoiceSlot that owns the voice (:mod:`.claims`), else ``Conflict``.

An ignored VoiceSlot gets the condition and one Kubernetes event (when the condition
turns True), and the operator neither pins, unpins nor mirrors the voice's state into it.

When the allocator cannot be asked, Ready turns Unknown (one event per outage), and
Ready comes back with the next answer.

A per-object ledger (last allocator event folded, conditions computed) keeps handlers
of one object that run concurrently (kopf runs timers beside the other handlers) from
posting an event twice or writing older conditions over newer ones. It is only a
cache: the newest folded event id is also stored on the object, so a restart resumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from voiceslot.logs import get_logger
from voiceslot_operator.claims import Claim, claim_of, owner_claim, same_object
from voiceslot_operator.client import BadVoiceId, VoiceGone
from voiceslot_operator.conditions import (
    CONFLICT,
    READY,
    REFUSED,
    UNKNOWN_PHASE,
    AllocatorEvent,
    VoiceSnapshot,
    default_conditions,
    fold_events,
    get_condition,
    mark_overdue,
    mark_unreachable,
    observe_voice,
    overdue_s,
    set_condition,
    status_fields,
    was_unreachable,
)
from voiceslot_operator.runtime import OperatorRuntime

log = get_logger("voiceslot.operator")

LAST_EVENT_ANNOTATION = "voiceslot.io/last-event-id"
# Bound on the per-object memory kept in-process.
MAX_REMEMBERED_OBJECTS = 10_000


@dataclass
class _Ledger:
    """What this process last wrote into one VoiceSlot, and from what."""

    event_id: int = -1
    """Newest allocator event folded into ``conditions``; -1: never looked."""
    conditions: list[dict[str, Any]] = field(default_factory=list)
    voice: VoiceSnapshot | None = None
    seen: tuple[Any, ...] | None = None
    """The inputs of the last full look (sweep entry, spec, lease holder, owner claim):
    while they are the same, the status would be too, and neither the allocator nor
    Kubernetes is asked anything."""
    written: dict[str, Any] = field(default_factory=dict)
    """The status written then (None: field removed), to notice it was overwritten."""
    ignored: str | None = None
    """The condition (Refused, Conflict) this process last ignored the object for."""
    down: bool | None = None
    """Whether this process last found the allocator unreachable; None: never looked
    (the object's Ready condition says). Handlers of one object overlap and read bodies
    from before each other's patches: this keeps their events from doubling."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class Standing:
    """Whether a VoiceSlot may act for its voice; ``blocker`` says why not."""

    permitted: bool
    owner: Claim | None
    blocker: str | None = None

    @property
    def acts(self) -> bool:
        return self.blocker is None


def standing(
    rt: OperatorRuntime, me: Claim, voice: VoiceSnapshot, claims: Iterable[Claim]
) -> Standing:
    """Tenancy first, then ownership among the VoiceSlots naming the voice."""
    owner_ok = rt.policy.may_act_for
    if not owner_ok(me.namespace, voice.owner):
        return Standing(False, None, REFUSED)
    owner = owner_claim(
        [c for c in claims if not same_object(c, me)] + [me],
        lambda namespace: owner_ok(namespace, voice.owner),
    )
    return Standing(True, owner, None if same_object(owner, me) else CONFLICT)


class Reconciler:
    """The per-object work behind the create/resume/field/timer handlers."""

    def __init__(self, rt: OperatorRuntime) -> None:
        self.rt = rt
        self._ledgers: dict[str, _Ledger] = {}

    def _ledger(self, uid: str) -> _Ledger:
        if uid not in self._ledgers:
            # Dropped on deletion; the bound covers VoiceSlots whose finalizer was removed
            # by hand. A dropped ledger only costs reading the object's own annotation.
            while len(self._ledgers) >= MAX_REMEMBERED_OBJECTS:
                self._ledgers.pop(next(iter(self._ledgers)))
            self._ledgers[uid] = _Ledger()
        return self._ledgers[uid]

    def ignored_for(self, meta: Mapping[str, Any]) -> str | None:
        """The condition (Refused, Conflict) the last refresh ignored the object for."""
        ledger = self._ledgers.get(_key(meta))
        return ledger.ignored if ledger else None

    def forget(self, meta: Mapping[str, Any]) -> None:
        self._ledgers.pop(_key(meta), None)

    async def reconcile(
        self,
        *,
        body: kopf.Body,
        spec: Mapping[str, Any],
        meta: Mapping[str, Any],
        status: Mapping[str, Any],
        patch: kopf.Patch,
        claims: Iterable[Claim] = (),
    ) -> VoiceSnapshot | None:
        """Mirror the allocator's voice into ``patch.status``; apply ``spec.pinned``.

        Returns the voice, or None when the allocator has none. Raises
        ``AllocatorError`` (``AllocatorUnavailable`` mostly) when it cannot answer.
        """
        rt = self.rt
        voice_id = str(spec.get("voiceId") or "")
        generation = meta.get("generation")
        me = claim_of(meta)
        claims = list(claims)
        ledger = self._ledger(_key(meta))
        async with ledger.lock:
            stored = _int(meta.get("annotations", {}).get(LAST_EVENT_ANNOTATION))
            slot = rt.slots.get(voice_id)
            lease_holder = slot.lease_holder if slot else None
            now = datetime.now(UTC)
            # Steady state costs nothing: if the sweep shows the voice as it was at our last
            # full look, and the spec, lease holder and claims are the same, skip RPCs and
            # the patch. 10k VoiceSlots polled one by one would be thousands of calls a
            # minute.
            cached = rt.voices.get(voice_id) if rt.voices is not None else None
            since = slot.state_since if slot else None
            seen = (
                cached,
                self._overdue(cached, _since(since, cached), now) is not None,
                bool(spec.get("pinned", False)),
                spec.get("provider"),
                generation,
                lease_holder,
                tuple(sorted(claims)),
            )
            if (
                cached is not None
                and seen == ledger.seen
                and (stored if stored is not None else -1) == ledger.event_id
                and all(status.get(k) == v for k, v in ledger.written.items())
            ):
                rt.metrics.reconciles.labels("unchanged").inc()
                if ledger.ignored:
                    rt.metrics.refusals.labels(ledger.ignored.lower()).inc()
                return ledger.voice
            # Continue from whichever is newer: the ledger in the object (survives
            # restarts) or this process's own (ahead of a body read before our last patch).
            if stored is not None and stored > ledger.event_id:
                after, conditions = stored, list(status.get("conditions") or [])
            elif ledger.event_id >= 0:
                after, conditions = ledger.event_id, ledger.conditions
            else:
                after, conditions = None, list(status.get("conditions") or [])
            was_down = _was_down(ledger, status)
            # Events first, then the voice: its state is then at least as new as the
            # history, so "ready now" soundly closes a drift or stuck reset seen in it.
            voice: VoiceSnapshot | None = None
            events: list[AllocatorEvent] = []
            try:
                events = await rt.admin.voice_events(voice_id, after_id=after)
                voice = await rt.admin.get_voice(voice_id)
            except (VoiceGone, BadVoiceId):
                voice, events = None, []
            rt.allocator_reachable(True)
            if voice is not None:
                stand = standing(rt, me, voice, claims)
                if not stand.acts:
                    written = self._ignore(
                        body, voice, stand, me, conditions, generation, now, ledger
                    )
                    patch.status.update(written)
                    # Ignored steadily too: the skip above applies while nothing changes.
                    ledger.seen, ledger.voice, ledger.written = seen, voice, written
                    ledger.event_id = stored if stored is not None else -1
                    ledger.conditions = list(written["conditions"])
                    ledger.ignored, ledger.down = stand.blocker, False
                    return voice
                ledger.ignored = None
                if voice.pinned != bool(spec.get("pinned", False)):
                    voice = await self.set_pinned(voice_id, bool(spec.get("pinned", False)))
            conditions, notices = fold_events(conditions, events, generation=generation)
            conditions = observe_voice(
                conditions,
                voice,
                voice_id=voice_id,
                spec_provider=spec.get("provider"),
                now=now,
                generation=generation,
            )
            conditions = mark_overdue(
                conditions,
                self._overdue(voice, _since(since, voice), now),
                now=now,
                generation=generation,
            )
            conditions = _clear(conditions, now=now, generation=generation)
            written = status_fields(voice, lease_holder=lease_holder)
            written["conditions"] = conditions
            if generation is not None:
                written["observedGeneration"] = generation
            patch.status.update(written)
            newest = events[-1].event_id if events else (after if after is not None else 0)
            patch.meta.annotations[LAST_EVENT_ANNOTATION] = str(newest)
            ledger.event_id, ledger.conditions = newest, conditions
            ledger.voice, ledger.seen, ledger.written = voice, seen, written
            # History from before the first look is folded into the conditions but not
            # replayed as events: a new VoiceSlot for an old voice would flood the namespace.
            if after is not None:
                for notice in notices:
                    kopf.event(body, type=notice.type, reason=notice.reason, message=notice.message)
            ledger.down = False
            if was_down:
                kopf.event(
                    body,
                    type="Normal",
                    reason="AllocatorReachable",
                    message="the allocator answers again",
                )
        rt.metrics.reconciles.labels("ok" if voice is not None else "voice_not_found").inc()
        return voice

    def _ignore(
        self,
        body: kopf.Body,
        voice: VoiceSnapshot,
        stand: Standing,
        me: Claim,
        conditions: list[dict[str, Any]],
        generation: int | None,
        now: datetime,
        ledger: _Ledger,
    ) -> dict[str, Any]:
        """Say why the VoiceSlot is ignored (the status to write, and an event when that
        is news); leave the voice and its state alone."""
        if stand.blocker == REFUSED:
            reason = "OwnerNotPermitted"
            message = self.rt.policy.explain(me.namespace, voice.owner)
        else:
            owner = stand.owner.ref if stand.owner else "another VoiceSlot"
            reason = "DuplicateVoiceSlot"
            message = (
                f"{owner} already stands for voice {voice.voice_id}; this VoiceSlot is "
                f"ignored (no pin, unpin or reclaim) while it does"
            )
        blocker = str(stand.blocker)
        news = (
            ledger.ignored != blocker
            and (get_condition(conditions, blocker) or {}).get("status") != "True"
        )
        result = default_conditions(conditions, now=now, generation=generation)
        result = set_condition(
            result, blocker, "True", reason, message, now=now, generation=generation
        )
        other = CONFLICT if blocker == REFUSED else REFUSED
        if (get_condition(result, other) or {}).get("status") == "True":
            result = set_condition(
                result, other, "False", _CLEARED[other], "", now=now, generation=generation
            )
        result = set_condition(
            result, READY, "False", blocker, message, now=now, generation=generation
        )
        # Nothing of the voice is mirrored: a refused namespace must not learn about it.
        fields = status_fields(None, lease_holder=None)
        fields.update(provider=None, voiceId=None, owner=None, lastUsedAt=None)
        self.rt.metrics.refusals.labels(blocker.lower()).inc()
        if news:
            kopf.event(body, type="Warning", reason=reason, message=message)
            log.warning("VoiceSlot ignored", voiceslot=me.ref, reason=reason, voice=voice.voice_id)
        return {**fields, "conditions": result, "observedGeneration": generation}

    def unreachable(
        self,
        *,
        body: kopf.Body,
        meta: Mapping[str, Any],
        status: Mapping[str, Any],
        patch: kopf.Patch,
        error: Exception,
    ) -> None:
        """Ready=Unknown (phase Unknown) after a failed look; one event per outage."""
        self.rt.allocator_reachable(False)
        generation = meta.get("generation")
        ledger = self._ledger(_key(meta))
        ledger.seen = None  # the next look is a full one
        news = not _was_down(ledger, status)
        ledger.down = True
        conditions = mark_unreachable(
            status.get("conditions") or ledger.conditions,
            str(error),
            now=datetime.now(UTC),
            generation=generation,
        )
        patch.status.update({"conditions": conditions, "phase": UNKNOWN_PHASE})
        if news:
            kopf.event(body, type="Warning", reason="AllocatorUnreachable", message=str(error))

    def _overdue(
        self, voice: VoiceSnapshot | None, since: datetime | None, now: datetime
    ) -> float | None:
        return overdue_s(voice, state_since=since, now=now, after_s=self.rt.config.stuck_after_s)

    async def set_pinned(self, voice_id: str, pinned: bool) -> VoiceSnapshot:
        voice = await self.rt.admin.set_pinned(voice_id, pinned)
        self.rt.metrics.pin_changes.inc()
        log.info("voice pin applied", voice=voice_id, pinned=pinned)
        return voice


_CLEARED = {REFUSED: "Permitted", CONFLICT: "NoConflict"}


def _clear(
    conditions: list[dict[str, Any]], *, now: datetime, generation: int | None
) -> list[dict[str, Any]]:
    """Refused/Conflict back to False once the VoiceSlot acts for its voice."""
    for type_, reason in _CLEARED.items():
        if (get_condition(conditions, type_) or {}).get("status") == "True":
            conditions = set_condition(
                conditions, type_, "False", reason, "", now=now, generation=generation
            )
    return conditions


def _since(listed: datetime | None, voice: VoiceSnapshot | None) -> datetime | None:
    """When the voice entered its state: as ListSlots reported it, else (not listed)
    the allocator's last update of the voice."""
    return listed or (voice.updated_at if voice else None)


def _was_down(ledger: _Ledger, status: Mapping[str, Any]) -> bool:
    if ledger.down is not None:
        return ledger.down
    return was_unreachable(status.get("conditions") or [])


def _key(meta: Mapping[str, Any]) -> str:
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
