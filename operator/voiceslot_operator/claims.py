"""One VoiceSlot per voice: which of several VoiceSlots naming one voice owns it.

Two VoiceSlots for one voice would fight (the pin flipping with whichever refreshed
last; deleting either reclaiming the slot the other still stands for). The oldest
VoiceSlot (``creationTimestamp``, ties broken by ``namespace/name``) that its namespace
may act for owns the voice; the others get a ``Conflict`` condition and are ignored.
VoiceSlots whose namespace may not act for the voice's owner never count: otherwise a
refused VoiceSlot created first could lock the rightful one out.

A VoiceSlot being deleted yields to one that is not, so deleting the owner while a
duplicate exists hands the voice over instead of reclaiming it. A mirrored VoiceSlot
(the operator's stand-in for a slot nobody declared) yields to any declared one, and is
then deleted as redundant.

The claims come from a kopf index over every watched VoiceSlot (kopf fills it before any
handler runs, also after a restart); the functions here are pure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from voiceslot_operator.mirror import is_mirrored


@dataclass(frozen=True, order=True)
class Claim:
    """A VoiceSlot that names a voice. Orders declared before mirrored, then oldest
    first, then by namespace/name."""

    created: str
    """``metadata.creationTimestamp`` (RFC 3339 in UTC, so strings sort as times)."""
    namespace: str
    name: str
    uid: str
    deleting: bool = False
    mirrored: bool = False

    @property
    def rank(self) -> tuple[bool, str, str, str]:
        return (self.mirrored, self.created, self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


def claim_of(meta: Mapping[str, Any]) -> Claim:
    return Claim(
        created=str(meta.get("creationTimestamp") or ""),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
        mirrored=is_mirrored(meta),
    )


def owner_claim(claims: Iterable[Claim], permitted: Callable[[str], bool]) -> Claim | None:
    """The claim that owns the voice: the oldest permitted one not being deleted, else
    the oldest permitted one being deleted; None when no claim is permitted."""
    eligible = sorted((c for c in claims if permitted(c.namespace)), key=lambda c: c.rank)
    live = [c for c in eligible if not c.deleting]
    return (live or eligible or [None])[0]


def same_object(a: Claim | None, b: Claim) -> bool:
    # The uid identifies the object; namespace/name covers objects seeded without one.
    return a is not None and (a.uid == b.uid if a.uid and b.uid else a.ref == b.ref)
