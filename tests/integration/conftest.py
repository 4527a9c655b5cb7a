"""A whole fleet as separate processes on free loopback ports, over a fresh data dir."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from services.campaigns.offers import in_control
from services.campaigns.templates import TEMPLATES
from services.common.settings import FleetSettings
from services.gateway.access_keys import SqlAccessKeyStore, create_key

SERVICES = ("ingestion", "profiles", "retrieval", "ranking", "campaigns", "analytics")
SEGMENT_WRITE_KEY = "wk-integration-tests"
# RECOFLEET_ADMIN_KEY of every test fleet: what its clients send unless a test says otherwise.
ADMIN_KEY = "integration-tests-admin-key-0123456789abcdef"


def welcomed(prefix: str) -> str:
    """A new member id outside the welcome campaign's control group (a tenth of members, by
    hash): the welcome offer is theirs, as for nine new members in ten."""
    held_out = TEMPLATES["welcome"].defaults["control_share"]
    while in_control(found := f"{prefix}-{uuid.uuid4().hex[:12]}", "welcome", held_out):
        continue
    return found


# Ports handed out in this test process. A service also binds its port + METRICS_OFFSET
# for metrics, which the kernel knows nothing of until it starts: a port whose neighbour
# at that offset was handed out, or is taken, is not given, or two fleets collide.
HANDED_OUT: set[int] = set()
METRICS_OFFSET = FleetSettings().metrics_port_offset


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        related = {port, port + METRICS_OFFSET, port - METRICS_OFFSET}
        if not related & HANDED_OUT and _bindable(port + METRICS_OFFSET):
            HANDED_OUT.update({port, port + METRICS_OFFSET})
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except (OSError, OverflowError):
            return False
    return True


@dataclass
class RunningFleet:
    url: str
    data_dir: Path
    env: dict[str, str]
    runner: subprocess.Popen[bytes]
    # service -> PostgreSQL schema, for a fleet on PostgreSQL; empty on SQLite.
    schemas: dict[str, str] = field(default_factory=dict)

    @property
    def admin_key(self) -> str:
        return self.env["RECOFLEET_ADMIN_KEY"]

    def client(self, address: str | None = None, key: str | None = None) -> httpx.Client:
        """A client that sends `key` (the admin key by default) as X-API-Key, so that a test's
        own Authorization header (Segment's basic auth) leaves it in place. The gateway
        trusts the test's X-Forwarded-For: each client is a caller at its own (made-up)
        address. Rate limits count per access key: a test that needs a bucket of its own
        passes a key of its own (`new_key`)."""
        address = (
            address
            or f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
        )
        headers = {"x-forwarded-for": address, "x-api-key": key or self.admin_key}
        return httpx.Client(base_url=self.url, timeout=10.0, headers=headers)

    def new_key(self, *scopes: str, name: str = "integration tests") -> str:
        """A new access key, made through the store the gateway reads (as the CLI does)."""
        url = self.env.get("RECOFLEET_GATEWAY_DATABASE_URL") or FleetSettings(
            data_dir=self.data_dir
        ).sqlite_url("gateway")
        store = SqlAccessKeyStore.from_url(url)
        try:
            return create_key(store, scopes or ["admin"], name)[1]
        finally:
            store.close()


def fleet_env(data_dir: Path, kafka_bootstrap: str | None = None) -> dict[str, str]:
    """Settings of a fleet of its own: free ports, its data dir, the local log or a Kafka."""
    env = dict(os.environ)
    env.update({f"RECOFLEET_{name.upper()}_ADDR": f"127.0.0.1:{free_port()}" for name in SERVICES})
    env.update(
        {
            "RECOFLEET_DATA_DIR": str(data_dir),
            "RECOFLEET_GATEWAY_HOST": "127.0.0.1",
            "RECOFLEET_GATEWAY_PORT": str(free_port()),
            "RECOFLEET_RETRIEVAL_RELOAD_INTERVAL_S": "0.5",
            "RECOFLEET_SEGMENT_WRITE_KEY": SEGMENT_WRITE_KEY,
            "RECOFLEET_INGESTION_MAX_BATCH_EVENTS": "1000",
            "RECOFLEET_GATEWAY_RATE_LIMIT_PER_S": "1",
            "RECOFLEET_GATEWAY_RATE_LIMIT_BURST": "50",
            "RECOFLEET_GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
            "RECOFLEET_ADMIN_KEY": ADMIN_KEY,
        }
    )
    env.pop("RECOFLEET_GATEWAY_DATABASE_URL", None)
    if kafka_bootstrap:
        env.update(
            {
                "RECOFLEET_BUS": "kafka",
                "RECOFLEET_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "RECOFLEET_PII_SECRET": "integration-tests-pii-secret-0123456789",
                # A killed consumer's partitions move to its replacement within seconds: the
                # shortest session a stock broker accepts (group.min.session.timeout.ms).
                "RECOFLEET_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "RECOFLEET_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
                "RECOFLEET_KAFKA_FETCH_MAX_WAIT_MS": "100",
            }
        )
    return env


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"recofleet {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def wait_ready(url: str, runner: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert runner.poll() is None, "the fleet runner exited before the gateway was ready"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"gateway at {url} not ready within {timeout_s}s")


@contextlib.contextmanager
def running_fleet(env: dict[str, str], data_dir: Path) -> Iterator[RunningFleet]:
    """Load the sample, train and run the fleet as a user would; stop it with SIGTERM after."""
    cli(env, "load-sample")
    cli(env, "train", "--catch-up")
    with (data_dir / "runner.log").open("wb") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{env['RECOFLEET_GATEWAY_PORT']}"
        try:
            wait_ready(url, runner)
            yield RunningFleet(url, data_dir, env, runner)
        finally:
            if runner.poll() is None:
                runner.send_signal(signal.SIGTERM)
                try:
                    runner.wait(60)
                except subprocess.TimeoutExpired:
                    runner.kill()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    data_dir = tmp_path_factory.mktemp("fleet")
    with running_fleet(fleet_env(data_dir), data_dir) as running:
        yield running


POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Services with a database of their own: each gets a schema of its own on PostgreSQL.
STORED = ("profiles", "retrieval", "campaigns", "gateway", "ranking", "analytics")


@contextlib.contextmanager
def postgres_schemas(prefix: str) -> Iterator[dict[str, str]]:
    """A fresh schema per stored service (dropped afterwards): service -> schema name.
    PostgreSQL at 127.0.0.1:5432 is required; without it this fails, never skips."""
    admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
    schemas = {name: f"{prefix}_{name}" for name in STORED}
    try:
        with admin.begin() as conn:
            for schema in schemas.values():
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        yield schemas
    finally:
        with admin.begin() as conn:
            for schema in schemas.values():
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def schema_url(schema: str) -> str:
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    """The same fleet with every store on PostgreSQL (the production configuration)."""
    data_dir = tmp_path_factory.mktemp("pgfleet")
    with postgres_schemas(f"fleet_{uuid.uuid4().hex[:8]}") as schemas:
        env = fleet_env(data_dir)
        for name, schema in schemas.items():
            env[f"RECOFLEET_{name.upper()}_DATABASE_URL"] = schema_url(schema)
        with running_fleet(env, data_dir) as running:
            running.schemas = schemas
            yield running


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def any_fleet(request: pytest.FixtureRequest) -> RunningFleet:
    """Runs a test on the SQLite fleet and on the PostgreSQL one."""
    name = "fleet" if request.param == "sqlite" else "postgres_fleet"
    running: RunningFleet = request.getfixturevalue(name)
    return running
