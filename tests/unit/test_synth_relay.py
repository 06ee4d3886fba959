"""The synthesizer relays the allocator's answers with their meaning and words intact."""

from __future__ import annotations

import grpc
from grpc.aio import Metadata

from synth_svc.allocator_client import _as_domain_error
from voiceslot import errors
from voiceslot.rpc.status import to_rpc_status


def as_received(exc: Exception) -> grpc.aio.AioRpcError:
    """``exc`` as the allocator answers it, as a client receives it."""
    status = to_rpc_status(exc)
    return grpc.aio.AioRpcError(
        status.code, Metadata(), Metadata(*status.trailing_metadata), details=status.details
    )


def test_invalid_argument_keeps_its_field_and_description_once() -> None:
    relayed = _as_domain_error(as_received(errors.InvalidArgument("lease_holder", "too long")))
    assert isinstance(relayed, errors.InvalidArgument)
    assert (relayed.field, relayed.message) == ("lease_holder", "lease_holder: too long")


def test_not_found_keeps_the_allocators_words() -> None:
    relayed = _as_domain_error(as_received(errors.NotFound("voice", "v_1")))
    assert isinstance(relayed, errors.NotFound) and relayed.message == "voice 'v_1' not found"
