"""The project's own wire fuzzer: hostile requests to every RPC a server offers, over a
real socket, built from the descriptors the server itself publishes by reflection.

What it sends, per request (all drawn from one seeded ``random.Random``, so a seed and a
request number replay a case exactly):

- a message built field by field from its descriptor with hostile values: empty, huge
  (up to 1 MiB), path traversal, SQL and format strings, look-alike and invisible unicode,
  combining-mark stacks, text that NFC expands, ids of the right shape that name nothing,
  numbers at their type's edges, enum values that do not exist, many repeated entries;
- or that message's bytes mutated: invalid UTF-8 in a string field, a field with the wrong
  wire type, deeply nested groups, truncation, random bytes;
- streams of such messages for client-streaming calls;
- under every credential case: none, unknown, malformed, oversized, a user's, an admin's.

What it asserts of every answer (``Finding`` otherwise): the status is never INTERNAL or
UNKNOWN (the project's rule: INTERNAL means a bug); it comes within the deadline; an error
is at most ``MAX_ERROR_BYTES`` (message plus trailers) and a reply at most the message
limit; and the server still answers its health check afterwards.

Used by ``tests/fuzz`` (a bounded budget in CI) and ``bench/wire_fuzz.py`` (the long mode,
writing a JSON summary). Hypothesis is not a dependency of the project; this generator is
its own, deterministic per seed.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

MAX_ERROR_BYTES = 64 * 1024
"""The most an error answer (status message plus trailing metadata) may weigh."""
MAX_REPLY_BYTES = 16 * 1024 * 1024
"""The most a reply message may weigh: the server's message limit."""
STREAM_READ_LIMIT = 4
"""Replies read from a server stream before the call is cancelled (watches never end)."""
STREAM_IDLE_S = 0.5
"""How long a server stream may go quiet after its first reply before it is cancelled."""
BAD_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

# --- discovery -------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    input: Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


