"""The Kafka bus: the EventBus on an Apache Kafka cluster, through kafka-python.

Mapping onto the model in base.py:

* a topic is a Kafka topic; `ensure_topics` creates the missing ones with CreateTopics
  (`partitions`, `replication_factor` capped at the number of brokers, and `retention.ms`
  from the bus's retention) and, on a broker without CreateTopics, by auto-creation through
  a metadata request (the broker's defaults then apply, retention included). Topics that
  already exist keep their configuration: kafka-python 2.3 has only the AlterConfigs
  request, which replaces every dynamic setting of a topic, so the operator sets
  `retention.ms` on existing topics (kafka-configs.sh --alter --add-config);
* `publish` keys every record by its member key (utf-8) and leaves placement to Kafka's
  default partitioner (murmur2 of the key over all partitions, like the Java client), so
  one key always lands on one partition while the partition count stays the same;
  `base.partition_for` is the local log's mapping and is not used here;
* the producer uses acks=all, retries and (by default) idempotence, and `publish` returns
  only when the cluster has acknowledged every record; a publish that raised may have
  written part of the batch, and retrying it duplicates those records (at least once);
* a consumer is a KafkaConsumer in the group, without auto-commit, starting at the earliest
  records for a new group; `commit` synchronously commits the position after every record
  `poll` has returned, and `close` leaves the group without committing.

Unlike the local log, a group may have many members (in any process or machine): Kafka
shares the partitions among them and rebalances when members come and go.

Each bus opens its clients lazily: building one does no network I/O, the first call that
needs the cluster does (and raises BusError when it cannot reach it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from kafka import (
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka import errors as kafka_errors
from kafka.admin import NewTopic
from kafka.codec import has_gzip, has_lz4, has_snappy, has_zstd
from kafka.structs import OffsetAndMetadata
from kafka.util import ensure_valid_topic_name
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.bus.base import BusError, Consumer, EventBus, Message, Record

__all__ = ["KafkaBus", "KafkaBusConsumer", "KafkaSettings", "available_codecs"]

log = logging.getLogger(__name__)

CompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]

_CODEC_CHECKS = {"gzip": has_gzip, "snappy": has_snappy, "lz4": has_lz4, "zstd": has_zstd}
_TOPIC_ALREADY_EXISTS = kafka_errors.TopicAlreadyExistsError.errno
_METADATA_RETRY_S = 0.05
_SETTLE_POLL_S = 0.1
_TOPIC_LEVEL_ERRORS = (
    kafka_errors.UnknownTopicOrPartitionError,
    kafka_errors.LeaderNotAvailableError,
)
# Per-record framing a record adds on the wire (record batch v2), for the size check.
_RECORD_OVERHEAD = 128


def available_codecs() -> list[str]:
    """Compression codecs kafka-python can use with the libraries installed here."""
    return ["none"] + [name for name, check in _CODEC_CHECKS.items() if check()]


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster and tune its clients (env prefix RECOFLEET_KAFKA_)."""

    model_config = SettingsConfigDict(env_prefix="RECOFLEET_KAFKA_", extra="ignore")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Comma-separated host:port of brokers to start from."
    )
    client_id: str = Field(default="recofleet", description="Client id the brokers log.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism with SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(default=None, description="CA bundle to verify brokers.")
    ssl_certfile: Path | None = Field(default=None, description="Client certificate (mTLS).")
    ssl_keyfile: Path | None = Field(default=None, description="Client certificate's key.")

    partitions: int = Field(default=12, ge=1, le=10_000, description="Partitions per new topic.")
    replication_factor: int = Field(
        default=3,
        ge=1,
        le=32,
        description="Replicas per new topic (capped at the number of brokers in the cluster).",
    )
    topic_create_timeout_s: float = Field(
        default=30.0, gt=0, description="How long ensure_topics waits for new topics to appear."
    )

    # Producer: batch for throughput, acknowledged by every in-sync replica.
    linger_ms: int = Field(default=10, ge=0, le=60_000)
    batch_size: int = Field(default=256 * 1024, ge=1024, description="Bytes per partition batch.")
    compression_type: CompressionType = Field(
        default="lz4",
        description="lz4 and gzip work out of the box; snappy and zstd need python-snappy "
        "and zstandard installed.",
    )
    max_request_size: int = Field(default=1024 * 1024, ge=1024, description="Bytes per request.")
    enable_idempotence: bool = Field(
        default=True, description="No duplicates or reordering from the producer's own retries."
    )
    delivery_timeout_ms: int = Field(
        default=60_000, ge=1_000, description="Give up on a record not acknowledged by then."
    )
    max_block_ms: int = Field(
        default=10_000, ge=0, description="Longest wait for metadata or buffer space in publish."
    )
    request_timeout_ms: int = Field(default=30_000, ge=1_000)

    # Consumer.
    max_poll_records: int = Field(
        default=2000, ge=1, description="Most records one poll returns, whatever the caller asks."
    )
    fetch_max_wait_ms: int = Field(default=500, ge=0)
    fetch_min_bytes: int = Field(default=1, ge=1)
    max_partition_fetch_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Most bytes one fetch takes per partition."
    )
    fetch_max_bytes: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description="Most bytes one fetch response carries over all partitions; the client's "
        "frame limit is set above it, so a consumer starting on a backlog never gets a "
        "response larger than it accepts.",
    )
    session_timeout_ms: int = Field(
        default=30_000,
        ge=1_000,
        description="A member silent for this long is dropped. A stock broker accepts 6,000 "
        "to 1,800,000 (group.min/max.session.timeout.ms).",
    )
    heartbeat_interval_ms: int = Field(
        default=3_000, ge=100, description="Below a third of session_timeout_ms."
    )
    max_poll_interval_ms: int = Field(
        default=300_000,
        ge=1_000,
        description="Longest time between polls (applying a batch) before the member is dropped; "
        "also how long a rebalance waits for members to rejoin.",
    )

    join_wait_ms: int = Field(
        default=15_000,
        ge=0,
        description="How long poll may wait past its timeout while the member joins the group "
        "or has not yet fetched its partitions, so that an empty poll means caught up.",
    )

    health_cache_s: float = Field(default=2.0, ge=0, description="How long healthy() is cached.")

    def servers(self) -> list[str]:
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        if not servers:
            raise BusError("RECOFLEET_KAFKA_BOOTSTRAP_SERVERS names no broker")
        return servers

    def receive_limit(self) -> int:
        """The largest response frame the consumer accepts. A broker may exceed the fetch
        limits by one record batch (at most its message.max.bytes, 1 MiB by default) so that
        a large batch still makes progress, and kafka-python's own default (1,000,000 bytes)
        is below a fetch of two full partitions."""
        fetch = max(self.fetch_max_bytes, self.max_partition_fetch_bytes)
        return fetch + max(self.max_request_size, 1024 * 1024) + 64 * 1024

    def common_config(self) -> dict[str, Any]:
        """Connection and security options every kafka-python client takes."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.servers(),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism is not None:
            config["sasl_mechanism"] = self.sasl_mechanism
            config["sasl_plain_username"] = self.sasl_plain_username
            if self.sasl_plain_password is not None:
                config["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None:
                config[name] = str(path)
        return config

    def producer_config(self) -> dict[str, Any]:
        return self.common_config() | {
            "acks": "all",
            "enable_idempotence": self.enable_idempotence,
            # kafka-python 2.3 needs 1 for idempotence; without it, 1 keeps retries in order.
            "max_in_flight_requests_per_connection": 1,
            "linger_ms": self.linger_ms,
            "batch_size": self.batch_size,
            "compression_type": None if self.compression_type == "none" else self.compression_type,
            "max_request_size": self.max_request_size,
            "delivery_timeout_ms": max(
                self.delivery_timeout_ms, self.linger_ms + self.request_timeout_ms
            ),
            "max_block_ms": self.max_block_ms,
            "request_timeout_ms": self.request_timeout_ms,
            "metrics_enabled": False,
        }

    def consumer_config(self, group: str | None) -> dict[str, Any]:
        config = self.common_config() | {
            "group_id": group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "allow_auto_create_topics": False,
            "max_poll_records": self.max_poll_records,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "fetch_min_bytes": self.fetch_min_bytes,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "fetch_max_bytes": self.fetch_max_bytes,
            "receive_message_max_bytes": self.receive_limit(),
            "metrics_enabled": False,
        }
        if group is None:
            return config | {"request_timeout_ms": self.request_timeout_ms}
        return config | {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": min(
                self.heartbeat_interval_ms, max(self.session_timeout_ms // 3, 100)
            ),
            "max_poll_interval_ms": self.max_poll_interval_ms,
            # A JoinGroup may wait for a whole rebalance, so requests must outlast it.
            "request_timeout_ms": max(self.request_timeout_ms, self.max_poll_interval_ms + 5_000),
        }

    def admin_config(self) -> dict[str, Any]:
        return self.common_config() | {"request_timeout_ms": self.request_timeout_ms}


def _reason(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    if not text or text == name:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


class KafkaBus(EventBus):
    """EventBus on a Kafka cluster. Thread-safe; each Consumer is used by one thread."""

    def __init__(self, settings: KafkaSettings, retention_s: float | None = None) -> None:
        """`retention_s` becomes `retention.ms` of the topics this bus creates (None: the
        broker's default)."""
        if retention_s is not None and not retention_s > 0:
            raise BusError(f"retention_s must be positive, not {retention_s}")
        if settings.compression_type not in available_codecs():
            raise BusError(
                f"Kafka compression {settings.compression_type!r} needs a library that is not "
                f"installed; available here: {', '.join(available_codecs())}"
            )
        self.settings = settings
        self.retention_s = retention_s
        self._where = ",".join(settings.servers())
        self._lock = threading.RLock()  # guards the lazily opened clients below
        self._meta_lock = threading.Lock()  # metadata client and offsets consumer
        self._producer: KafkaProducer | None = None
        self._admin: KafkaAdminClient | None = None
        self._meta: KafkaClient | None = None
        self._offsets: KafkaConsumer | None = None
        self._create_topics_supported = True
        self._known_topics: set[str] = set()  # exist on the cluster, as far as publish cares
        self._tracked: set[str] = set()  # exist, so the metadata client follows them
        self._consumers: set[KafkaBusConsumer] = set()
        self._health: tuple[float, bool] = (0.0, False)
        self._closed = False

    # -- EventBus -------------------------------------------------------------------------

    def ensure_topics(self, topics: Iterable[str]) -> None:
        wanted = [_check_topic(t) for t in dict.fromkeys(topics)]
        self._check_open()
        missing = [t for t in wanted if t not in self._known_topics and not self._partitions(t)]
        if missing:
            self._create(missing)
            self._await_topics(missing)
        self._known_topics.update(wanted)

    def publish(self, topic: str, messages: Sequence[Message]) -> None:
        """Send every message, then wait until the cluster acknowledged all of them.

        On BusError some of the messages may have been written; publishing them again
        duplicates those, which at-least-once consumers tolerate.
        """
        if topic not in self._known_topics:
            self.ensure_topics([topic])
        records = [self._encode(m) for m in messages]  # a bad message fails before any send
        if not records:
            return
        producer = self._get_producer()
        futures = []
        try:
            for key, value in records:
                futures.append(producer.send(topic, key=key, value=value))
            producer.flush(timeout=self.settings.delivery_timeout_ms / 1000 + 5)
        except kafka_errors.KafkaError as e:
            raise BusError(f"cannot publish to {topic} at {self._where}: {_reason(e)}") from e
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0]
            why = _reason(first.exception) if first.is_done else "not acknowledged in time"
            raise BusError(
                f"cannot publish to {topic} at {self._where}: "
                f"{len(failed)} of {len(futures)} records failed ({why})"
            )

    def consumer(self, group: str, topics: Sequence[str]) -> KafkaBusConsumer:
        """Join `group`; the topics are created first if missing, so the group starts stable."""
        self._check_open()
        if not group:
            raise BusError("the consumer group name is empty")
        topics = list(dict.fromkeys(topics))
        self.ensure_topics(topics)
        consumer = KafkaBusConsumer(self, group, topics)
        with self._lock:
            self._consumers.add(consumer)
        return consumer

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Offset after the last record per partition ({} while the topic does not exist)."""
        partitions = self._partitions(_check_topic(topic))
        if not partitions:
            return {}
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        offsets = self._get_offsets_consumer()
        with self._meta_lock:
            try:
                ends = offsets.end_offsets(tps)
            except kafka_errors.KafkaError as e:
                raise BusError(f"cannot read the end offsets of {topic}: {_reason(e)}") from e
        return {tp.partition: int(end) for tp, end in ends.items()}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        partitions = self._partitions(_check_topic(topic))
        if not partitions:
            return {}
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        admin = self._get_admin()
        try:
            with self._meta_lock:
                found = admin.list_consumer_group_offsets(group, partitions=tps)
        except kafka_errors.KafkaError as e:
            raise BusError(
                f"cannot read the offsets group {group!r} committed on {topic}: {_reason(e)}"
            ) from e
        result = dict.fromkeys(partitions, 0)
        for tp, meta in found.items():
            if tp.topic == topic and meta.offset >= 0:
                result[tp.partition] = int(meta.offset)
        return result

    def groups(self) -> dict[str, list[str]]:
        """The cluster's groups (ListGroups on every broker) and the topics each committed
        on (OffsetFetch of all its offsets); groups without offsets are left out."""
        admin = self._get_admin()
        found: dict[str, list[str]] = {}
        try:
            with self._meta_lock:
                listed = sorted({group for group, *_ in admin.list_consumer_groups()})
                for group in listed:
                    offsets = admin.list_consumer_group_offsets(group)
                    topics = sorted({tp.topic for tp, meta in offsets.items() if meta.offset >= 0})
                    if topics:
                        found[group] = topics
        except kafka_errors.IncompatibleBrokerVersion as e:
            # librdkafka's mock cluster, for one; brokers have had it since Kafka 0.9.
            raise BusError(
                f"the Kafka cluster at {self._where} does not list consumer groups (ListGroups)"
            ) from e
        except kafka_errors.KafkaError as e:
            raise BusError(f"cannot list the consumer groups: {_reason(e)}") from e
        return found

    def location(self) -> str:
        return f"kafka {self._where}"

    def new_topic(self, topic: str, replicas: int) -> NewTopic:
        """What CreateTopics asks for a topic this bus creates."""
        configs: dict[str, str] = {}
        if self.retention_s is not None:
            configs["retention.ms"] = str(max(1, round(self.retention_s * 1000)))
        return NewTopic(topic, self.settings.partitions, replicas, topic_configs=configs)

    def healthy(self) -> bool:
        """Open, and a broker answered a metadata request within the last couple of seconds."""
        if self._closed:
            return False
        checked_at, ok = self._health
        now = time.monotonic()
        if now - checked_at < self.settings.health_cache_s:
            return ok
        try:
            ok = self._refresh_metadata(timeout_s=min(5.0, self.settings.request_timeout_ms / 1000))
        except BusError:
            ok = False
        self._health = (time.monotonic(), ok)
        return ok

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            consumers, self._consumers = list(self._consumers), set()
        for consumer in consumers:
            consumer.close()
        clients: list[Any] = [self._producer, self._offsets, self._admin, self._meta]
        self._producer = self._offsets = self._admin = self._meta = None
        for client in clients:
            if client is None:
                continue
            try:
                if isinstance(client, KafkaProducer):
                    client.close(timeout=self.settings.delivery_timeout_ms / 1000)
                else:
                    client.close()
            except Exception:  # closing must not fail; the process may be shutting down
                log.warning("closing %s failed", type(client).__name__, exc_info=True)

    # -- for KafkaBusConsumer ---------------------------------------------------------------

    def open_kafka_consumer(self, group: str) -> KafkaConsumer:
        return self._connect(
            "a consumer", lambda: KafkaConsumer(**self.settings.consumer_config(group))
        )

    def forget(self, consumer: KafkaBusConsumer) -> None:
        with self._lock:
            self._consumers.discard(consumer)

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("the bus is closed")

    def _connect(self, what: str, make: Any) -> Any:
        try:
            return make()
        except kafka_errors.NoBrokersAvailable as e:
            raise BusError(f"cannot reach Kafka at {self._where}: {_reason(e)}") from e
        except (kafka_errors.KafkaError, OSError, ValueError, AssertionError) as e:
            # kafka-python reports bad settings (e.g. a missing codec) as AssertionError.
            raise BusError(f"cannot open {what} on Kafka at {self._where}: {_reason(e)}") from e

    def _get_producer(self) -> KafkaProducer:
        with self._lock:
            self._check_open()
            if self._producer is None:
                self._producer = self._connect(
                    "a producer", lambda: KafkaProducer(**self.settings.producer_config())
                )
            return self._producer

    def _get_admin(self) -> KafkaAdminClient:
        with self._lock:
            self._check_open()
            if self._admin is None:
                self._admin = self._connect(
                    "an admin client", lambda: KafkaAdminClient(**self.settings.admin_config())
                )
            return self._admin

    def _get_meta(self) -> KafkaClient:
        with self._lock:
            self._check_open()
            if self._meta is None:
                config = self.settings.admin_config() | {"allow_auto_create_topics": False}
                self._meta = self._connect("a metadata client", lambda: KafkaClient(**config))
            return self._meta

    def _get_offsets_consumer(self) -> KafkaConsumer:
        with self._lock:
            self._check_open()
            if self._offsets is None:
                config = self.settings.consumer_config(None)
                self._offsets = self._connect("an offsets reader", lambda: KafkaConsumer(**config))
            return self._offsets

    def _refresh_metadata(self, timeout_s: float) -> bool:
        """Fetch fresh metadata (for the topics tracked so far); whether it arrived in time."""
        meta = self._get_meta()
        with self._meta_lock:
            try:
                self._await_metadata(meta, meta.cluster.request_update(), timeout_s)
            except BusError:
                return False
            return True

    def _await_metadata(self, meta: KafkaClient, future: Any, timeout_s: float) -> None:
        meta.poll(timeout_ms=int(timeout_s * 1000), future=future)
        if not future.is_done:
            raise BusError(f"cannot reach Kafka at {self._where}: no metadata in {timeout_s:g}s")
        # A topic-level error (a topic that does not exist yet) still brought fresh metadata.
        if future.failed() and not isinstance(future.exception, _TOPIC_LEVEL_ERRORS):
            raise BusError(
                f"cannot read metadata from Kafka at {self._where}: {_reason(future.exception)}"
            )

    def _partitions(self, topic: str) -> set[int]:
        """The topic's partitions as the cluster's metadata shows them (empty if none)."""
        meta = self._get_meta()
        with self._meta_lock:
            partitions = meta.cluster.partitions_for_topic(topic)
            if partitions:
                return set(partitions)
            # Only topics that exist stay tracked, or every refresh would ask for the others.
            meta.add_topic(topic)
            try:
                self._await_metadata(
                    meta, meta.cluster.request_update(), self.settings.request_timeout_ms / 1000
                )
                partitions = meta.cluster.partitions_for_topic(topic)
            finally:
                if partitions:
                    self._tracked.add(topic)
                else:
                    meta.set_topics(self._tracked)
            return set(partitions or ())

    def _create(self, topics: list[str]) -> None:
        if self._create_topics_supported:
            try:
                self._create_with_admin(topics)
                return
            except kafka_errors.IncompatibleBrokerVersion:
                log.warning(
                    "Kafka at %s does not support CreateTopics; relying on auto-creation",
                    self._where,
                )
                self._create_topics_supported = False
        # Brokers without CreateTopics (e.g. librdkafka's mock cluster) create a topic on the
        # first metadata request that allows it, with the broker's default partition count.
        if self.retention_s is not None:
            log.warning(
                "Kafka at %s auto-creates %s with its own defaults: set retention.ms=%d on them",
                self._where,
                ", ".join(topics),
                round(self.retention_s * 1000),
            )
        producer = self._get_producer()
        for topic in topics:
            try:
                producer.partitions_for(topic)
            except kafka_errors.KafkaError as e:
                raise BusError(
                    f"cannot create topic {topic} on Kafka at {self._where}: {_reason(e)}"
                ) from e

    def _create_with_admin(self, topics: list[str]) -> None:
        admin = self._get_admin()
        brokers = len(self._get_meta().cluster.brokers()) or self.settings.replication_factor
        replicas = min(self.settings.replication_factor, brokers)
        if replicas < self.settings.replication_factor:
            log.warning(
                "Kafka at %s has %d broker(s): creating topics with %d replica(s), not %d",
                self._where,
                brokers,
                replicas,
                self.settings.replication_factor,
            )
        timeout_ms = int(self.settings.topic_create_timeout_s * 1000)
        # One request per topic: kafka-python raises the first topic error of a request, and
        # "already exists" (another process won the race) must not hide a real failure.
        for topic in topics:
            try:
                with self._meta_lock:
                    admin.create_topics([self.new_topic(topic, replicas)], timeout_ms=timeout_ms)
            except kafka_errors.TopicAlreadyExistsError:
                continue
            except kafka_errors.IncompatibleBrokerVersion:
                raise  # the caller falls back to auto-creation
            except kafka_errors.KafkaError as e:
                raise BusError(
                    f"cannot create topic {topic} on Kafka at {self._where}: {_reason(e)}"
                ) from e

    def _await_topics(self, topics: list[str]) -> None:
        deadline = time.monotonic() + self.settings.topic_create_timeout_s
        waiting = list(topics)
        while True:
            waiting = [t for t in waiting if not self._partitions(t)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise BusError(
                    f"topics {', '.join(waiting)} did not appear on Kafka at {self._where} "
                    f"within {self.settings.topic_create_timeout_s:g}s"
                )
            time.sleep(_METADATA_RETRY_S)
            self._refresh_metadata(timeout_s=self.settings.request_timeout_ms / 1000)

    def _encode(self, message: Message) -> tuple[bytes, bytes]:
        try:
            key = message.key.encode("utf-8")
        except (AttributeError, UnicodeEncodeError) as e:
            raise BusError(f"record key {message.key!r} is not a valid string: {e}") from e
        value = bytes(message.value)
        size = len(key) + len(value) + _RECORD_OVERHEAD
        if size > self.settings.max_request_size:
            raise BusError(
                f"record of {len(key) + len(value)} bytes is larger than "
                f"max_request_size ({self.settings.max_request_size})"
            )
        return key, value


def _check_topic(topic: str) -> str:
    try:
        ensure_valid_topic_name(topic)
    except (TypeError, ValueError) as e:
        raise BusError(f"invalid topic name {topic!r}: {e}") from e
    return topic


class KafkaBusConsumer(Consumer):
    """A member of a Kafka consumer group (one thread uses it).

    `poll` returns [] only once the member knows it is caught up: while it is joining the
    group, or has not yet fetched a partition it was given, it waits past `timeout_s` (up
    to `join_wait_ms`), because an empty answer then would not mean "nothing new" (callers
    such as a drain stop at the first empty poll). Once joined, it waits `timeout_s` at most.
    """

    def __init__(self, bus: KafkaBus, group: str, topics: Sequence[str]) -> None:
        self._bus = bus
        self._group = group
        self._join_wait_s = bus.settings.join_wait_ms / 1000
        self._joined = False
        self._consumer: KafkaConsumer | None = bus.open_kafka_consumer(group)
        try:
            self._consumer.subscribe(topics=list(topics), listener=_Membership(self))
        except (kafka_errors.KafkaError, ValueError, TypeError) as e:
            self.close()
            raise BusError(f"group {group!r} cannot subscribe to {topics}: {_reason(e)}") from e
        # Position after the last record returned, per partition, and what was committed.
        self._positions: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[Record]:
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, not {max_records}")
        consumer = self._open()
        max_records = min(max_records, self._bus.settings.max_poll_records)
        deadline = time.monotonic() + max(0.0, timeout_s)
        settle_deadline = deadline + self._join_wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not self._settling(consumer) or time.monotonic() >= settle_deadline:
                    return []
                remaining = min(_SETTLE_POLL_S, settle_deadline - time.monotonic())
            records = self._poll_once(consumer, max_records, remaining)
            if records:
                return records

    def set_joined(self, joined: bool) -> None:
        self._joined = joined

    def _poll_once(self, consumer: KafkaConsumer, max_records: int, wait_s: float) -> list[Record]:
        try:
            batches = consumer.poll(timeout_ms=max(0, int(wait_s * 1000)), max_records=max_records)
        except kafka_errors.KafkaError as e:
            raise BusError(f"group {self._group!r} cannot poll: {_reason(e)}") from e
        records: list[Record] = []
        for tp, messages in batches.items():
            if not messages:
                continue
            for m in messages:
                key = m.key.decode("utf-8", errors="replace") if m.key is not None else ""
                value = m.value if m.value is not None else b""
                records.append(Record(tp.topic, tp.partition, m.offset, key, value, m.timestamp))
            self._positions[tp] = messages[-1].offset + 1
        return records

    def _settling(self, consumer: KafkaConsumer) -> bool:
        """Whether the member cannot yet tell that it is caught up."""
        if not self._joined:
            return True
        for tp in consumer.assignment():
            position = consumer.position(tp, timeout_ms=0)
            highwater = consumer.highwater(tp)
            if position is None or highwater is None or position < highwater:
                return True
        return False

    def commit(self) -> None:
        consumer = self._open()
        assigned = consumer.assignment()
        # Partitions taken away by a rebalance are someone else's now; their new owner
        # starts from the last commit, so anything polled here and not committed is redone.
        for tp in [tp for tp in self._positions if tp not in assigned]:
            del self._positions[tp]
        pending = {
            tp: OffsetAndMetadata(offset, "", -1)
            for tp, offset in self._positions.items()
            if self._committed.get(tp) != offset
        }
        if not pending:
            return
        try:
            consumer.commit(offsets=pending)
        except kafka_errors.CommitFailedError as e:
            # The group rebalanced since the poll: the records go to the partitions' next
            # owner again (at least once), and the next poll rejoins the group.
            log.warning("group %s: commit lost to a rebalance: %s", self._group, _reason(e))
            self._positions.clear()
            return
        except kafka_errors.KafkaError as e:
            raise BusError(f"group {self._group!r} cannot commit: {_reason(e)}") from e
        self._committed.update({tp: meta.offset for tp, meta in pending.items()})

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            consumer.close(autocommit=False)
        except Exception:
            log.warning("group %s: closing the consumer failed", self._group, exc_info=True)
        self._bus.forget(self)

    def _open(self) -> KafkaConsumer:
        if self._consumer is None:
            raise BusError(f"the consumer of group {self._group!r} is closed")
        return self._consumer


class _Membership(ConsumerRebalanceListener):
    """Tells the consumer when it holds an assignment (possibly empty) from a join."""

    def __init__(self, consumer: KafkaBusConsumer) -> None:
        self._consumer = consumer

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._consumer.set_joined(False)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._consumer.set_joined(True)
