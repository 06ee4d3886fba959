"""Retention: rendered audio is deleted once it is older than the configured age.

Only objects under one prefix are ever considered, so a sweep of rendered audio can never
reach voice samples or anything else kept in the same store. Age is measured from the
object's modification time as the storage reports it, against a ``now`` the caller passes
(a fake clock in tests).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from voiceslot.storage.base import Storage, StoredObject, validate_key


def expired(obj: StoredObject, *, now: datetime, max_age: timedelta) -> bool:
    """Whether ``obj`` is older than ``max_age`` at ``now`` (exactly ``max_age`` is not)."""
    return now - obj.modified_at > max_age


async def apply_retention(
    storage: Storage, *, prefix: str, max_age: timedelta, now: datetime
) -> list[str]:
    """Delete the objects under ``prefix`` older than ``max_age``; return their keys.

    ``prefix`` names a folder ("audio" and "audio/" both mean everything below
    "audio/", never "audiobooks/…"); an empty or unsafe prefix is refused, since it would
    sweep the whole store.
    """
    if max_age <= timedelta(0):
        raise ValueError(f"max_age must be positive, not {max_age}")
    folder = prefix.strip("/")
    if not folder:
        raise ValueError("retention needs a prefix; an empty one would sweep every object")
    folder = validate_key(folder) + "/"
    # Collect first, delete after: deleting while a listing is paged can upset it.
    doomed = [
        obj.key
        async for obj in storage.list(folder)
        # Checked again here so a backend that lists too much cannot widen the sweep.
        if obj.key.startswith(folder) and expired(obj, now=now, max_age=max_age)
    ]
    for key in doomed:
        await storage.delete(key)
    return doomed
