"""Forgetting the ids of applied events once the bus can no longer redeliver them."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Protocol

log = logging.getLogger(__name__)
# How often a store's processed event ids are pruned.
PRUNE_EVERY_S = 600.0


class KeepsProcessed(Protocol):
    def prune_processed(self, before: datetime) -> int:
        """Forget the ids of events applied before `before`; how many were forgotten."""


async def keep_processed_pruned(
    store: KeepsProcessed, retention: timedelta, every_s: float = PRUNE_EVERY_S
) -> None:
    """Forget the ids of events applied longer than `retention` ago, every `every_s`."""
    while True:
        try:
            # Wall-clock time, as the ids were stamped and as the bus's retention counts.
            before = datetime.now(UTC) - retention
            pruned = await asyncio.to_thread(store.prune_processed, before)
            if pruned:
                log.info("forgot %d processed event ids from before %s", pruned, before)
        except Exception:
            # The next round tries again; the ids are only kept a little longer.
            log.exception("pruning processed event ids failed")
        await asyncio.sleep(every_s)
