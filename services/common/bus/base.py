"""The event bus: one interface, shaped like Kafka, with an embedded and a Kafka implementation.

The model is Kafka's on purpose so that the local durable log and the Kafka bus are
interchangeable: named topics split into partitions, records keyed (by member, so one
member's events stay in order on one partition), consumer groups that each see every
record, and offsets a group commits once it has processed what it polled.
Delivery is at least once: a consumer that crashes before committing sees the
uncommitted records again, so consumers must be idempotent.
"""

from __future__ import annotations

import abc
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

EVENTS_TOPIC = "recofleet.events"
CATALOG_TOPIC = "recofleet.catalog"
DEAD_LETTERS_TOPIC = "recofleet.dead-letters"
# Erasures, identity links, consent changes (services/common/members.py).
MEMBERS_TOPIC = "recofleet.members"
# What was shown to whom (impression events, the gateway's and the shop's): the analytics
# service reads them; the consumers of members' events never pay for them.
IMPRESSIONS_TOPIC = "recofleet.impressions"
# Campaign exposures (an offer shown or sent, or a control member held out), keyed by member:
# campaigns publishes them, analytics measures the campaign from them.
EXPOSURES_TOPIC = "recofleet.exposures"
# One message per member of an exported campaign audience, keyed by member, for the email,
# SMS and push senders (docs/campaigns.md has its JSON shape).
CAMPAIGN_MESSAGES_TOPIC = "recofleet.campaign-messages"


@dataclass(frozen=True, slots=True)
class Message:
    """A record to publish."""

    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Record:
    """A record as a consumer sees it: where it sits on the bus and what it holds."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    timestamp_ms: int


class BusError(RuntimeError):
    """The bus cannot do what was asked (bad topic, lost storage, group already taken)."""


def partition_for(key: str, partitions: int) -> int:
    """Stable key -> partition mapping, the same in every process and every run."""
    return zlib.crc32(key.encode("utf-8")) % partitions


class Consumer(abc.ABC):
    """A member of a consumer group reading some topics."""

    @abc.abstractmethod
    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        """Return the next records after the group's position; wait up to timeout_s for any."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Commit the position after every record returned by poll so far."""

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group; uncommitted records are delivered again to the next member."""

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus(abc.ABC):
    """Publish keyed records to topics and open consumers in groups."""

    @abc.abstractmethod
    def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics that are missing (with the configured partition count)."""

    @abc.abstractmethod
    def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Append messages durably; when this returns, they survive a crash of any process."""

    @abc.abstractmethod
    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        """Join `group` reading `topics`, starting at the group's committed offsets
        (the earliest records for a new group)."""

    @abc.abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Offset after the last record, per partition (how far a consumer must read)."""

    @abc.abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offset per partition (0 where it has committed nothing)."""

    @abc.abstractmethod
    def groups(self) -> dict[str, list[str]]:
        """Every consumer group that committed offsets, with the topics it committed on
        (what an operator watches the lag of)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and connections."""

    def healthy(self) -> bool:
        """Whether publishing can work right now (storage writable, brokers reachable)."""
        return True

    def drop_group(self, group: str) -> None:
        """Forget a group that never committed (a reader's own, closed): by default nothing
        to do, as a Kafka cluster expires groups without offsets by itself."""
        return None

    def location(self) -> str:
        """Where the records live, in words (a log directory, a cluster's brokers)."""
        return type(self).__name__

    def lag(self, group: str, topic: str) -> int:
        """Records published to `topic` that `group` has not yet committed."""
        return sum(self.partition_lag(group, topic).values())

    def partition_lag(self, group: str, topic: str) -> dict[int, int]:
        """`lag` per partition (never below 0: a commit may be read before the end)."""
        ends = self.end_offsets(topic)
        done = self.committed(group, topic)
        return {partition: max(end - done.get(partition, 0), 0) for partition, end in ends.items()}
