"""Versioned trained models on disk, with an atomic "current" pointer servers watch."""

from __future__ import annotations

import abc
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class ModelStore(abc.ABC):
    @abc.abstractmethod
    def publish(self, build: Callable[[Path], dict[str, Any]]) -> str:
        """Let `build` write a model into a fresh folder, then make it the current version."""

    @abc.abstractmethod
    def current(self) -> str | None:
        """The version servers should load, or None before the first training."""

    @abc.abstractmethod
    def path(self, version: str) -> Path: ...

    @abc.abstractmethod
    def meta(self, version: str) -> dict[str, Any]: ...


class LocalModelStore(ModelStore):
    """Folders under `root/versions/`; `root/CURRENT` names the live one.

    A version is built in a temporary folder and renamed into place, and CURRENT is
    replaced atomically, so a server never loads a half-written model.
    """

    def __init__(self, root: Path, keep: int = 3) -> None:
        self._root = root
        self._versions = root / "versions"
        self._keep = keep
        self._versions.mkdir(parents=True, exist_ok=True)

    def publish(self, build: Callable[[Path], dict[str, Any]]) -> str:
        version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=self._versions))
        try:
            meta = build(staging)
            meta["version"] = version
            (staging / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
            staging.rename(self._versions / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _write_atomically(self._root / "CURRENT", version)
        self._prune(version)
        return version

    def current(self) -> str | None:
        try:
            version = (self._root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        return version if (self._versions / version).is_dir() else None

    def path(self, version: str) -> Path:
        return self._versions / version

    def meta(self, version: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.path(version) / "meta.json").read_text())
        return loaded

    def _prune(self, live: str) -> None:
        done = sorted(p for p in self._versions.iterdir() if p.is_dir() and p.name[0] != ".")
        for old in done[: max(len(done) - self._keep, 0)]:
            if old.name != live:
                shutil.rmtree(old, ignore_errors=True)


def _write_atomically(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