async def _reflect(
    stub: reflection_pb2_grpc.ServerReflectionStub, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    call = stub.ServerReflectionInfo(iter([request]), timeout=10)
    async for response in call:
        return response
    raise RuntimeError("reflection gave no answer")


async def discover(channel: grpc.aio.Channel) -> list[Method]:
    """Every method of every service the server lists through reflection, with message
    classes built from the descriptors it sends (not from our generated code)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    listed = await _reflect(stub, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = [s.name for s in listed.list_services_response.service]
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for name in names:
        answer = await _reflect(
            stub, reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)
        )
        for raw in answer.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
            files.setdefault(proto.name, proto)
    pool = _pool_of(files)
    methods = []
    for name in names:
        service = pool.FindServiceByName(name)
        for m in service.methods:
            methods.append(
                Method(name, m.name, m.input_type, m.client_streaming, m.server_streaming)
            )
    return methods


def _pool_of(
    files: dict[str, descriptor_pb2.FileDescriptorProto],
) -> descriptor_pool.DescriptorPool:
    """A pool holding ``files``, each added after the files it imports."""
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    pending = dict(files)
    while pending:
        ready = [n for n, f in pending.items() if all(d in added for d in f.dependency)]
        if not ready:
            raise RuntimeError(f"reflection left imports unresolved: {sorted(pending)}")
        for name in ready:
            pool.Add(pending.pop(name))
            added.add(name)
    return pool


# --- hostile values ----------------------------------------------------------------------

_MIB = 1024 * 1024
_ID_PREFIXES = ("v", "ls", "job", "it")
_HOSTILE_STRINGS = (
    "",
    " ",
    "\x00",
    "\t\n\r",
    "../../etc/passwd",
    "..\\..\\windows\\system32",
    "/dev/zero",
    "'; DROP TABLE voices; --",
    '" OR 1=1 --',
    "%s%s%s%n",
    "{0}{1}{__class__}",
    "${jndi:ldap://x/a}",
    "<script>alert(1)</script>",
    "NaN",
    "-1",
    "1e309",
    "\u202egnp.exe",  # right-to-left override
    "\ufeff\u200b\u2060",  # BOM and zero-width characters
    "\U0010ffff\U000e0001",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
    "Ａｄｍｉｎ",  # full-width look-alike
    "аdmin",  # Cyrillic а
    "en",
    "pt-BR",
    "local",
    "admin",
    "alice",
)


def _valid_looking_id(rng: random.Random) -> str:
    return f"{rng.choice(_ID_PREFIXES)}_{rng.getrandbits(128):032x}"


def hostile_string(rng: random.Random, known: tuple[str, ...] = ()) -> str:
    """One hostile string: a fixed nasty value, an id of the right shape, something
    huge, a unicode bomb, or (when given) a value the server knows."""
    kind = rng.randrange(12)
    if kind < 3:
        return rng.choice(_HOSTILE_STRINGS)
    if kind == 3:
        return _valid_looking_id(rng)
    if kind == 4 and known:
        return rng.choice(known)
    if kind == 5:
        return rng.choice("ax\u00e9\u6211") * rng.choice((129, 201, 4096, 65_536, _MIB))
    if kind == 6:  # a letter carrying thousands of combining marks
        return "a" + "\u0301" * rng.choice((17, 1000, 4000, 20_000))
    if kind == 7:  # characters that NFC turns into two or three
        return rng.choice("\u0958\ufb2c\u1f82") * rng.choice((10, 2000, 30_000))
    if kind == 8:  # sentences with nothing to say
        return "a" + rng.choice((" .", " !", " \u2014", "\u3002")) * rng.choice((10, 2500))
    if kind == 9:
        return "".join(_random_char(rng) for _ in range(rng.randrange(1, 300)))
    if kind == 10:
        return ("Hello there. " * rng.randrange(1, 500))[: rng.choice((10, 240, 5000, 5001))]
    return "".join(chr(rng.randrange(0, 0x80)) for _ in range(rng.randrange(0, 64)))


def _random_char(rng: random.Random) -> str:
    """Any code point a protobuf string may hold (lone surrogates are not UTF-8: the
    invalid-UTF-8 mutation covers those bytes on the wire)."""
    code = rng.randrange(0x20, 0x2FFFF - 0x800)
    return chr(code + 0x800 if code >= 0xD800 else code)


def _nan_wav(rng: random.Random) -> bytes:
    """A one-second IEEE-float WAV whose samples are NaN or infinite."""
    rate, frames = 16000, 16000
    value = rng.choice((math.nan, math.inf, -math.inf))
    data = struct.pack("<f", value) * frames
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", len(data)) + data
    )  # fmt: skip


def hostile_bytes(rng: random.Random, samples: tuple[bytes, ...] = ()) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return b""
    if kind == 1:
        return rng.randbytes(rng.choice((1, 44, 1000)))
    if kind == 2:
        return _nan_wav(rng)
    if kind == 3:  # a RIFF header claiming 0 Hz, or a huge data chunk
        return b"RIFF\xff\xff\xff\xffWAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00" + b"\x00" * 20
    if kind == 4 and samples:
        return rng.choice(samples)
    if kind == 5:
        return b"\x00" * rng.choice((1024, _MIB, _MIB + 1))
    return rng.randbytes(rng.randrange(0, 64))


_INT_EDGES = {
    FieldDescriptor.TYPE_INT32: (0, 1, -1, 9, 10, 500, 501, 2**31 - 1, -(2**31)),
    FieldDescriptor.TYPE_SINT32: (0, -1, 2**31 - 1, -(2**31)),
    FieldDescriptor.TYPE_SFIXED32: (0, -1, 2**31 - 1, -(2**31)),
    FieldDescriptor.TYPE_INT64: (0, -1, 2**63 - 1, -(2**63), 315_576_000_000),
    FieldDescriptor.TYPE_SINT64: (0, -1, 2**63 - 1, -(2**63)),
    FieldDescriptor.TYPE_SFIXED64: (0, -1, 2**63 - 1, -(2**63)),
    FieldDescriptor.TYPE_UINT32: (0, 1, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 1, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 1, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 1, 2**64 - 1),
}
_LENGTH_DELIMITED = frozenset(
    {FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_MESSAGE}
)
_FLOATS = (0.0, -0.0, 1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324)


@dataclass
class Generator:
    """Hostile messages for a descriptor, from ``rng``; ``known`` strings (a real voice id,
    say) and ``samples`` (a real voice sample) let some requests reach past validation."""

    rng: random.Random
    known: tuple[str, ...] = ()
    samples: tuple[bytes, ...] = ()
    max_depth: int = 3

    def message(self, desc: Descriptor, depth: int = 0) -> Message:
        msg = message_factory.GetMessageClass(desc)()
        oneofs_done: set[str] = set()
        for f in desc.fields:
            if f.containing_oneof is not None and not f.containing_oneof.name.startswith("_"):
                if f.containing_oneof.name in oneofs_done or self.rng.random() < 0.5:
                    continue
                oneofs_done.add(f.containing_oneof.name)
            elif self.rng.random() < 0.25:
                continue  # left unset
            self._fill(msg, f, depth)
        return msg

    def _fill(self, msg: Message, f: FieldDescriptor, depth: int) -> None:
        if f.is_repeated:
            if f.message_type is not None and f.message_type.GetOptions().map_entry:
                return  # none of our requests has a map; skip rather than guess
            count = self.rng.choice((0, 1, 2, 3, 17, 1000))
            if f.message_type is not None:
                if depth >= self.max_depth:
                    return
                for _ in range(min(count, 50)):  # nested lists stay small: request size
                    getattr(msg, f.name).add().CopyFrom(self.message(f.message_type, depth + 1))
            else:
                value = self._scalar(f)  # one value repeated: cheap to build, still hostile
                if count > 3 and isinstance(value, (str, bytes)):
                    value = value[:64]  # many entries or a huge one, not both
                getattr(msg, f.name).extend([value] * count)
            return
        if f.message_type is not None:
            if depth < self.max_depth:
                getattr(msg, f.name).CopyFrom(self.message(f.message_type, depth + 1))
            return
        setattr(msg, f.name, self._scalar(f))

    def _scalar(self, f: FieldDescriptor) -> Any:
        rng = self.rng
        if f.type == FieldDescriptor.TYPE_STRING:
            # An id field often names what exists, so the request reaches past lookup.
            if f.name.endswith("_id") and self.known and rng.random() < 0.4:
                return rng.choice(self.known)
            return hostile_string(rng, self.known)
        if f.type == FieldDescriptor.TYPE_BYTES:
            if self.samples and rng.random() < 0.3:
                return rng.choice(self.samples)
            return hostile_bytes(rng, self.samples)
        if f.type == FieldDescriptor.TYPE_BOOL:
            return rng.random() < 0.5
        if f.type == FieldDescriptor.TYPE_ENUM:
            values = [v.number for v in f.enum_type.values]
            return rng.choice((*values, -1, 99, 2**31 - 1))
        if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return rng.choice(_FLOATS)
        return rng.choice(_INT_EDGES.get(f.type, (0, 1, -1)))

    def wire(self, desc: Descriptor) -> bytes:
        """One request's bytes: a hostile message, often mutated on the wire."""
        data = self.message(desc).SerializeToString()
        mutation = self.rng.randrange(20)  # a third of requests are mutated on the wire
        strings = [f for f in desc.fields if f.type == FieldDescriptor.TYPE_STRING]
        if mutation == 0 and strings:  # invalid UTF-8 where a string must be
            f = self.rng.choice(strings)
            return data + _field(
                f.number, 2, self.rng.choice((b"\xff\xfe", b"\xc0\x80", b"a\xed\xa0\x80"))
            )
        if mutation == 1 and desc.fields:  # a known field with the wrong wire type
            f = self.rng.choice(desc.fields)
            wire_type = 0 if f.type in _LENGTH_DELIMITED else 2
            payload = _varint(2**64 - 1) if wire_type == 0 else _length_delimited(b"\x00" * 8)
            return data + _varint(f.number << 3 | wire_type) + payload
        if mutation == 2:  # groups nested far past any parser's recursion limit
            depth = self.rng.choice((64, 101, 5000))
            return data + _varint(99 << 3 | 3) * depth + _varint(99 << 3 | 4) * depth
        if mutation == 3 and data:  # cut short
            return data[: self.rng.randrange(len(data))]
        if mutation == 4:
            return self.rng.randbytes(self.rng.randrange(1, 200))
        if mutation == 5:  # an unknown field of a megabyte
            return data + _field(1999, 2, b"z" * _MIB)
        return data

    def stream(self, desc: Descriptor) -> list[bytes]:
        """The messages of one client stream: none, a few, or many small ones."""
        count = self.rng.choice((0, 1, 2, 3, 5, 200))
        if count == 200:  # many tiny messages: framing cost, not payload
            return [self.message(desc).SerializeToString()[:16] for _ in range(count)]
        return [self.wire(desc) for _ in range(count)]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(payload: bytes) -> bytes:
    return _varint(len(payload)) + payload


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + _length_delimited(payload)


# --- credentials ----------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    admin: str
    user: str


CREDENTIAL_CASES = ("admin", "user", "none", "unknown", "malformed", "oversized", "x-api-key")
# Most requests carry a valid key, so they get past authentication to the handlers.
CREDENTIAL_WEIGHTS = (30, 30, 8, 8, 8, 8, 8)


def metadata_for(case: str, creds: Credentials, rng: random.Random) -> tuple[tuple[str, str], ...]:
    """Call metadata for a credential case, sometimes with a hostile request id."""
    auth: tuple[tuple[str, str], ...] = {
        "admin": (("authorization", f"Bearer {creds.admin}"),),
        "user": (("authorization", f"Bearer {creds.user}"),),
        "none": (),
        "unknown": (("authorization", "Bearer not-a-key"),),
        "malformed": (
            (
                "authorization",
                rng.choice(("Bearer", "Bearer ", "Basic YTpi", "bearer  x", "Bearer\x20")),
            ),
        ),
        "oversized": (("authorization", "Bearer " + "k" * 6000),),
        "x-api-key": (("x-api-key", rng.choice((creds.user, creds.admin, "", "x" * 300))),),
    }[case]
    if rng.random() < 0.1:
        auth += (("x-request-id", rng.choice(("", "x" * 129, "a b ", "../id", "%00"))),)
    return auth


# --- calls and findings -------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A broken rule: what, where, and the (seed, index) that replays it."""

    kind: str
    """"internal", "deadline", "large_error", "large_reply" or "unhealthy"."""
    method: str
    code: str
    detail: str
    seed: int
    index: int


@dataclass
class Summary:
    seed: int
    requests: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    methods: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    largest_error_bytes: int = 0
    slowest_s: float = 0.0
    healthy_after: bool = False

    def as_json(self) -> dict[str, Any]:
        kinds = Counter(f.kind for f in self.findings)
        return {
            "seed": self.seed,
            "requests": self.requests,
            "methods": dict(sorted(self.methods.items())),
            "codes": dict(sorted(self.codes.items())),
            "internal_or_unknown": kinds["internal"],
            "over_deadline": kinds["deadline"],
            "errors_over_64kib": kinds["large_error"],
            "replies_over_limit": kinds["large_reply"],
            "largest_error_bytes": self.largest_error_bytes,
            "slowest_answer_s": round(self.slowest_s, 3),
            "healthy_after": self.healthy_after,
            "findings": [f.__dict__ for f in self.findings[:200]],
        }


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    error_bytes: int
    reply_bytes: int
    seconds: float
    local: bool = False
    """The client library made this status, not the server (``_client_write_race``)."""


def _client_write_race(exc: grpc.aio.AioRpcError) -> bool:
    """Whether grpc's asyncio client made this status itself: a client stream still
    writing when the server has already answered (a malformed first message, say) fails
    its write, and the client reports that as INTERNAL "Internal error from Core" in place
    of the server's status. The server's own answer never reaches the caller, so it is
    not judged; the summary counts these apart."""
    return (
        exc.code() == grpc.StatusCode.INTERNAL
        and 'Failed "execute_batch"' in (exc.debug_error_string() or "")
        and "SendMessageOperation" in (exc.debug_error_string() or "")
    )


def _identity(data: bytes) -> bytes:
    return data


async def call(
    channel: grpc.aio.Channel,
    method: Method,
    payloads: list[bytes],
    metadata: tuple[tuple[str, str], ...],
    *,
    deadline_s: float,
) -> Outcome:
    """Send ``payloads`` (one, or a client stream) to ``method`` as raw bytes and
    measure the answer. Server streams are read for a few replies, then cancelled."""
    started = time.monotonic()
    kwargs: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}
    reply_bytes = 0
    rpc: Any
    try:
        if method.client_streaming:

            async def requests() -> AsyncIterator[bytes]:
                for p in payloads:
                    yield p

            request: Any = requests()
        else:
            request = payloads[0]
        if method.client_streaming and method.server_streaming:
            rpc = channel.stream_stream(method.path, **kwargs)(
                request, metadata=metadata, timeout=deadline_s
            )
        elif method.client_streaming:
            rpc = channel.stream_unary(method.path, **kwargs)(
                request, metadata=metadata, timeout=deadline_s
            )
        elif method.server_streaming:
            rpc = channel.unary_stream(method.path, **kwargs)(
                request, metadata=metadata, timeout=deadline_s
            )
        else:
            rpc = channel.unary_unary(method.path, **kwargs)(
                request, metadata=metadata, timeout=deadline_s
            )
        if method.server_streaming:
            reply_bytes = await _read_some(rpc)
        else:
            reply_bytes = len(await rpc)
        return Outcome(grpc.StatusCode.OK, "", 0, reply_bytes, time.monotonic() - started)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.CANCELLED and reply_bytes:
            return Outcome(grpc.StatusCode.OK, "", 0, reply_bytes, time.monotonic() - started)
        if _client_write_race(exc):
            return Outcome(
                exc.code(), exc.details() or "", 0, 0, time.monotonic() - started, local=True
            )
        details = exc.details() or ""
        trailers = sum(len(k) + len(v) for k, v in exc.trailing_metadata() or ())
        return Outcome(
            exc.code(), details, len(details.encode()) + trailers, reply_bytes,
            time.monotonic() - started,
        )  # fmt: skip


