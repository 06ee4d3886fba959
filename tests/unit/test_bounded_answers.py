"""Answers stay small and right whatever a request carried (issue 15): the one rendering
of a caller's value in errors, the status backstop, the shared field rules, and the
health servicer's List."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from voiceslot import errors as e
from voiceslot import validation as v
from voiceslot.rpc.server import HealthServicer
from voiceslot.rpc.status import DETAIL_BYTES, MAX_VIOLATIONS, MESSAGE_BYTES, clip, to_rpc_status

MIB = 1024 * 1024


def status_of(exc: Exception) -> tuple[grpc.Status, status_pb2.Status]:
    """The status the mapping answers with, and the rich status inside its trailers."""
    status = to_rpc_status(exc)
    details = dict(status.trailing_metadata)[rpc_status.GRPC_DETAILS_METADATA_KEY]
    return status, status_pb2.Status.FromString(details)


def test_shown_quotes_briefly_in_ascii() -> None:
    assert e.shown("en") == "'en'"
    assert e.shown("\u202eevil") == "'\\u202eevil'"
    long = e.shown("x" * MIB)
    assert len(long) < 100 and f"({MIB} characters)" in long


def test_status_backstop_clips_message_and_details_in_bytes() -> None:
    # An error made without shown(): the mapping still answers small.
    status, proto = status_of(e.InvalidArgument("field" * 1000, "\U0001f600" * MIB))
    assert len(status.details.encode()) <= MESSAGE_BYTES
    bad = error_details_pb2.BadRequest()
    assert proto.details[0].Unpack(bad)
    (violation,) = bad.field_violations
    assert len(violation.field.encode()) <= DETAIL_BYTES
    assert len(violation.description.encode()) <= DETAIL_BYTES
    assert clip("abc", 10) == "abc"
    assert clip("\u00e9" * 10, 7) == "\u00e9\u00e9…"  # never half a character


def test_quota_failures_carry_a_bounded_number_of_violations() -> None:
    many = tuple(e.QuotaViolation(f"user:{i}", "x" * 5000) for i in range(1000))
    _, proto = status_of(e.QuotaExceeded("spent", violations=many))
    failure = error_details_pb2.QuotaFailure()
    assert proto.details[0].Unpack(failure)
    assert len(failure.violations) == MAX_VIOLATIONS
    assert all(len(x.description.encode()) <= DETAIL_BYTES for x in failure.violations)


def test_not_found_quotes_its_id_briefly() -> None:
    exc = e.NotFound("provider", "p" * MIB)
    assert len(exc.message) < 120
    assert to_rpc_status(exc).code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("tag", ["en", "pt-BR", "zh-Hans-CN", "sr-Latn-RS", "yue"])
def test_language_tags_accepted(tag: str) -> None:
    assert v.language_tag("language", tag, default="") == tag


@pytest.mark.parametrize(
    "tag", ["../../etc/passwd", "e", "EN", "en_US", "en\n", "en-" + "ab-" * 20 + "c1", "x" * 4096]
)
def test_language_tags_refused(tag: str) -> None:
    with pytest.raises(e.InvalidArgument) as info:
        v.language_tag("language", tag, default="")
    assert len(info.value.description) < 200


def test_rules_fill_defaults_and_name_fields() -> None:
    assert v.language_tag("metadata.language", "", default="en") == "en"
    assert v.idempotency_key("k", "") is None
    assert v.user_name("metadata.owner", "carol@example.org") == "carol@example.org"
    assert v.provider_name("provider", "local", known={"local"}) == "local"
    with pytest.raises(e.InvalidArgument) as info:
        v.provider_name("metadata.provider", "nowhere", known={"local", "eleven"})
    assert info.value.field == "metadata.provider" and "eleven, local" in info.value.description
    for bad in ("", "../x", "a b", "a" * 129):
        with pytest.raises(e.InvalidArgument):
            v.user_name("metadata.owner", bad)
    with pytest.raises(e.InvalidArgument):
        v.label("lease_holder", "line\nbreak", max_chars=200)
    with pytest.raises(e.InvalidArgument):
        v.display_name("metadata.display_name", "   ")
    assert v.display_name("metadata.display_name", "  Me  ") == "Me"


def test_unique_list_keeps_order_and_bounds_the_request() -> None:
    assert v.unique_list("tasks", [3, 1, 3, 2, 1], max_items=16) == [3, 1, 2]
    with pytest.raises(e.InvalidArgument) as info:
        v.unique_list("tasks", [1] * 17, max_items=16)
    assert info.value.field == "tasks"


async def test_health_list_follows_set_and_shutdown() -> None:
    health = HealthServicer()
    await health.set("svc", health_pb2.HealthCheckResponse.SERVING)
    listed = await health.List(health_pb2.HealthListRequest(), None)
    assert {k: r.status for k, r in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        "svc": health_pb2.HealthCheckResponse.SERVING,
    }
    await health.enter_graceful_shutdown()
    await health.set("svc", health_pb2.HealthCheckResponse.SERVING)  # ignored from now on
    listed = await health.List(health_pb2.HealthListRequest(), None)
    assert {r.status for r in listed.statuses.values()} == {
        health_pb2.HealthCheckResponse.NOT_SERVING
    }


def test_a_provider_refusing_the_input_is_the_callers_to_fix() -> None:
    from voiceslot.providers.errors import InvalidInput, Transient
    from voiceslot.rpc.status import grpc_code

    assert grpc_code(InvalidInput("language 'zz' is not supported")) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert grpc_code(Transient("503")) == grpc.StatusCode.UNAVAILABLE
