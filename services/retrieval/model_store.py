"""Versioned trained models on disk, with an atomic "current" pointer servers watch.

Servers load whatever CURRENT names and nothing else: a newer version that an operator
rolled back from stays on disk, unserved, until it is activated again. A version a server
could not load is recorded as refused (with the reason), so that servers do not retry it
in a loop and operators see why; `previous` skips refused versions, so a rollback never
lands on one.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

VERSION_FORMAT = "%Y%m%dT%H%M%S%fZ"


class NoPreviousVersion(LookupError):
    """There is no version to roll back to."""


class UnknownVersion(LookupError):
    """No kept version has that name."""


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

    @abc.abstractmethod
    def versions(self) -> list[str]:
        """The published versions kept, oldest first."""

    @abc.abstractmethod
    def activate(self, version: str) -> None:
        """Make a kept version current (`UnknownVersion` otherwise); clears its refusal,
        since making it current asks servers to try it again."""

    @abc.abstractmethod
    def refuse(self, version: str, reason: str) -> None:
        """Record that a server could not load `version`, and why."""

    @abc.abstractmethod
    def refused(self) -> dict[str, str]:
        """The refused versions still kept, with their reasons."""

    def previous(self, version: str) -> str | None:
        """The newest kept version published before `version` that no server refused."""
        refused = self.refused()
        older = [v for v in self.versions() if v < version and v not in refused]
        return older[-1] if older else None

    def rollback(self) -> str:
        """Make the version before the current one current; return it."""
        current = self.current()
        if current is None:
            raise NoPreviousVersion("no model version is current: nothing to roll back from")
        target = self.previous(current)
        if target is None:
            raise NoPreviousVersion(
                f"no version before {current} is kept (or every one was refused): "
                "nothing to roll back to"
            )
        self.activate(target)
        return target


class LocalModelStore(ModelStore):
    """Folders under `root/versions/`; `root/CURRENT` names the live one, `root/refused.json`
    the versions servers could not load.

    A version is built in a temporary folder and renamed into place, and CURRENT is
    replaced atomically, so a server never loads a half-written model.
    """

    def __init__(self, root: Path, keep: int = 3) -> None:
        self._root = root
        self._versions = root / "versions"
        self._keep = keep
        self._versions.mkdir(parents=True, exist_ok=True)

    def publish(self, build: Callable[[Path], dict[str, Any]]) -> str:
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=self._versions))
        try:
            meta = build(staging)
            # Named once built: a name later than every kept one, even if the clock stepped back.
            version = self._new_version()
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
        return version if version and (self._versions / version).is_dir() else None

    def path(self, version: str) -> Path:
        return self._versions / version

    def meta(self, version: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.path(version) / "meta.json").read_text())
        return loaded

    def versions(self) -> list[str]:
        # Staging folders start with a dot; a published one always has its meta.json.
        return sorted(
            p.name
            for p in self._versions.iterdir()
            if p.name[0] != "." and (p / "meta.json").is_file()
        )

    def activate(self, version: str) -> None:
        if version not in self.versions():
            raise UnknownVersion(f"no model version {version!r} is kept")
        with self._refusals() as refusals:
            refusals.pop(version, None)
        _write_atomically(self._root / "CURRENT", version)

    def refuse(self, version: str, reason: str) -> None:
        with self._refusals() as refusals:
            refusals[version] = reason

    def refused(self) -> dict[str, str]:
        kept = set(self.versions())
        return {v: r for v, r in self._read_refusals().items() if v in kept}

    def _new_version(self) -> str:
        now = datetime.now(UTC)
        kept = self.versions()
        if kept:
            newest = datetime.strptime(kept[-1], VERSION_FORMAT).replace(tzinfo=UTC)
            now = max(now, newest + timedelta(microseconds=1))
        return now.strftime(VERSION_FORMAT)

    def _prune(self, live: str) -> None:
        # Never the live version nor the one a rollback would go to, whatever `keep` says.
        protected = {live, self.previous(live)}
        done = self.versions()
        for old in done[: max(len(done) - self._keep, 0)]:
            if old not in protected:
                shutil.rmtree(self._versions / old, ignore_errors=True)
        with self._refusals() as refusals:
            kept = set(self.versions())
            for gone in [v for v in refusals if v not in kept]:
                del refusals[gone]

    def _read_refusals(self) -> dict[str, str]:
        try:
            loaded = json.loads((self._root / "refused.json").read_text())
        except FileNotFoundError:
            return {}
        return {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}

    @contextlib.contextmanager
    def _refusals(self) -> Iterator[dict[str, str]]:
        """The refusals to change, written back atomically; one writer at a time (every
        replica of the service may refuse at once)."""
        with (self._root / ".refused.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            refusals = self._read_refusals()
            before = dict(refusals)
            yield refusals
            if refusals != before:
                text = json.dumps(refusals, indent=2, sort_keys=True)
                _write_atomically(self._root / "refused.json", text)


def _write_atomically(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
