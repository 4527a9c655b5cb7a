"""The model store in an S3-compatible bucket: what every replica in a cluster reads.

Under the store's prefix (`<s3_prefix>/<model name>`):

    versions/<version>/...             the files the build wrote, meta.json uploaded last
    CURRENT                            the version servers load
    refused.json                       the versions servers could not load, with why

A version is listed once its meta.json is there, and CURRENT is written after that, so no
reader sees a half-uploaded version; each is one PUT, which S3 makes visible whole, and S3's
reads and listings are strongly consistent. Servers load from a local copy: `path`
downloads a version once into the cache folder, into a temporary folder renamed into
place, so a reader in this pod never sees half a copy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from services.common.settings import FleetSettings
from services.retrieval.model_store import (
    META,
    ModelStore,
    ModelStoreUnavailable,
    UnknownVersion,
    is_version_name,
    next_version,
    prunable,
)

CURRENT = "CURRENT"
REFUSED = "refused.json"
# An upload that stopped before its meta.json (a trainer killed mid-way) is deleted once
# this old; a younger one may be a trainer still uploading.
ABANDONED_AFTER = timedelta(hours=6)
# Replicas refusing at once each retry their conditional write of refused.json this often.
REFUSAL_ATTEMPTS = 8
_MISSING = {"NoSuchKey", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict"}
# One download at a time in this process: two readers of one version share it.
_downloading = threading.Lock()
_LONG_AGO = datetime.min.replace(tzinfo=UTC)


class _Conflict(Exception):
    """A conditional write lost to another writer."""


@dataclass
class _Folder:
    """One version's objects in the bucket."""

    keys: list[str] = field(default_factory=list)
    published: bool = False
    newest: datetime = _LONG_AGO


