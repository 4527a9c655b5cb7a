"""`recofleet up` on a fresh data dir: reuse on a second run, and a clean stop on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import SERVICES, cli, fleet_env, wait_ready

pytestmark = pytest.mark.integration


def port_is_free(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


def test_second_run_reuses_data_and_model_then_ctrl_c_stops_everything(tmp_path):
    env = fleet_env(tmp_path)
    assert "loaded: " in cli(env, "load-sample")
    assert "already loaded" in cli(env, "load-sample")
    assert "trained model" in cli(env, "train")
    assert "not retrained" in cli(env, "train")

    runner = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{env['RECOFLEET_GATEWAY_PORT']}"
    try:
        wait_ready(url, runner)
    finally:
        runner.send_signal(signal.SIGINT)
        output = runner.communicate(timeout=60)[0].decode()
    assert runner.returncode == 0, output
    assert "already loaded" in output and "not retrained" in output
    assert f"recofleet is serving on {url}" in output
    assert "stopped" in output
    addresses = [env[f"RECOFLEET_{name.upper()}_ADDR"] for name in SERVICES]
    addresses.append(f"127.0.0.1:{env['RECOFLEET_GATEWAY_PORT']}")
    assert all(port_is_free(a) for a in addresses), "a fleet process outlived Ctrl-C"


def test_ctrl_c_while_the_fleet_is_starting_stops_what_was_started(tmp_path):
    env = fleet_env(tmp_path)
    cli(env, "load-sample")
    cli(env, "train")
    runner = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    logs = tmp_path / "logs"
    deadline = time.monotonic() + 60
    while not (logs / "profiles.log").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    output = runner.communicate(timeout=60)[0].decode()
    assert runner.returncode == 0, output
    assert "stopped" in output
    addresses = [env[f"RECOFLEET_{name.upper()}_ADDR"] for name in SERVICES]
    assert all(port_is_free(a) for a in addresses), "a service outlived Ctrl-C during start-up"
