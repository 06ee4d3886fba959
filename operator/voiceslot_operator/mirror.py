"""Mirroring: a VoiceSlot for every slot the allocator lists that none stands for yet.

Pure pieces only (names, labels, the object to create); :mod:`.loops` lists and creates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from voiceslot_operator.client import SlotView
from voiceslot_operator.kube import API_VERSION, KIND

MIRROR_LABEL = "voiceslot.io/mirrored"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "voiceslot-operator"


def mirror_name(voice_id: str) -> str:
    """A VoiceSlot name (DNS subdomain) for a voice id: ``v_0af3…`` -> ``v-0af3…``."""
    name = re.sub(r"[^a-z0-9.-]+", "-", voice_id.lower()).strip("-.")
    return name[:253] or "voice"


def is_mirrored(meta: Mapping[str, Any]) -> bool:
    return (meta.get("labels") or {}).get(MIRROR_LABEL) == "true"


def mirrored_voiceslot(slot: SlotView, *, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": mirror_name(slot.voice_id),
            "namespace": namespace,
            "labels": {MIRROR_LABEL: "true", MANAGED_BY_LABEL: MANAGED_BY},
        },
        # The allocator's pin state is taken over as the intent, so mirroring never flips it.
        "spec": {"voiceId": slot.voice_id, "pinned": slot.pinned, "provider": slot.provider},
    }