async def _read_some(rpc: Any) -> int:
    """The largest of a server stream's first few replies, in bytes. The first must come
    within the call's deadline; after it, a stream that goes quiet for a moment (a watch
    waiting for changes) is cancelled, which counts as answered."""
    largest = 0
    replies = rpc.__aiter__()
    for read in range(STREAM_READ_LIMIT):
        try:
            async with asyncio.timeout(None if read == 0 else STREAM_IDLE_S):
                reply = await anext(replies)
        except (StopAsyncIteration, TimeoutError):
            break
        largest = max(largest, len(reply))
    rpc.cancel()
    return largest


def _refused_as_too_large(outcome: Outcome) -> bool:
    """Whether the client library refused the server's answer for the size of its
    status and trailers (a default client: over 8 KiB sometimes, over 16 KiB always)."""
    return "metadata size exceeds" in outcome.details


def judge(outcome: Outcome, *, deadline_s: float) -> str | None:
    """The rule ``outcome`` breaks, or None."""
    if outcome.local:
        return None
    if outcome.code in BAD_CODES:
        return "internal"
    if outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED or outcome.seconds > deadline_s + 1:
        return "deadline"
    if outcome.error_bytes > MAX_ERROR_BYTES or _refused_as_too_large(outcome):
        return "large_error"
    if outcome.reply_bytes > MAX_REPLY_BYTES:
        return "large_reply"
    return None


