"""Every recommendation answer logged as an impression, off the answer's path.

`record` only appends the impression to a bounded queue in memory (microseconds, no I/O);
a background task sends the queue to ingestion in batches, as native `impression` events,
which ingestion publishes on the impressions topic for analytics (attribution, experiment
reports) and the learned ranker's training. A batch that could not be sent is kept and sent
again; when the queue is full (ingestion down for long), new impressions are dropped and
counted, never the answer delayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from prometheus_client import Counter

from services.common.clock import Clock
from services.gateway.compose import Recommendation
from services.gateway.settings import ImpressionSettings

log = logging.getLogger(__name__)
LOGGED = Counter(
    "recofleet_gateway_impressions_total",
    "Impressions by what became of them: sent, dropped (queue full), refused (by ingestion).",
    ["outcome"],
)
Publish = Callable[[bytes], Awaitable[Any]]


class ImpressionLog:
    def __init__(self, publish: Publish, settings: ImpressionSettings, clock: Clock) -> None:
        self._publish = publish
        self._s = settings
        self._clock = clock
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._closing = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def record(
        self, answer: Recommendation, sources: Mapping[str, Mapping[str, float]] | None = None
    ) -> None:
        """Queue the answer as an impression; the item sources retrieval gave, by item."""
        if not self._s.enabled or not answer.items or not answer.member_id:
            return
        if len(self._queue) >= self._s.max_queued:
            LOGGED.labels("dropped").inc()
            return
        self._queue.append(_impression(answer, sources or {}, self._clock))
        if len(self._queue) >= self._s.batch_size:
            self._wake.set()

    async def run(self) -> None:
        """Send what is queued, every flush interval or as soon as a batch is full."""
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._s.flush_interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> bool:
        """Send every queued impression; False when a send failed (they stay queued)."""
        while self._queue:
            batch = [
                self._queue.popleft() for _ in range(min(self._s.batch_size, len(self._queue)))
            ]
            if not await self._send(batch):
                # Back at the front, in order: sent again on the next round.
                self._queue.extendleft(reversed(batch))
                return False
        return True

    async def close(self, timeout_s: float = 5.0) -> None:
        """Send what is left (at most `timeout_s`); say how many could not be."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), timeout_s)
        if self._queue:
            log.warning("%d impressions not sent at shutdown", len(self._queue))

    async def _send(self, batch: list[dict[str, Any]]) -> bool:
        payload = msgspec.json.encode({"events": batch})
        try:
            reply = await asyncio.wait_for(self._publish(payload), self._s.publish_timeout_s)
        except Exception as exc:  # any failure to send: keep them and try again
            log.warning("impressions not sent (%s); kept, %d queued", exc, len(self._queue))
            return False
        refused = len(getattr(reply, "rejected", ()))
        if refused:
            # Built here from a valid answer, so a refusal is a bug worth seeing, not retrying.
            log.error("ingestion refused %d impressions: %s", refused, reply.rejected[0].reason)
            LOGGED.labels("refused").inc(refused)
        LOGGED.labels("sent").inc(len(batch) - refused)
        return True


def _impression(
    answer: Recommendation, sources: Mapping[str, Mapping[str, float]], clock: Clock
) -> dict[str, Any]:
    shown = [item.item_id for item in answer.items]
    return {
        "event_id": f"imp-{uuid.uuid4()}",
        "type": "impression",
        "member_id": answer.member_id,
        "recommendation_id": answer.recommendation_id,
        "timestamp": clock.now().isoformat(),
        # In the order shown: an item's position is its index + 1.
        "items": [
            {"item_id": item.item_id, **({"category": item.category} if item.category else {})}
            for item in answer.items
        ],
        "context": {
            "placement": answer.placement,
            "variant": answer.variant,
            "experiment_id": answer.experiment_id,
            "model": answer.model,
            "degraded": answer.degraded,
            "personalized": answer.personalized,
            "scores": {item.item_id: item.score for item in answer.items},
            "sources": {i: dict(sources[i]) for i in shown if i in sources},
            **_latency(answer),
        },
    }


def _latency(answer: Recommendation) -> dict[str, float]:
    """The answer's serving latency for experiment reports' latency guardrail; to 10 µs, which
    is finer than anything a guardrail compares and keeps the distinct values few."""
    if answer.latency_ms is None:
        return {}
    return {"latency_ms": round(answer.latency_ms, 2)}
