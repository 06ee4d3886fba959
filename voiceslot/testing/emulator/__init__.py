"""A loopback emulator of the ElevenLabs and Cartesia HTTP APIs, for tests and demos.

It serves the real paths, headers, bodies and error shapes of both providers (see
``providers/README.md`` and the OpenAPI files under ``tests/contracts/openapi``) from one
thread-safe ``EmulatorState``: accounts with slot limits, monthly add/edit caps, API keys
and TTS concurrency limits; and scripted faults (5xx, 429 with ``Retry-After``, latency,
hangs, responses lost after the work was done, broken streams). Every voice ever created
is remembered, so tests can assert that a clone happened exactly once.

    with ProviderEmulator() as emulator:
        provider = ElevenLabsProvider(emulator.provider_config("elevenlabs"))
        emulator.state.faults.inject(Fault(FaultKind.LOST_RESPONSE, op=Op.CLONE))
        ...
        assert emulator.state.created_labels()["vs-v1-g1"] == 1

Ground truth for invariant checks (``state.truth``, a ``TruthLedger``; also served at
``GET /_emulator/truth``): live remote copies per voiceslot voice id across generations and
per account, their high-water marks, instants over a watched capacity, and every create
and delete with a monotonic timestamp.

Layout: ``state``, ``faults`` and ``truth`` hold every decision as plain Python (unit-tested on their
own); ``elevenlabs_api`` and ``cartesia_api`` are thin Starlette routes; ``server`` runs
them with uvicorn, with ``debug_api`` under ``/_emulator``; ``audio`` renders deterministic speech-like audio in the asked format.
"""

from voiceslot.testing.emulator.faults import Decision, Fault, FaultKind, FaultScript, Op
from voiceslot.testing.emulator.server import (
    CARTESIA_PREFIX,
    ELEVENLABS_PREFIX,
    ProviderEmulator,
    create_app,
    run_forever,
)
from voiceslot.testing.emulator.state import (
    CARTESIA,
    CARTESIA_PLANS,
    DEFAULT_CARTESIA_KEY,
    DEFAULT_ELEVENLABS_KEY,
    ELEVENLABS,
    ELEVENLABS_PLANS,
    Account,
    EmulatorError,
    EmulatorState,
    RequestRecord,
    VoiceRecord,
)
from voiceslot.testing.emulator.truth import RemoteEvent, TruthLedger, parse_voiceslot_label

__all__ = [
    "CARTESIA",
    "CARTESIA_PLANS",
    "CARTESIA_PREFIX",
    "DEFAULT_CARTESIA_KEY",
    "DEFAULT_ELEVENLABS_KEY",
    "ELEVENLABS",
    "ELEVENLABS_PLANS",
    "ELEVENLABS_PREFIX",
    "Account",
    "Decision",
    "EmulatorError",
    "EmulatorState",
    "Fault",
    "FaultKind",
    "FaultScript",
    "Op",
    "ProviderEmulator",
    "RemoteEvent",
    "RequestRecord",
    "TruthLedger",
    "VoiceRecord",
    "create_app",
    "parse_voiceslot_label",
    "run_forever",
]
