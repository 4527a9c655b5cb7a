"""Datetimes as protobuf Timestamps, on the hot paths of every service.

`Timestamp.FromDatetime` is written in Python (calendar arithmetic per call): a third of
a profile's conversion to its message, with a stamp per recent item and category. This
is the same value from one timedelta, computed in C.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(at: datetime) -> Timestamp:
    """`at` as a Timestamp, exactly as `FromDatetime` gives it (a naive datetime is UTC)."""
    since = (at if at.tzinfo is not None else at.replace(tzinfo=UTC)) - EPOCH
    return Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)