async def healthy(channel: grpc.aio.Channel, *, timeout: float = 10.0) -> bool:
    try:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout
        )
    except grpc.aio.AioRpcError:
        return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def build_request(
    methods: list[Method],
    creds: Credentials,
    *,
    seed: int,
    index: int,
    known: tuple[str, ...] = (),
    samples: tuple[bytes, ...] = (),
) -> tuple[Method, list[bytes], tuple[tuple[str, str], ...]]:
    """Request ``index`` of a run with ``seed``: the method (round robin over
    ``methods``), the message bytes, and the call metadata. Depends on nothing else, so a
    finding's (seed, index) replays it."""
    method = methods[index % len(methods)]
    rng = random.Random(f"{seed}:{index}")
    return method, *request_for(method, creds, rng, known=known, samples=samples)


def request_for(
    method: Method,
    creds: Credentials,
    rng: random.Random,
    *,
    known: tuple[str, ...] = (),
    samples: tuple[bytes, ...] = (),
) -> tuple[list[bytes], tuple[tuple[str, str], ...]]:
    """One hostile request to ``method`` drawn from ``rng``: the message bytes (one, or a
    client stream) and the call metadata. ``rng`` may be hypothesis's, which then shrinks
    a failing request to a small one."""
    gen = Generator(rng, known=known, samples=samples)
    payloads = gen.stream(method.input) if method.client_streaming else [gen.wire(method.input)]
    case = rng.choices(CREDENTIAL_CASES, CREDENTIAL_WEIGHTS)[0]
    return payloads, metadata_for(case, creds, rng)


