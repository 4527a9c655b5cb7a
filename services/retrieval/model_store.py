"""Versioned trained models on disk, with an atomic "current" pointer servers watch.

Servers load whatever CURRENT names and nothing else: a newer version that an operator
rolled back from stays on disk, unserved, until it is activated again. A version a server
could not load is recorded as refused (with the reason), so that servers do not retry it
in a loop and operators see why; `previous` skips refused versions, so a rollback never
lands on one.

Two implementations: `LocalModelStore`, folders on one machine (the embedded default), and
`S3ModelStore` (services/retrieval/s3_model_store.py), an S3-compatible bucket every
replica reads. `open_model_store` picks the one the fleet's settings name.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from services.common.settings import FleetSettings

VERSION_FORMAT = "%Y%m%dT%H%M%S%fZ"
_VERSION_NAME = re.compile(r"\d{8}T\d{12}Z")
META = "meta.json"


class NoPreviousVersion(LookupError):
    """There is no version to roll back to."""


class UnknownVersion(LookupError):
    """No kept version has that name."""


class ModelStoreUnavailable(OSError):
    """The store could not be read or written (S3: network, credentials, bucket). An OSError,
    as a local store's failures are: servers keep serving what they loaded and try again."""


class ModelStore(abc.ABC):
    @abc.abstractmethod
    def publish(self, build: Callable[[Path], dict[str, Any]]) -> str:
        """Let `build` write a model into a fresh folder, then make it the current version."""

    @abc.abstractmethod
    def current(self) -> str | None:
        """The version servers should load, or None before the first training."""

    @abc.abstractmethod
    def path(self, version: str) -> Path:
        """A local folder holding the version's files (`UnknownVersion` if it is not kept)."""

    @abc.abstractmethod
    def meta(self, version: str) -> dict[str, Any]:
        """The version's meta.json (`FileNotFoundError` if it is not kept)."""

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
            # Named once built: later than any version published while this one was built.
            version = next_version(self.versions())
            meta["version"] = version
            (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
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
        return version if version and (self._versions / version / META).is_file() else None

    def path(self, version: str) -> Path:
        if version not in self.versions():
            raise UnknownVersion(f"no model version {version!r} is kept")
        return self._versions / version

    def meta(self, version: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self._versions / version / META).read_text())
        return loaded

    def versions(self) -> list[str]:
        # Staging folders start with a dot; a published one always has its meta.json.
        return sorted(
            p.name for p in self._versions.iterdir() if p.name[0] != "." and (p / META).is_file()
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

    def _prune(self, live: str) -> None:
        for old in prunable(self, live, self._keep):
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


def open_model_store(fleet: FleetSettings, name: str, keep: int) -> ModelStore:
    """The versions of the fleet's model `name` ("retrieval", "rankers/ltr"), where the
    fleet keeps its models: folders under the data dir, or the S3 bucket."""
    if fleet.model_store_kind == "local":
        return LocalModelStore(fleet.models_dir / name, keep=keep)
    # Here, not at the top: that module builds on this one, and a local fleet needs no boto3.
    from services.retrieval.s3_model_store import open_s3_model_store

    return open_s3_model_store(fleet, name, keep)


def is_version_name(text: str) -> bool:
    return _VERSION_NAME.fullmatch(text) is not None


def next_version(kept: Sequence[str]) -> str:
    """The name of a version published now: later than every kept one (`kept` is oldest
    first), even if the clock stepped back."""
    now = datetime.now(UTC)
    if kept:
        newest = datetime.strptime(kept[-1], VERSION_FORMAT).replace(tzinfo=UTC)
        now = max(now, newest + timedelta(microseconds=1))
    return now.strftime(VERSION_FORMAT)


def prunable(store: ModelStore, live: str, keep: int) -> list[str]:
    """The versions past `keep`, oldest first; never the live version nor the one a rollback
    would go to, whatever `keep` says."""
    protected = {live, store.previous(live)}
    done = store.versions()
    return [old for old in done[: max(len(done) - keep, 0)] if old not in protected]


def _write_atomically(target: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
