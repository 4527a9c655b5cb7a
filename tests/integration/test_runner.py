"""`recofleet up` on a fresh data dir: reuse on a second run, the admin key a new install
shows once, and a clean stop on Ctrl-C."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.integration.conftest import SERVICES, cli, fleet_env

pytestmark = pytest.mark.integration


def port_is_free(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


class Output:
    """A process's output, read as it comes, so a test can wait for a line and see the rest."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._lines: queue.Queue[bytes] = queue.Queue()
        self.text = ""
        self._reader = threading.Thread(target=self._pump, args=(process,), daemon=True)
        self._reader.start()

    def _pump(self, process: subprocess.Popen[bytes]) -> None:
        for line in process.stdout:
            self._lines.put(line)

    def until(self, wanted: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while wanted not in self.text:
            try:
                self.text += self._lines.get(
                    timeout=max(deadline - time.monotonic(), 0.01)
                ).decode()
            except queue.Empty as exc:
                raise AssertionError(
                    f"no {wanted!r} in {timeout_s}s; output:\n{self.text}"
                ) from exc

    def rest(self) -> str:
        self._reader.join(60)
        while not self._lines.empty():
            self.text += self._lines.get().decode()
        return self.text


def test_second_run_reuses_data_and_model_then_ctrl_c_stops_everything(tmp_path):
    env = fleet_env(tmp_path)
    # A new install as `make run` sees it: no RECOFLEET_ADMIN_KEY.
    del env["RECOFLEET_ADMIN_KEY"]
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
    output = Output(runner)
    try:
        # What a user sees before pressing Ctrl-C: the fleet says where it serves.
        output.until(f"recofleet is serving on {url}", timeout_s=180)
        output.until("Ctrl-C stops every process.", timeout_s=10)
        assert httpx.get(f"{url}/readyz").status_code == 200
        # The admin key made for this install, shown once, with curls that use it.
        keys = re.findall(r"export RECOFLEET_KEY=(rf_\S+)", output.text)
        assert len(keys) == 1, output.text
        assert 'curl -H "Authorization: Bearer $RECOFLEET_KEY"' in output.text
        recommendations = f"{url}/v1/members/17850/recommendations"
        with_key = httpx.get(recommendations, headers={"authorization": f"Bearer {keys[0]}"})
        assert with_key.status_code == 200, with_key.text
        assert httpx.get(recommendations).status_code == 401
    finally:
        runner.send_signal(signal.SIGINT)
        runner.wait(60)
    text = output.rest()
    assert runner.returncode == 0, text
    assert text.count(keys[0]) == 1, "the admin key was shown more than once"
    assert "already loaded" in text and "not retrained" in text
    assert text.rstrip().endswith("stopped")
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
