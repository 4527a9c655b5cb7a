"""Datetimes as protobuf Timestamps, on the hot paths of every service, and the instants a
Timestamp can hold at all.

`Timestamp.FromDatetime` is written in Python (calendar arithmetic per call): a third of
a profile's conversion to its message, with a stamp per recent item and category. This
is the same value from one timedelta, computed in C.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import AfterValidator

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What a Timestamp holds (its last second to the nanosecond; a datetime stops at the
# microsecond, inside it).
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
OUT_OF_RANGE = (
    "must be from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z once converted to UTC "
    "(what an answer's timestamp can carry)"
)


def timestamp(at: datetime) -> Timestamp:
    """`at` as a Timestamp, exactly as `FromDatetime` gives it (a naive datetime is UTC)."""
    since = (at if at.tzinfo is not None else at.replace(tzinfo=UTC)) - EPOCH
    return Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)


def storable(at: datetime) -> datetime:
    """`at` unchanged when a Timestamp can carry it (a naive datetime is UTC), else
    ValueError. A datetime holds instants a Timestamp cannot (9999-12-31T23:59:59-14:00 is
    in the year 10000 in UTC), and `timestamp` makes a stamp of them that every reader
    refuses: so an instant a service keeps, to answer with later, is checked when it
    comes in, where the caller can be told which field is wrong."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    # Compared, not converted: `astimezone(UTC)` itself overflows past the year 9999.
    if not EARLIEST <= aware <= LATEST:
        raise ValueError(OUT_OF_RANGE)
    return at


# A model's field for such an instant: the field's error names it.
Instant = Annotated[datetime, AfterValidator(storable)]
