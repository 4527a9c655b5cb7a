"""bench.profiles end to end on a few hundred members: it loads both databases, serves them
and prints every figure the full run records in BENCHMARKS.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_bench_profiles_runs_and_reports(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.profiles",
            "--sample",
            "--members=300",
            "--warmup=20",
            "--requests=100",
            "--concurrent-requests=100",
            "--steps=50",
            "--wait-quiet=0",
            f"--json={figures}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for heading in ("load", "GetProfile (gRPC)", "ExportSegment", "gateway export (CSV)"):
        assert heading in done.stdout
    results = json.loads(figures.read_text())
    for kind in ("sqlite", "postgresql"):
        db = results["databases"][kind]
        assert db["load"]["members"] == 300
        assert db["load"]["applied"] == db["load"]["events"] > 0
        phases = db["client"]["phases"]
        assert phases["GetProfile sequential"]["known"] == 100
        # The segment was sized from the generated data (a tenth of the members), and both
        # exports hand over every member GetSegment counted.
        size = phases["GetSegment"]["size"]
        assert 15 <= size <= 45
        assert phases["ExportSegment"]["members"] == size
        assert phases["gateway export (CSV)"]["members"] == size
