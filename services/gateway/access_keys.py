"""Access keys: who may call the gateway, and with which scopes.

A key reads `rf_<id>_<secret>`: the id (12 hex digits) is public, shown by `recofleet keys
list` and used to find the key's record; the secret is 32 random bytes. Only a SHA-256
digest of the whole key is stored, compared with `hmac.compare_digest`. The key itself is
shown once, when it is made, and is never stored or logged.

A fast hash is enough here, unlike for passwords: slow hashes (bcrypt, scrypt, argon2) make
guessing low-entropy secrets people choose expensive, while a 256-bit random secret cannot be
guessed from its digest at any speed, and a slow hash would cost every request milliseconds.
The one key a person may choose, `RECOFLEET_ADMIN_KEY`, must therefore be long
(`MIN_ADMIN_KEY_LENGTH`) and is stored under the id `env`.
"""

from __future__ import annotations

import abc
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

from sqlalchemy import Column, DateTime, Engine, MetaData, Row, String, Table, select, update
from sqlalchemy.exc import IntegrityError

from services.common.db import make_engine
from services.common.migrations import upgrade

if TYPE_CHECKING:
    from services.common.settings import FleetSettings
    from services.gateway.settings import GatewaySettings

Scope = Literal[
    "events:write",
    "recommendations:read",
    "profiles:read",
    "segments:write",
    "campaigns:write",
    "admin",
]
SCOPES: tuple[Scope, ...] = get_args(Scope)
ADMIN: Scope = "admin"
# What each scope lets a key do (`recofleet keys create --help`, docs/access-keys.md).
SCOPE_MEANINGS: dict[Scope, str] = {
    "events:write": "send events and catalog items (POST /v1/events, PUT /v1/items)",
    "recommendations:read": "read recommendations, similar items and offers",
    "profiles:read": "read member profiles",
    "segments:write": "define segments and tag members (/v1/segments writes, manual tags)",
    "campaigns:write": "create, run, export and report on campaigns (/v1/campaigns)",
    "admin": "every scope, plus models, experiments and access keys",
}

ENV_KEY_ID = "env"
ENV_KEY_NAME = "RECOFLEET_ADMIN_KEY"
MIN_ADMIN_KEY_LENGTH = 32
PLACEHOLDERS = frozenset(
    {"changeme", "change-me", "secret", "password", "default", "test", "admin"}
)
_KEY = re.compile(r"rf_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})")


class AccessKeyError(ValueError):
    """A key cannot be made or seeded as asked (the message says why)."""


@dataclass(frozen=True)
class AccessKey:
    """One key's record: never the key itself, only its digest."""

    id: str
    name: str
    scopes: frozenset[Scope]
    created_at: datetime
    revoked_at: datetime | None = None
    digest: str = field(default="", repr=False)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: Scope) -> bool:
        """Whether this key may do what `scope` covers (`admin` covers every scope)."""
        return self.active and (scope in self.scopes or ADMIN in self.scopes)

    def matches(self, key: str) -> bool:
        """Whether `key` is this record's key (constant time in the digests compared)."""
        return hmac.compare_digest(self.digest, digest(key))

    @property
    def scope_list(self) -> list[Scope]:
        return [scope for scope in SCOPES if scope in self.scopes]


def digest(key: str) -> str:
    """What is stored of a key: the hex SHA-256 of the whole key (see the module docstring)."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def key_id(key: str) -> str:
    """The id of the record a presented key is checked against: its own for a recofleet key
    (`rf_<id>_<secret>`), `env` for anything else (only RECOFLEET_ADMIN_KEY can be that)."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else ENV_KEY_ID


def new_key() -> tuple[str, str]:
    """A fresh key and its id."""
    ident = secrets.token_hex(6)
    return ident, f"rf_{ident}_{secrets.token_urlsafe(32)}"


def parse_scopes(values: Iterable[str]) -> frozenset[Scope]:
    """Scopes from their names; refused unless each is one of SCOPES and there is one at least."""
    scopes: set[Scope] = set()
    for value in values:
        for name in value.replace(",", " ").split():
            if name not in SCOPES:
                raise AccessKeyError(f"unknown scope '{name}': scopes are {', '.join(SCOPES)}")
            scopes.add(name)
    if not scopes:
        raise AccessKeyError(f"a key needs at least one scope: {', '.join(SCOPES)}")
    return frozenset(scopes)


