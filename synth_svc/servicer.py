"""The gRPC adapter of the synthesizer: protobuf in, use case call, protobuf out."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc

from synth_svc.batch import BatchJobs
from synth_svc.domain.batch import ItemState, JobState
from synth_svc.domain.formats import OutputFormat, requested_format
from synth_svc.domain.live import End, Flush, LiveChunk, LiveEvent, Start, Text
from synth_svc.domain.timing import wait_budget_s
from synth_svc.live import speak_live
from synth_svc.options import speech_options_from_proto
from synth_svc.repository import Item, Job
from synth_svc.service import SpeechRequest, Synthesizer
from voiceslot import errors
from voiceslot.providers.base import WordTime
from voiceslot.rpc.convert import duration, timestamp
from voiceslot.rpc.interceptors import current_principal
from voiceslot.rpc.server import MAX_MESSAGE_BYTES
from voiceslot.v1 import common_pb2
from voiceslot.v1 import synthesizer_pb2 as pb
from voiceslot.v1 import synthesizer_pb2_grpc as pb_grpc

# Without a client deadline, a call waits at most this long for a slot.
DEFAULT_WAIT_S = 30.0
# Room in a SynthesizeResponse for what travels beside the audio (format, duration).
RESPONSE_HEADROOM_BYTES = 4096

_ENCODING_FROM_PB = {
    common_pb2.AUDIO_ENCODING_WAV: "wav",
    common_pb2.AUDIO_ENCODING_PCM16: "pcm16",
    common_pb2.AUDIO_ENCODING_MP3: "mp3",
    common_pb2.AUDIO_ENCODING_OPUS: "opus",
    common_pb2.AUDIO_ENCODING_MULAW: "mulaw",
    common_pb2.AUDIO_ENCODING_ALAW: "alaw",
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
    """When this call must have its answer ready (monotonic): a little before the caller's
    own deadline, so a voice still queued then is answered RESOURCE_EXHAUSTED with
    RetryInfo that the caller actually receives (see ``wait_budget_s``)."""
    return time.monotonic() + wait_budget_s(context.time_remaining(), default_s=DEFAULT_WAIT_S)


def word_timings_pb(words: tuple[WordTime, ...]) -> list[pb.WordTiming]:
    return [
        pb.WordTiming(word=w.word, start=duration(w.start_s), end=duration(w.end_s)) for w in words
    ]


def live_chunk_pb(chunk: LiveChunk) -> pb.SynthesizeLiveResponse:
    message = pb.SynthesizeLiveResponse(
        audio_chunk=chunk.data,
        sequence=chunk.sequence,
        span=pb.TextSpan(start=chunk.span.start, end=chunk.span.end, text=chunk.span.text),
        word_timings=word_timings_pb(chunk.words),
    )
    if chunk.sequence == 0:
        message.format.CopyFrom(format_pb(chunk.format))
    return message


_JOB_STATE_TO_PB = {s: getattr(pb, f"BATCH_JOB_STATE_{s.name}") for s in JobState}
_ITEM_STATE_TO_PB = {s: getattr(pb, f"BATCH_ITEM_STATE_{s.name}") for s in ItemState}
DOWNLOAD_CHUNK = 256 * 1024


def job_pb(job: Job) -> pb.BatchJob:
    return pb.BatchJob(
        job_id=job.id,
        owner=job.owner,
        voice_id=job.voice_id,
        state=_JOB_STATE_TO_PB[job.state],
        format=format_pb(OutputFormat(job.encoding, job.sample_rate)),
        total_items=job.counts.total,
        succeeded_items=job.counts.succeeded,
        failed_items=job.counts.failed,
        progress=job.counts.progress,
        created_at=timestamp(job.created_at),
        updated_at=timestamp(job.updated_at),
        finished_at=timestamp(job.finished_at),
    )


def item_pb(item: Item, url: str) -> pb.BatchItem:
    return pb.BatchItem(
        item_id=item.id,
        name=item.name,
        state=_ITEM_STATE_TO_PB[item.state],
        attempts=item.attempts,
        error=item.error,
        audio_duration=duration(item.audio_seconds),
        download_url=url,
    )


class SynthesizerServicer(pb_grpc.SynthesizerServiceServicer):
    def __init__(self, synthesizer: Synthesizer, batch: BatchJobs) -> None:
        self.synthesizer = synthesizer
        self.batch = batch

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
            options=speech_options_from_proto(request.options),
        )

    async def Synthesize(
        self, request: pb.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SynthesizeResponse:
        audio, fmt, seconds = await self.synthesizer.synthesize(
            self._speech(request),
            deadline=deadline_of(context),
            max_bytes=MAX_MESSAGE_BYTES - RESPONSE_HEADROOM_BYTES,
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
                audio_chunk=chunk.data,
                sequence=chunk.sequence,
                sentence_index=chunk.sentence_index,
                word_timings=word_timings_pb(chunk.words),
            )
            if chunk.sequence == 0:
                message.format.CopyFrom(format_pb(chunk.format))
            yield message

    async def SynthesizeLive(
        self,
        request_iterator: AsyncIterator[pb.SynthesizeLiveRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.SynthesizeLiveResponse]:
        # Rate limiting: the interceptor takes one token per call, like every RPC; the
        # messages within a turn are bounded by synth.live.max_fragments_per_s instead.
        async for chunk in speak_live(
            self.synthesizer, self._live_events(request_iterator), deadline=deadline_of(context)
        ):
            yield live_chunk_pb(chunk)

    async def _live_events(
        self, requests: AsyncIterator[pb.SynthesizeLiveRequest]
    ) -> AsyncIterator[LiveEvent]:
        async for message in requests:
            kind = message.WhichOneof("kind")
            if kind == "text":
                yield Text(message.text)
            elif kind == "flush":
                yield Flush()
            elif kind == "end":
                yield End()
            elif kind == "start":
                start = message.start
                yield Start(
                    voice_id=start.voice_id,
                    format=format_from_pb(
                        start.format, default_encoding=self.synthesizer.config.default_encoding
                    ),
                    language=start.language,
                    options=speech_options_from_proto(start.options),
                )
            else:
                raise errors.InvalidArgument(
                    "kind", "a message sets none of start, text, flush and end"
                )

    async def CreateBatchJob(
        self, request: pb.CreateBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateBatchJobResponse:
        fmt = format_from_pb(
            request.format, default_encoding=self.synthesizer.config.default_encoding
        )
        job = await self.batch.create(
            current_principal(),
            voice_id=request.voice_id,
            fmt=fmt,
            items=[(i.name, i.text) for i in request.items],
            idempotency_key=request.idempotency_key,
        )
        return pb.CreateBatchJobResponse(job=job_pb(job))

    async def GetBatchJob(
        self, request: pb.GetBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBatchJobResponse:
        who = current_principal()
        job = await self.batch.get(who, request.job_id)
        items = await self.batch.items(who, request.job_id) if request.include_items else []
        return pb.GetBatchJobResponse(job=job_pb(job), items=[item_pb(i, url) for i, url in items])

    async def ListBatchJobs(
        self, request: pb.ListBatchJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBatchJobsResponse:
        jobs, token = await self.batch.list(
            current_principal(), size=request.page_size, token=request.page_token
        )
        return pb.ListBatchJobsResponse(jobs=[job_pb(j) for j in jobs], next_page_token=token)

    async def WatchBatchJob(
        self, request: pb.WatchBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchBatchJobResponse]:
        async for job in self.batch.watch(current_principal(), request.job_id):
            yield pb.WatchBatchJobResponse(job=job_pb(job))

    async def CancelBatchJob(
        self, request: pb.CancelBatchJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelBatchJobResponse:
        return pb.CancelBatchJobResponse(
            job=job_pb(await self.batch.cancel(current_principal(), request.job_id))
        )

    async def DownloadBatchItemAudio(
        self, request: pb.DownloadBatchItemAudioRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadBatchItemAudioResponse]:
        async for chunk in self.batch.download(
            current_principal(), request.job_id, request.item_id
        ):
            yield pb.DownloadBatchItemAudioResponse(chunk=chunk)
