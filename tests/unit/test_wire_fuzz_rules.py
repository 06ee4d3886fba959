"""The wire fuzzer's own rules: requests replay from (seed, index), and answers are
judged as issue 15 asks."""

from __future__ import annotations

import grpc
import pytest

from voiceslot.testing import wire_fuzz
from voiceslot.testing.wire_fuzz import Credentials, Method, Outcome, judge
from voiceslot.v1 import allocator_pb2, synthesizer_pb2

METHODS = [
    Method(
        "voiceslot.v1.AllocatorService",
        "RegisterVoice",
        allocator_pb2.RegisterVoiceRequest.DESCRIPTOR,
        client_streaming=True,
        server_streaming=False,
    ),
    Method(
        "voiceslot.v1.SynthesizerService",
        "Synthesize",
        synthesizer_pb2.SynthesizeRequest.DESCRIPTOR,
        client_streaming=False,
        server_streaming=False,
    ),
]
CREDS = Credentials(admin="a", user="u")


def test_a_request_replays_from_its_seed_and_index() -> None:
    for index in range(40):
        first = wire_fuzz.build_request(METHODS, CREDS, seed=3, index=index, known=("v_x",))
        again = wire_fuzz.build_request(METHODS, CREDS, seed=3, index=index, known=("v_x",))
        assert first == again
    assert wire_fuzz.build_request(METHODS, CREDS, seed=3, index=1) != wire_fuzz.build_request(
        METHODS, CREDS, seed=4, index=1
    )


def test_requests_go_round_robin_over_methods() -> None:
    paths = [wire_fuzz.build_request(METHODS, CREDS, seed=1, index=i)[0].path for i in range(4)]
    assert paths == [METHODS[0].path, METHODS[1].path] * 2


def outcome(code: grpc.StatusCode, **kwargs: object) -> Outcome:
    values: dict = {"details": "", "error_bytes": 10, "reply_bytes": 0, "seconds": 0.1}
    values.update(kwargs)
    return Outcome(code, **values)


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        (outcome(grpc.StatusCode.INVALID_ARGUMENT), None),
        (outcome(grpc.StatusCode.OK, reply_bytes=1000), None),
        (outcome(grpc.StatusCode.INTERNAL), "internal"),
        (outcome(grpc.StatusCode.UNKNOWN), "internal"),
        (outcome(grpc.StatusCode.INTERNAL, local=True), None),
        (outcome(grpc.StatusCode.DEADLINE_EXCEEDED), "deadline"),
        (outcome(grpc.StatusCode.NOT_FOUND, seconds=30.0), "deadline"),
        (outcome(grpc.StatusCode.INVALID_ARGUMENT, error_bytes=65 * 1024), "large_error"),
        (
            outcome(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                details="received metadata size exceeds hard limit (1048700 vs. 16384)",
            ),
            "large_error",
        ),
        (outcome(grpc.StatusCode.OK, reply_bytes=17 * 1024 * 1024), "large_reply"),
    ],
)
def test_judge(answer: Outcome, verdict: str | None) -> None:
    assert judge(answer, deadline_s=10.0) == verdict