def check_admin_key(value: str) -> str:
    """RECOFLEET_ADMIN_KEY, refused when it is a placeholder or too short to be a secret."""
    if len(value.strip()) < MIN_ADMIN_KEY_LENGTH or value.strip().lower() in PLACEHOLDERS:
        raise AccessKeyError(
            f"RECOFLEET_ADMIN_KEY must be a random secret of at least {MIN_ADMIN_KEY_LENGTH} "
            "characters (for example the output of `openssl rand -hex 32`)"
        )
    if value != value.strip() or any(c.isspace() or not c.isprintable() for c in value):
        raise AccessKeyError("RECOFLEET_ADMIN_KEY must not contain spaces or control characters")
    return value


class AccessKeyStore(abc.ABC):
    """Where the gateway's access keys are kept: records with digests, never keys."""

    @abc.abstractmethod
    def add(self, key: AccessKey) -> bool:
        """Store a new key; False (nothing changed) when its id is taken."""

    @abc.abstractmethod
    def get(self, key_id: str) -> AccessKey | None:
        """The key with this id, revoked or not; None when there is none."""

    @abc.abstractmethod
    def all(self) -> list[AccessKey]:
        """Every key, revoked ones too, oldest first."""

    @abc.abstractmethod
    def revoke(self, key_id: str, at: datetime) -> AccessKey | None:
        """Revoke a key (a key revoked already keeps its first revocation time); the key as
        it is now, or None when there is no such key."""

    @abc.abstractmethod
    def replace(self, key: AccessKey) -> None:
        """Store this key in place of the one with its id (or as a new one)."""

    @abc.abstractmethod
    def close(self) -> None: ...


metadata = MetaData()
access_keys = Table(
    "access_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    # Space-separated, as OAuth writes scopes: a handful of short names.
    Column("scopes", String(500), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)


class SqlAccessKeyStore(AccessKeyStore):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        upgrade(engine, "gateway")

    @classmethod
    def from_url(cls, url: str) -> SqlAccessKeyStore:
        return cls(make_engine(url))

    def add(self, key: AccessKey) -> bool:
        try:
            with self._engine.begin() as conn:
                conn.execute(access_keys.insert().values(**_row(key)))
        except IntegrityError:
            return False
        return True

    def get(self, key_id: str) -> AccessKey | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(access_keys).where(access_keys.c.key_id == key_id)
            ).one_or_none()
        return _key(row) if row else None

    def all(self) -> list[AccessKey]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(access_keys).order_by(access_keys.c.created_at, access_keys.c.key_id)
            ).all()
        return [_key(row) for row in rows]

    def revoke(self, key_id: str, at: datetime) -> AccessKey | None:
        with self._engine.begin() as conn:
            conn.execute(
                update(access_keys)
                .where(access_keys.c.key_id == key_id, access_keys.c.revoked_at.is_(None))
                .values(revoked_at=at)
            )
            row = conn.execute(
                select(access_keys).where(access_keys.c.key_id == key_id)
            ).one_or_none()
        return _key(row) if row else None

    def replace(self, key: AccessKey) -> None:
        with self._engine.begin() as conn:
            conn.execute(access_keys.delete().where(access_keys.c.key_id == key.id))
            conn.execute(access_keys.insert().values(**_row(key)))

    def close(self) -> None:
        self._engine.dispose()


def _row(key: AccessKey) -> dict[str, object]:
    return {
        "key_id": key.id,
        "name": key.name,
        "scopes": " ".join(key.scope_list),
        "digest": key.digest,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }


