"""``voiceslot.rpc.convert.timestamp`` computes by hand what protobuf's ``FromDatetime``
does (for speed): the two must agree on every moment, aware or naive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from voiceslot.ids import new_id, require_id
from voiceslot.rpc.convert import timestamp

_MOMENTS = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
_ZONES = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)


@given(_MOMENTS, _ZONES)
def test_timestamp_equals_from_datetime(moment: datetime, zone: timezone | None):
    value = moment.replace(tzinfo=zone)
    expected = Timestamp()
    expected.FromDatetime(value)
    assert timestamp(value) == expected


def test_no_moment_is_no_timestamp():
    assert timestamp(None) is None


def test_new_ids_are_what_require_id_accepts():
    for prefix in ("v", "ls", "job"):
        assert require_id("id", new_id(prefix), prefix)