class S3ModelStore(ModelStore):
    def __init__(self, client: Any, bucket: str, prefix: str, cache: Path, keep: int = 3) -> None:
        self._s3 = client
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self._cache = cache
        self._keep = keep

    def __repr__(self) -> str:
        return f"S3ModelStore(s3://{self._bucket}/{self._prefix})"

    def publish(self, build: Callable[[Path], dict[str, Any]]) -> str:
        self._cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=self._cache))
        try:
            meta = build(staging)
            # Named once built: later than any version published while this one was built.
            version = next_version(self.versions())
            meta["version"] = version
            (staging / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
            self._upload(staging, version)
            self._put(CURRENT, version.encode())
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # What was uploaded is this pod's copy: no download to serve it here.
        _move_into_place(staging, self._cache / version)
        self._prune(version)
        return version

    def current(self) -> str | None:
        try:
            version = self._get(CURRENT).decode().strip()
        except FileNotFoundError:
            return None
        return version if is_version_name(version) and self._published(version) else None

    def path(self, version: str) -> Path:
        if not is_version_name(version):
            raise UnknownVersion(f"no model version {version!r} is kept")
        folder = self._cache / version
        if folder.is_dir():
            return folder  # versions never change once published
        with _downloading:
            if not folder.is_dir():
                self._download(version, folder)
                with contextlib.suppress(ModelStoreUnavailable):  # housekeeping, next time
                    self._tidy_cache(set(self.versions()))
        return folder

    def meta(self, version: str) -> dict[str, Any]:
        copy = self._cache / version / META
        text = copy.read_bytes() if is_version_name(version) and copy.is_file() else None
        loaded: dict[str, Any] = json.loads(text or self._get(f"versions/{version}/{META}"))
        return loaded

    def versions(self) -> list[str]:
        return sorted(v for v, folder in self._listing().items() if folder.published)

    def activate(self, version: str) -> None:
        if version not in self.versions():
            raise UnknownVersion(f"no model version {version!r} is kept")
        self._change_refusals(lambda refusals: refusals.pop(version, None))
        self._put(CURRENT, version.encode())

    def refuse(self, version: str, reason: str) -> None:
        self._change_refusals(lambda refusals: refusals.update({version: reason}))

    def refused(self) -> dict[str, str]:
        kept = set(self.versions())
        return {v: r for v, r in self._read_refusals()[0].items() if v in kept}

    # Versions in the bucket ---------------------------------------------------------------

    def _upload(self, staging: Path, version: str) -> None:
        meta = staging / META
        files = sorted(p for p in staging.rglob("*") if p.is_file() and p != meta)
        try:
            for path in files:
                with path.open("rb") as body:
                    self._put(f"versions/{version}/{path.relative_to(staging).as_posix()}", body)
            # Last: until meta.json is there the version is not listed, so never half seen.
            self._put(f"versions/{version}/{META}", meta.read_bytes())
        except BaseException:
            # meta.json too: its PUT may have landed though its answer was lost.
            with contextlib.suppress(ModelStoreUnavailable):
                self._remove(version)
            raise

    def _download(self, version: str, folder: Path) -> None:
        found = self._listing(version).get(version, _Folder())
        if not found.published:
            raise UnknownVersion(f"no model version {version!r} is kept")
        base = self._key("versions", version) + "/"
        self._cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self._cache))
        try:
            for key in found.keys:
                relative = key[len(base) :]
                if relative.startswith("/") or ".." in relative.split("/"):
                    raise UnknownVersion(f"model version {version} holds a key outside it: {key}")
                self._fetch(key, staging / relative)
            _move_into_place(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _published(self, version: str) -> bool:
        key = self._key("versions", version, META)
        try:
            with self._remote(f"head {key}"):
                self._s3.head_object(Bucket=self._bucket, Key=key)
        except FileNotFoundError:
            return False
        return True

    def _listing(self, version: str = "") -> dict[str, _Folder]:
        """The versions' objects (one version's, when given), by version name."""
        base = self._key("versions") + "/"
        folders: dict[str, _Folder] = {}
        with self._remote(f"list {base}"):
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=f"{base}{version}/" if version else base
            )
            for page in pages:
                for found in page.get("Contents", []):
                    name, _, rest = found["Key"][len(base) :].partition("/")
                    if not is_version_name(name):
                        continue
                    folder = folders.setdefault(name, _Folder())
                    folder.keys.append(found["Key"])
                    folder.published |= rest == META
                    folder.newest = max(folder.newest, found["LastModified"])
        return folders

    def _prune(self, live: str) -> None:
        for old in prunable(self, live, self._keep):
            self._remove(old)
        abandoned = datetime.now(UTC) - ABANDONED_AFTER
        for folder in self._listing().values():
            if not folder.published and folder.newest < abandoned:
                self._delete(folder.keys)
        kept = set(self.versions())
        self._change_refusals(lambda refusals: _drop_unless(refusals, kept))
        self._tidy_cache(kept)

    def _remove(self, version: str) -> None:
        # meta.json first: the version stops being listed before any of its files go.
        self._delete([self._key("versions", version, META)])
        self._delete(self._listing(version).get(version, _Folder()).keys)

    def _tidy_cache(self, kept: set[str]) -> None:
        """Forget the copies of versions no longer kept, and old leftovers of interrupted
        builds and downloads (younger ones may be another process's, in progress)."""
        leftover = time.time() - ABANDONED_AFTER.total_seconds()
        for entry in self._cache.iterdir() if self._cache.is_dir() else ():
            stale = entry.name not in kept if entry.name[0] != "." else _mtime(entry) < leftover
            if stale and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)

    # Refusals -----------------------------------------------------------------------------

    def _read_refusals(self) -> tuple[dict[str, str], str | None]:
        """The refusals and the ETag of refused.json (None: there is none yet)."""
        key = self._key(REFUSED)
        try:
            with self._remote(f"get {key}"):
                found = self._s3.get_object(Bucket=self._bucket, Key=key)
                text = found["Body"].read()
        except FileNotFoundError:
            return {}, None
        loaded = json.loads(text)
        refusals = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        return refusals, found["ETag"]

    def _change_refusals(self, change: Callable[[dict[str, str]], object]) -> None:
        """Apply `change` to refused.json; a conditional write, tried again when another
        replica wrote in between (S3 has no lock; its If-Match / If-None-Match are one)."""
        for _ in range(REFUSAL_ATTEMPTS):
            refusals, etag = self._read_refusals()
            before = dict(refusals)
            change(refusals)
            if refusals == before:
                return
            body = json.dumps(refusals, indent=2, sort_keys=True).encode()
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self._put(REFUSED, body, **condition)
                return
            except (_Conflict, FileNotFoundError):
                continue
        raise ModelStoreUnavailable(
            f"{self}: refused.json changed under {REFUSAL_ATTEMPTS} attempts to update it"
        )

    # Objects ------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join((self._prefix, *parts))

    def _get(self, name: str) -> bytes:
        key = self._key(name)
        with self._remote(f"get {key}"):
            body: bytes = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        return body

    def _fetch(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._remote(f"get {key}"), target.open("wb") as out:
            shutil.copyfileobj(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"], out)

    def _put(self, name: str, body: Any, **conditions: str) -> None:
        key = self._key(name)
        with self._remote(f"put {key}"):
            self._s3.put_object(Bucket=self._bucket, Key=key, Body=body, **conditions)

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes up to 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            with self._remote(f"delete {len(batch)} objects"):
                self._s3.delete_objects(
                    Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True}
                )

    @contextlib.contextmanager
    def _remote(self, doing: str) -> Iterator[None]:
        """S3's answers as the store's: a missing object is a FileNotFoundError (as a missing
        file is to the local store), everything else that failed ModelStoreUnavailable."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING:
                raise FileNotFoundError(f"{self}: {doing}: no such object") from exc
            if code in _CONFLICT:
                raise _Conflict(doing) from exc
            raise ModelStoreUnavailable(f"{self}: {doing} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise ModelStoreUnavailable(f"{self}: {doing} failed: {exc}") from exc


def open_s3_model_store(fleet: FleetSettings, name: str, keep: int) -> S3ModelStore:
    """The store of model `name` in the fleet's bucket, downloading into its cache dir."""
    assert fleet.model_store_s3_bucket, "FleetSettings requires a bucket with the s3 store"
    client = s3_client(fleet.model_store_s3_endpoint, fleet.model_store_s3_region)
    prefix = "/".join(p for p in (fleet.model_store_s3_prefix.strip("/"), name) if p)
    cache = fleet.model_cache_dir / name
    return S3ModelStore(client, fleet.model_store_s3_bucket, prefix, cache, keep=keep)


@functools.cache
def s3_client(endpoint: str | None, region: str | None) -> Any:
    """One client per endpoint for the process (clients are thread-safe and slow to make),
    with credentials from boto3's chain."""
    config = Config(
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "max_attempts": 3},
    )
    if endpoint:
        # S3-compatible servers (MinIO, Ceph) are reached by path, not by a bucket host
        # name, and many reject the checksums boto3 adds by default since 1.36.
        config = config.merge(
            Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
        )
    session = boto3.session.Session()  # its own: boto3's default session is not thread-safe
    return session.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the finished copy into place; if another process placed it first, keep theirs
    (the same files: versions never change)."""
    try:
        staging.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _drop_unless(refusals: dict[str, str], kept: set[str]) -> None:
    for gone in [v for v in refusals if v not in kept]:
        del refusals[gone]


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except FileNotFoundError:
        return time.time()
