"""The VoiceSlot operator: VoiceSlot custom resources as the Kubernetes face of the
allocator's provider slots (kopf).

- ``settings``: ``OperatorConfig`` from ``VOICESLOT_OPERATOR__*``.
- ``conditions``: pure helpers from allocator state and events to status conditions.
- ``client``: the allocator's admin RPCs as plain Python values.
- ``kube``: the VoiceSlot create/delete calls kopf has no API for (mirroring).
- ``metrics``: Prometheus counters and gauges (kopf exposes none).
- ``tenancy``, ``claims``, ``deletion``, ``backoff``: pure decisions (who may act for
  which owner, which VoiceSlot owns a voice, what a deletion does, retry delays).
- ``runtime``: what one operator's handlers and loops share.
- ``reconciler``: one VoiceSlot's status refresh (and ``spec.pinned``).
- ``finalizer``: the ``voiceslot.io/reclaim`` finalizer, carrying out deletions.
- ``loops``: operator-wide maintenance and listings; ``mirror``: mirrored VoiceSlots.
- ``handlers``: ``build_registry``, the thin kopf wiring of all of the above.
- ``cli``: ``serve_operator``/``run_operator`` and the ``voiceslot operator`` command.

Named ``voiceslot_operator``, never ``operator``: that would shadow the standard library.
"""

from voiceslot_operator.cli import operator_command, run_operator, serve_operator
from voiceslot_operator.finalizer import FINALIZER
from voiceslot_operator.handlers import build_registry
from voiceslot_operator.settings import OperatorConfig

__all__ = [
    "FINALIZER",
    "OperatorConfig",
    "build_registry",
    "operator_command",
    "run_operator",
    "serve_operator",
]
