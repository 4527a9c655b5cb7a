"""Timestamps made fast are the Timestamps protobuf itself makes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.common.timestamps import timestamp

ZONES = st.sampled_from(
    [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30)), None]
)


def stock(at: datetime) -> Timestamp:
    made = Timestamp()
    made.FromDatetime(at)
    return made


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)), ZONES)
def test_every_datetime_gives_the_stamp_protobuf_gives(at: datetime, zone) -> None:
    at = at.replace(tzinfo=zone)
    assert timestamp(at) == stock(at)


def test_before_the_epoch_and_to_the_microsecond() -> None:
    for at in (
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 3, 7, 45, 1, 123_456, tzinfo=UTC),
        datetime(2026, 12, 3, 8, 45, 1, 1, tzinfo=timezone(timedelta(hours=1))),
    ):
        made = timestamp(at)
        assert made == stock(at)
        assert made.ToDatetime(tzinfo=UTC) == at
