"""Fixtures that run the conformance suites against every implementation: the EventBus
suite against every bus, the ModelStore suite against every model store.

To add a bus, write a factory maker like `_local_buses` and add it to
`BUS_IMPLEMENTATIONS`; every bus test in this package then runs against it too. A maker gets
the test's request (to use other fixtures, e.g. a broker for the session) and tmp_path.
Model stores are added the same way, to `MODEL_STORAGES`.

The Kafka bus runs against librdkafka's mock cluster (tests/kafka_mock.py), one for the
session; the tests use unique topic and group names, so they do not see each other. The S3
model store runs against moto's S3 server, a separate process for the session speaking the
S3 protocol over HTTP on loopback; each test has a prefix of its own in one bucket.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from services.common.bus.base import EventBus
from services.common.bus.kafka import KafkaBus, KafkaSettings
from services.common.bus.local_log import LocalLogBus
from services.common.settings import FleetSettings
from services.retrieval.model_store import ModelStore, open_model_store
from services.retrieval.s3_model_store import s3_client
from tests.kafka_mock import kafka_cluster

BusFactory = Callable[[], EventBus]


def _local_buses(request: pytest.FixtureRequest, tmp_path: Path) -> BusFactory:
    """New LocalLogBus objects over one directory: a new object is a restarted process."""
    root = tmp_path / "bus"
    return lambda: LocalLogBus(root, partitions=4)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The broker RECOFLEET_TEST_KAFKA_BOOTSTRAP names, else a mock Kafka cluster for the
    whole session (started only if a Kafka test runs)."""
    with kafka_cluster() as bootstrap:
        yield bootstrap


def _kafka_buses(request: pytest.FixtureRequest, tmp_path: Path) -> BusFactory:
    """New KafkaBus objects on one cluster: a new object is a restarted process."""
    settings = KafkaSettings(
        bootstrap_servers=request.getfixturevalue("kafka_bootstrap"),
        client_id="conformance",
        partitions=4,
        replication_factor=1,
        linger_ms=5,
        # The shortest session a stock broker accepts (group.min.session.timeout.ms), so a
        # member that vanishes without leaving hands its partitions on within 6 s.
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        max_poll_interval_ms=10_000,
        request_timeout_ms=10_000,
    )
    return lambda: KafkaBus(settings)


BUS_IMPLEMENTATIONS: dict[str, Callable[[pytest.FixtureRequest, Path], BusFactory]] = {
    "kafka": _kafka_buses,
    "local": _local_buses,
}


@pytest.fixture(params=sorted(BUS_IMPLEMENTATIONS))
def bus_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BusFactory]:
    """Makes bus clients that share one storage/cluster; all are closed after the test."""
    make = BUS_IMPLEMENTATIONS[request.param](request, tmp_path)
    made: list[EventBus] = []

    def factory() -> EventBus:
        made.append(make())
        return made[-1]

    yield factory
    for bus in reversed(made):
        bus.close()


@pytest.fixture
def bus(bus_factory: BusFactory) -> EventBus:
    return bus_factory()


@pytest.fixture
def topic() -> str:
    # Unique names keep tests independent on a shared broker (e.g. a Kafka cluster).
    return f"conformance.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def group() -> str:
    return f"group-{uuid.uuid4().hex[:12]}"


# --- model stores ----------------------------------------------------------------------------

MODEL = "retrieval"
S3_REGION = "us-east-1"
S3_BUCKET = "recofleet-conformance"
S3_START_TIMEOUT_S = 30.0


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """moto's S3 server as a process of its own on a free loopback port: its endpoint URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_listening(port, server, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _wait_listening(port: int, server: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + S3_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"moto's S3 server exited: {log.read().decode(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto's S3 server did not listen on {port} in {S3_START_TIMEOUT_S}s")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The S3 server of the session (started only if an S3 test runs), with its bucket."""
    with moto_s3_server() as endpoint:
        admin = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=S3_REGION,
            aws_access_key_id="conformance",
            aws_secret_access_key="conformance",
        )
        admin.create_bucket(Bucket=S3_BUCKET)
        yield endpoint


@dataclass
class ModelStorage:
    """Where one test's model stores open, as the fleet's settings say: folders in a data
    dir, or a prefix of the bucket of the test's own. `open(replica)` is one replica's store:
    with S3 each replica is a machine of its own (a data dir, so a download cache, of its own);
    locally they share the one machine's folders."""

    kind: str
    root: Path
    s3: dict[str, str] = field(default_factory=dict)

    def fleet(self, replica: str = "a", endpoint: str = "") -> FleetSettings:
        if self.kind == "local":
            return FleetSettings(data_dir=self.root, model_store_kind="local")
        s3 = self.s3 | ({"model_store_s3_endpoint": endpoint} if endpoint else {})
        return FleetSettings(data_dir=self.root / replica, model_store_kind="s3", **s3)

    def open(self, replica: str = "a", keep: int = 5) -> ModelStore:
        return open_model_store(self.fleet(replica), MODEL, keep)

    def client(self) -> Any:
        """The S3 client the stores use (one per endpoint and process)."""
        return s3_client(self.s3["model_store_s3_endpoint"], S3_REGION)

    def put_raw(self, relative: str, data: bytes) -> None:
        """Write one file of the store as a writer that stopped half-way would leave it."""
        if self.kind == "local":
            target = self.root / "models" / MODEL / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            return
        key = f"{self.s3['model_store_s3_prefix']}/{MODEL}/{relative}"
        self.client().put_object(Bucket=S3_BUCKET, Key=key, Body=data)


def _local_storage(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStorage:
    return ModelStorage("local", tmp_path)


def _s3_storage(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStorage:
    endpoint = request.getfixturevalue("s3_endpoint")
    env = request.getfixturevalue("monkeypatch")
    # The credentials the chart passes from a Secret, through boto3's own chain; nothing of
    # the machine's own AWS configuration.
    env.delenv("AWS_PROFILE", raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "conformance",
        "AWS_SECRET_ACCESS_KEY": "conformance",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        env.setenv(name, value)
    settings = {
        "model_store_s3_bucket": S3_BUCKET,
        "model_store_s3_endpoint": endpoint,
        "model_store_s3_region": S3_REGION,
        "model_store_s3_prefix": f"test-{uuid.uuid4().hex[:12]}",
    }
    return ModelStorage("s3", tmp_path, settings)


MODEL_STORAGES: dict[str, Callable[[pytest.FixtureRequest, Path], ModelStorage]] = {
    "local": _local_storage,
    "s3": _s3_storage,
}


@pytest.fixture(params=sorted(MODEL_STORAGES))
def model_storage(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStorage:
    return MODEL_STORAGES[request.param](request, tmp_path)


@pytest.fixture
def s3_storage(request: pytest.FixtureRequest, tmp_path: Path) -> ModelStorage:
    """For what only the S3 store has: downloads, conditional writes, a network."""
    return _s3_storage(request, tmp_path)
