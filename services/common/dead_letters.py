"""Dead letters: records a consumer could not apply, kept with the reason for a person to act on.

`list` reads the dead-letter topic from the start and never commits, so it always shows
everything; `replay` republishes each dead letter's original record to its original topic
(same key, so it lands in order) and commits, so a dead letter is replayed once. Replaying
is safe even if the record was applied meanwhile: consumers are idempotent by event id.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

from services.common.bus import DEAD_LETTERS_TOPIC, EventBus, Message, Record

LIST_GROUP = "recofleet-dead-letters-list"
REPLAY_GROUP = "recofleet-dead-letters-replay"


def encode(record: Record, group: str, reason: str) -> Message:
    """The dead letter for a record `group` cannot apply: the reason and the record as it was."""
    body = {
        "group": group,
        "reason": reason,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key,
        "value_b64": base64.b64encode(record.value).decode("ascii"),
        "failed_at_ms": int(time.time() * 1000),
    }
    return Message(key=record.key, value=json.dumps(body).encode("utf-8"))


@dataclass(frozen=True)
class StoredDeadLetter:
    """A dead letter read back from the dead-letter topic."""

    offset: int
    partition: int
    group: str
    reason: str
    topic: str
    key: str
    value: bytes
    failed_at_ms: int

    @classmethod
    def parse(cls, partition: int, offset: int, raw: bytes) -> StoredDeadLetter:
        body = json.loads(raw)
        return cls(
            offset=offset,
            partition=partition,
            group=body["group"],
            reason=body["reason"],
            topic=body["topic"],
            key=body["key"],
            value=base64.b64decode(body["value_b64"]),
            failed_at_ms=int(body.get("failed_at_ms", 0)),
        )

    def preview(self, width: int = 120) -> str:
        text = self.value.decode("utf-8", errors="replace")
        return text if len(text) <= width else text[: width - 1] + "…"


def read(
    bus: EventBus, group: str = LIST_GROUP, commit: bool = False
) -> Iterator[StoredDeadLetter]:
    """Every dead letter after the group's position (all of them for the list group)."""
    with bus.consumer(group, [DEAD_LETTERS_TOPIC]) as consumer:
        while records := consumer.poll(500, timeout_s=0.5):
            for record in records:
                yield StoredDeadLetter.parse(record.partition, record.offset, record.value)
            if commit:
                consumer.commit()


def waiting(bus: EventBus) -> int:
    """Dead letters `replay` has not republished yet: the ones a person still has to see to."""
    return bus.lag(REPLAY_GROUP, DEAD_LETTERS_TOPIC)


def replay(bus: EventBus, dry_run: bool = False) -> list[StoredDeadLetter]:
    """Republish dead letters not replayed before to their topics; return them."""
    done: list[StoredDeadLetter] = []
    with bus.consumer(REPLAY_GROUP, [DEAD_LETTERS_TOPIC]) as consumer:
        while records := consumer.poll(500, timeout_s=0.5):
            letters = [StoredDeadLetter.parse(r.partition, r.offset, r.value) for r in records]
            if not dry_run:
                for letter in letters:
                    bus.publish(letter.topic, [Message(letter.key, letter.value)])
                consumer.commit()
            done.extend(letters)
    return done
