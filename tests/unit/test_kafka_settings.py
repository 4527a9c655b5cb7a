"""Kafka client settings that a broker with stock settings accepts."""

from __future__ import annotations

import pytest

from services.common.bus.kafka import KafkaSettings

# Apache Kafka's defaults: group.min/max.session.timeout.ms and message.max.bytes.
BROKER_MIN_SESSION_MS = 6_000
BROKER_MAX_SESSION_MS = 1_800_000
BROKER_MESSAGE_MAX_BYTES = 1_048_588


def test_default_session_is_within_a_stock_brokers_limits() -> None:
    config = KafkaSettings().consumer_config("group")
    assert BROKER_MIN_SESSION_MS <= config["session_timeout_ms"] <= BROKER_MAX_SESSION_MS
    assert config["heartbeat_interval_ms"] * 3 <= config["session_timeout_ms"]


@pytest.mark.parametrize(
    "fetch", [{}, {"fetch_max_bytes": 64 * 1024 * 1024}, {"max_partition_fetch_bytes": 20 << 20}]
)
def test_the_client_accepts_the_largest_fetch_response_it_asks_for(fetch: dict) -> None:
    # A broker answers up to fetch_max_bytes (each partition up to its own limit), and past
    # both by one record batch so that an oversized batch still makes progress.
    config = KafkaSettings(**fetch).consumer_config("group")
    largest = max(config["fetch_max_bytes"], config["max_partition_fetch_bytes"])
    assert config["receive_message_max_bytes"] > largest + BROKER_MESSAGE_MAX_BYTES
