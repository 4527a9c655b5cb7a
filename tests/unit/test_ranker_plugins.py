"""A ranker installed as a package of its own reaches the ranking service by entry point.

The plug-in (tests/plugins/reverse_ranker) is installed with pip into a folder of the test's
own, and everything that should see it runs in a child process with that folder on its
path, as a shop's environment would have it installed beside recofleet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "reverse_ranker"
ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import json, sys
from datetime import UTC, datetime
from pathlib import Path
from services.common.clock import Clock
from services.ranking.domain import RankerBook
from services.ranking.probe import probe_request
from services.ranking.registry import discover
from services.ranking.settings import RankingSettings
from services.ranking.store import SqlRankingStore

kinds = discover()
folder = Path(sys.argv[1])
store = SqlRankingStore.from_url(f"sqlite:///{folder / 'ranking.db'}")
book = RankerBook(kinds, store, RankingSettings(), folder / "models", Clock())
done = book.activate("reverse")
member, candidates = probe_request()
choice = book.choose("m-1", "home")
ranked = choice.ranker.rank(member, candidates, "home", 3)
lowest = sorted(candidates, key=lambda c: (c.score, c.item_id))[:3]
print(json.dumps({
    "kinds": {k: [v.origin, v.broken] for k, v in kinds.items()},
    "label": choice.label,
    "ranked": [r.item_id for r in ranked],
    "lowest": [c.item_id for c in lowest],
    "probe_calls": done.probe.calls,
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(PLUGIN),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def test_an_installed_plugin_is_registered_activated_and_ranks(
    installed: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    assert seen["kinds"]["reverse"] == ["recofleet-reverse-ranker", ""]
    assert seen["kinds"]["blend"] == ["built-in", ""]
    assert seen["label"] == "reverse"
    assert seen["ranked"] == seen["lowest"]
    assert seen["probe_calls"] > 0
    # A plug-in that fails to import is listed with why, and stops nothing.
    origin, broken = seen["kinds"]["broken"]
    assert origin == "recofleet-reverse-ranker"
    assert "failed to import" in broken and "reverse_ranker.missing" in broken


def test_without_the_plugin_only_the_built_in_rankers_are_there() -> None:
    from services.ranking.registry import discover

    assert {"blend", "ltr"} <= set(discover())
    assert "reverse" not in discover()
