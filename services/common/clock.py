"""The fleet's clock: what "now" is for recency, decay and lifecycle.

Real time by default. A fixed offset (`RECOFLEET_CLOCK_OFFSET`, e.g. `-P4750D`) moves the
fleet's "now" for looking at a historical data set as of its own dates, when it was loaded
without re-dating (`recofleet load-sample --no-redate`); events sent live are then in the
fleet's future. The loaders re-date the bundled sample instead (see services/loading.py),
which needs no offset: docs/portraits.md says why.

Every process builds its clock from the same settings, so they agree on "now".
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta


def _real_time() -> datetime:
    return datetime.now(UTC)


class Clock:
    """Real time (or `source`) plus a fixed offset, always in UTC."""

    def __init__(
        self, offset: timedelta = timedelta(0), source: Callable[[], datetime] = _real_time
    ) -> None:
        self.offset = offset
        self._source = source

    def now(self) -> datetime:
        return self._source() + self.offset

    @classmethod
    def fixed(cls, at: datetime) -> Clock:
        """A clock that always reads `at` (tests, replays)."""
        return cls(source=lambda: at)
