"""The committed stubs are what `make protos` generates from proto/ today."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate"] = module
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, str]:
    # Compiled files are left out before they are read: they are bytes, and whichever
    # process imported the stubs first wrote them.
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_regenerating_the_stubs_changes_nothing(tmp_path):
    _generator().generate(tmp_path / "gen")
    assert _tree(tmp_path / "gen") == _tree(ROOT / "services" / "gen")


def test_every_service_has_a_versioned_contract():
    services = {p.parent.parent.name for p in (ROOT / "proto" / "recofleet").glob("*/v1/*.proto")}
    assert {"ingestion", "profiles", "retrieval", "ranking", "campaigns"} <= services
