"""The gRPC adapter of the synthesizer: protobuf in, use case call, protobuf out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from synth_svc.domain.formats import OutputFormat, requested_format
from synth_svc.service import SpeechRequest, Synthesizer
from voiceslot.rpc.convert import duration
from voiceslot.v1 import common_pb2
from voiceslot.v1 import synthesizer_pb2 as pb
from voiceslot.v1 import synthesizer_pb2_grpc as pb_grpc

# Without a client deadline, a call waits at most this long for a slot.
DEFAULT_WAIT_S = 30.0

_ENCODING_FROM_PB = {
    common_pb2.AUDIO_ENCODING_WAV: "wav",
    common_pb2.AUDIO_ENCODING_PCM16: "pcm16",
    common_pb2.AUDIO_ENCODING_MP3: "mp3",
    common_pb2.AUDIO_ENCODING_OPUS: "opus",
}
_ENCODING_TO_PB = {v: k for k, v in _ENCODING_FROM_PB.items()}


def format_from_pb(fmt: common_pb2.AudioFormat, *, default_encoding: str) -> OutputFormat:
    encoding = _ENCODING_FROM_PB.get(fmt.encoding) if fmt.encoding else None
    if fmt.encoding and encoding is None:
        encoding = f"unknown({fmt.encoding})"
    return requested_format(encoding, fmt.sample_rate_hz, default_encoding=default_encoding)


def format_pb(fmt: OutputFormat) -> common_pb2.AudioFormat:
    return common_pb2.AudioFormat(
        encoding=_ENCODING_TO_PB[fmt.encoding], sample_rate_hz=fmt.sample_rate
    )


def deadline_of(context: grpc.aio.ServicerContext) -> float:
    remaining = context.time_remaining()
    return time.monotonic() + (DEFAULT_WAIT_S if remaining is None else remaining)


class SynthesizerServicer(pb_grpc.SynthesizerServiceServicer):
    def __init__(self, synthesizer: Synthesizer) -> None:
        self.synthesizer = synthesizer

    def _speech(self, request: pb.SynthesizeRequest | pb.SynthesizeStreamRequest) -> SpeechRequest:
        fmt = format_from_pb(
            request.format, default_encoding=self.synthesizer.config.default_encoding
        )
        return SpeechRequest(
            voice_id=request.voice_id,
            text=request.text,
            format=fmt,
            language=request.language,
            seed=request.seed or None,
        )

    async def Synthesize(
        self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SynthesizeResponse:
        audio, fmt, seconds = await self.synthesizer.synthesize(
            self._speech(request), deadline=deadline_of(context)
        )
        return pb.SynthesizeResponse(
            audio=audio, format=format_pb(fmt), audio_duration=duration(seconds)
        )

    async def SynthesizeStream(
        self, request: pb.SynthesizeStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.SynthesizeStreamResponse]:
        async for chunk in self.synthesizer.stream(
            self._speech(request), deadline=deadline_of(context)
        ):
            message = pb.SynthesizeStreamResponse(
                audio_chunk=chunk.data, sequence=chunk.sequence, sentence_index=chunk.sentence_index
            )
            if chunk.sequence == 0:
                message.format.CopyFrom(format_pb(chunk.format))
            yield message