async def fuzz(
    channel: grpc.aio.Channel,
    methods: list[Method],
    creds: Credentials,
    *,
    requests: int,
    seed: int,
    deadline_s: float = 10.0,
    concurrency: int = 8,
    known: tuple[str, ...] = (),
    samples: tuple[bytes, ...] = (),
    skip: Callable[[Method], bool] = lambda m: False,
    progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Send ``requests`` hostile requests spread over ``methods`` (round robin, so every
    method gets its share), ``concurrency`` at a time; check each answer and the server's
    health at the end. Request i is built from ``Random(f"{seed}:{i}")`` alone."""
    targets = [m for m in methods if not skip(m)]
    summary = Summary(seed=seed)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            method, payloads, md = build_request(
                targets, creds, seed=seed, index=i, known=known, samples=samples
            )
            outcome = await call(channel, method, payloads, md, deadline_s=deadline_s)
            summary.requests += 1
            summary.codes["CLIENT_WRITE_AFTER_END" if outcome.local else outcome.code.name] += 1
            summary.methods[method.path] += 1
            summary.largest_error_bytes = max(summary.largest_error_bytes, outcome.error_bytes)
            summary.slowest_s = max(summary.slowest_s, outcome.seconds)
            if kind := judge(outcome, deadline_s=deadline_s):
                summary.findings.append(
                    Finding(kind, method.path, outcome.code.name, outcome.details[:300], seed, i)
                )
            if progress is not None and summary.requests % 500 == 0:
                progress(summary)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    summary.healthy_after = await healthy(channel)
    if not summary.healthy_after:
        summary.findings.append(Finding("unhealthy", "", "", "health check failed", seed, -1))
    return summary
