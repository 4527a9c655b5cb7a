"""Generate the Python gRPC stubs (with .pyi types) from proto/ into services/gen.

protoc writes imports from the proto paths (`from recofleet.common.v1 import ...`); they are
rewritten to live under `services.gen` so that the stubs ship inside the one importable
package instead of claiming a top-level `recofleet` module of their own.
Run through `make protos`; `tests/unit/test_protos.py` checks the committed stubs are current.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "services" / "gen"
IMPORT = re.compile(r"^(from|import) recofleet\.", re.MULTILINE)


def _plugin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        raise SystemExit(f"{name} not found next to {sys.executable}: pip install -e '.[dev]'")
    return found


def generate(out: Path) -> list[Path]:
    """Write the stubs for every proto under proto/ into `out`; return the files written."""
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    well_known = str(Path(protoc.__file__).parent / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{PROTO_DIR}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        if out.exists():
            shutil.rmtree(out)
        written = [_place(src, Path(tmp), out) for src in sorted(Path(tmp).rglob("*.py*"))]
    for folder in {out, *(p.parent for p in out.rglob("*") if p.is_file())}:
        _ensure_package(folder, out)
    return written


def _place(src: Path, tmp: Path, out: Path) -> Path:
    target = out / src.relative_to(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(IMPORT.sub(r"\1 services.gen.recofleet.", src.read_text()))
    return target


def _ensure_package(folder: Path, out: Path) -> None:
    while True:
        (folder / "__init__.py").touch()
        if folder == out:
            return
        folder = folder.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    written = generate(parser.parse_args().out)
    print(f"generated {len(written)} files")


if __name__ == "__main__":
    main()