def _key(row: Row[Any]) -> AccessKey:
    values = row._mapping
    return AccessKey(
        id=values["key_id"],
        name=values["name"],
        scopes=frozenset(s for s in values["scopes"].split() if s in SCOPES),
        created_at=_utc(values["created_at"]),
        revoked_at=_utc(values["revoked_at"]) if values["revoked_at"] else None,
        digest=values["digest"],
    )


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _now() -> datetime:
    # Whole milliseconds: what every database keeps of a timestamp, so a key reads back equal.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def create_key(
    store: AccessKeyStore, scopes: Iterable[str], name: str = ""
) -> tuple[AccessKey, str]:
    """Make, store and return a new key with these scopes: its record and the key, which is
    nowhere else from now on."""
    granted = parse_scopes(scopes)
    for _ in range(5):  # an id taken already: 48 random bits make this vanishingly rare
        ident, key = new_key()
        record = AccessKey(ident, name.strip(), granted, _now(), digest=digest(key))
        if store.add(record):
            return record, key
    raise AccessKeyError("could not find a free key id; try again")


@dataclass(frozen=True)
class Seeded:
    """What start-up did about the admin key."""

    key: AccessKey | None = None  # the admin key stored or confirmed, if any
    new_key: str | None = None  # a key generated just now: to be shown once, then forgotten
    note: str = ""


def seed_env_key(store: AccessKeyStore, value: str) -> Seeded:
    """Make sure RECOFLEET_ADMIN_KEY is an admin key of the store (idempotent, so that every
    gateway replica and `recofleet run` may call it at start).

    A changed value replaces the previous one (rotation: set the new value, restart). A value
    revoked with `recofleet keys revoke` stays revoked: set a new value to get one back.
    """
    check_admin_key(value)
    ident = key_id(value)
    existing = store.get(ident)
    if existing is not None and existing.matches(value):
        if not existing.active:
            return Seeded(
                existing,
                note=f"RECOFLEET_ADMIN_KEY (key '{ident}') was revoked and stays so; "
                "set a new value to have an admin key from the environment",
            )
        if ADMIN not in existing.scopes:
            raise AccessKeyError(
                f"RECOFLEET_ADMIN_KEY is the key '{ident}', which does not have the admin scope"
            )
        return Seeded(existing)
    record = AccessKey(ident, ENV_KEY_NAME, frozenset({ADMIN}), _now(), digest=digest(value))
    if ident != ENV_KEY_ID:
        # A key made by `recofleet keys create`, given to the environment: it is its own record.
        if existing is not None or not store.add(record):
            raise AccessKeyError(
                f"RECOFLEET_ADMIN_KEY looks like the key '{ident}' but is not that key"
            )
        return Seeded(record)
    if existing is None:
        if not store.add(record):  # another replica seeded it a moment ago
            return seed_env_key(store, value)
        return Seeded(record)
    store.replace(record)
    return Seeded(record, note="RECOFLEET_ADMIN_KEY changed: the previous value no longer works")


def seed_admin_key(store: AccessKeyStore, env_value: str | None) -> Seeded:
    """At the start of a one-machine fleet: the environment's admin key when there is one;
    else, when the store has no key at all (a new install), a generated admin key to show once.
    Otherwise nothing: the keys there are the ones to use."""
    if env_value is not None:
        return seed_env_key(store, env_value)
    if store.all():
        return Seeded()
    record, key = create_key(store, [ADMIN], "made at the first start")
    return Seeded(record, new_key=key)


def revoke_key(store: AccessKeyStore, key_id: str) -> AccessKey | None:
    """Revoke a key now (see AccessKeyStore.revoke)."""
    return store.revoke(key_id, _now())


def describe(keys: Sequence[AccessKey]) -> list[list[str]]:
    """Rows of `recofleet keys list`: id, name, scopes, created, revoked (never a secret)."""
    return [
        [
            key.id,
            key.name or "-",
            ",".join(key.scope_list) or "-",
            _when(key.created_at),
            _when(key.revoked_at) if key.revoked_at else "-",
        ]
        for key in keys
    ]


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def open_key_store(fleet: FleetSettings, settings: GatewaySettings) -> SqlAccessKeyStore:
    """The store the gateway and `recofleet keys` share: RECOFLEET_GATEWAY_DATABASE_URL, else
    the SQLite file `gateway.db` in the data dir."""
    return SqlAccessKeyStore.from_url(settings.database_url or fleet.sqlite_url("gateway"))
