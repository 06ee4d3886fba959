"""Per-request speech options from their protobuf form, for every RPC that takes them
(``Synthesize``, ``SynthesizeStream``, ``SynthesizeLive``'s ``LiveStart``).

The wire's "unset" becomes ``None`` (keep the engine's default): a speed of 0, an empty
emotion, and the ``optional`` ElevenLabs fields that are absent. Values are carried as
sent, never clamped: whether an engine takes them is its adapter's ``check_options``,
which names the option in its error (``voiceslot.providers.options``).
"""

from __future__ import annotations

from voiceslot.providers.base import SpeechOptions
from voiceslot.v1 import synthesizer_pb2 as pb


def as_sent(value: float) -> float:
    """A protobuf ``float`` (32 bits) as the decimal the caller wrote: 1.2 arrives as
    1.2000000476837158, which a range check against 1.2 would refuse. Seven significant
    digits is what a float32 holds."""
    return float(f"{value:.7g}")


def speech_options_from_proto(options: pb.SpeechOptions) -> SpeechOptions:
    """The domain options a request's ``options`` field asks for."""
    eleven = options.elevenlabs
    cartesia = options.cartesia
    return SpeechOptions(
        # proto3 floats have no presence: 0 is "unset"; a negative speed stays, to be
        # refused by name.
        speed=as_sent(options.speed) if options.speed != 0 else None,
        word_timings=options.word_timings,
        stability=as_sent(eleven.stability) if eleven.HasField("stability") else None,
        similarity_boost=(
            as_sent(eleven.similarity_boost) if eleven.HasField("similarity_boost") else None
        ),
        style=as_sent(eleven.style) if eleven.HasField("style") else None,
        use_speaker_boost=(
            eleven.use_speaker_boost if eleven.HasField("use_speaker_boost") else None
        ),
        volume=as_sent(cartesia.volume) if cartesia.HasField("volume") else None,
        emotion=cartesia.emotion or None,
    )
