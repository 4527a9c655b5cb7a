"""Access keys: the store (a conformance suite, on SQLite and PostgreSQL through the `engine`
fixture of tests/unit/conftest.py), what is kept of a key, scopes, seeding, the verifier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from services.gateway.access_keys import (
    ENV_KEY_ID,
    SCOPES,
    AccessKey,
    AccessKeyError,
    SqlAccessKeyStore,
    access_keys,
    check_admin_key,
    create_key,
    digest,
    key_id,
    new_key,
    parse_scopes,
    revoke_key,
    seed_admin_key,
    seed_env_key,
)
from services.gateway.auth import KeyVerifier

ADMIN_VALUE = "an-admin-key-of-more-than-32-characters-0123"
T0 = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)


@pytest.fixture
def store(engine: Engine) -> SqlAccessKeyStore:
    return SqlAccessKeyStore(engine)


def record(ident: str = "0123456789ab", *scopes: str, at: datetime = T0) -> AccessKey:
    return AccessKey(
        ident, "a name", parse_scopes(scopes or ["profiles:read"]), at, digest="d" * 64
    )


# --- the store: one suite, every database ------------------------------------------------


def test_a_key_reads_back_as_it_was_stored(store: SqlAccessKeyStore):
    stored = record("0123456789ab", "events:write", "profiles:read")
    assert store.add(stored)
    found = store.get("0123456789ab")
    assert found == stored
    assert found is not None and found.created_at.tzinfo is not None
    assert store.get("ba9876543210") is None


def test_an_id_is_stored_once(store: SqlAccessKeyStore):
    assert store.add(record("0123456789ab", "admin"))
    assert not store.add(record("0123456789ab", "profiles:read"))
    found = store.get("0123456789ab")
    assert found is not None and found.scopes == {"admin"}


def test_all_lists_every_key_oldest_first_revoked_ones_too(store: SqlAccessKeyStore):
    later = record("bbbbbbbbbbbb", at=T0 + timedelta(seconds=5))
    store.add(later)
    store.add(record("aaaaaaaaaaaa"))
    store.revoke("bbbbbbbbbbbb", T0 + timedelta(seconds=9))
    assert [k.id for k in store.all()] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert [k.active for k in store.all()] == [True, False]


def test_revoking_keeps_the_first_revocation_time(store: SqlAccessKeyStore):
    store.add(record())
    first = store.revoke("0123456789ab", T0 + timedelta(hours=1))
    again = store.revoke("0123456789ab", T0 + timedelta(hours=2))
    assert first is not None and first.revoked_at == T0 + timedelta(hours=1)
    assert again == first and not again.active
    assert store.revoke("no-such-key", T0) is None


def test_replace_puts_a_key_in_place_of_the_one_with_its_id(store: SqlAccessKeyStore):
    store.add(record(ENV_KEY_ID, "admin"))
    store.revoke(ENV_KEY_ID, T0)
    fresh = AccessKey(ENV_KEY_ID, "other", frozenset({"admin"}), T0, digest="e" * 64)
    store.replace(fresh)
    assert store.get(ENV_KEY_ID) == fresh and len(store.all()) == 1


def test_a_second_store_on_the_same_database_sees_the_keys(engine: Engine):
    record_, key = create_key(SqlAccessKeyStore(engine), ["admin"], "first start")
    found = SqlAccessKeyStore(engine).get(record_.id)
    assert found is not None and found.matches(key)


def test_only_a_digest_of_the_key_is_stored(engine: Engine):
    store = SqlAccessKeyStore(engine)
    _, key = create_key(store, ["admin"], "kept as a digest")
    seed_env_key(store, ADMIN_VALUE)
    with engine.connect() as conn:
        stored = " ".join(str(value) for row in conn.execute(select(access_keys)) for value in row)
    for secret in (key, key.split("_", 2)[2], ADMIN_VALUE):
        assert secret not in stored
    assert digest(key) in stored and digest(ADMIN_VALUE) in stored


# --- what a key is -----------------------------------------------------------------------


def test_new_keys_are_random_and_carry_their_id():
    made = {new_key() for _ in range(200)}
    assert len({key for _, key in made}) == 200
    for ident, key in made:
        prefix, found_id, secret = key.split("_", 2)
        assert (prefix, found_id) == ("rf", ident) and len(secret) >= 43
        assert key_id(key) == ident


def test_keys_that_are_not_recofleet_keys_are_checked_against_the_env_key():
    assert key_id(ADMIN_VALUE) == ENV_KEY_ID
    assert key_id("rf_0123456789ab") == ENV_KEY_ID
    assert key_id("rf_NOT-HEX-HERE_" + "x" * 43) == ENV_KEY_ID


def test_a_record_matches_its_key_only():
    _, key = new_key()
    stored = AccessKey("x", "", frozenset({"admin"}), T0, digest=digest(key))
    assert stored.matches(key)
    assert not stored.matches(key[:-1])
    assert not stored.matches(key + "x")
    assert digest(key) != key and len(digest(key)) == 64
    assert key not in repr(stored) and digest(key) not in repr(stored)


def test_admin_covers_every_scope_and_a_revoked_key_none():
    admin = record("a" * 12, "admin")
    assert all(admin.allows(scope) for scope in SCOPES)
    reader = record("b" * 12, "profiles:read")
    assert reader.allows("profiles:read")
    assert not reader.allows("events:write") and not reader.allows("admin")
    gone = AccessKey("c" * 12, "", frozenset({"admin"}), T0, revoked_at=T0)
    assert not any(gone.allows(scope) for scope in SCOPES)


def test_scopes_are_the_known_ones_and_at_least_one():
    assert parse_scopes(["events:write,profiles:read", "admin"]) == {
        "events:write",
        "profiles:read",
        "admin",
    }
    with pytest.raises(AccessKeyError, match="unknown scope 'events:read'"):
        parse_scopes(["events:read"])
    with pytest.raises(AccessKeyError, match="at least one scope"):
        parse_scopes([])


# --- seeding -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["changeme", "admin", "short-but-not-a-placeholder", " " * 40])
def test_placeholders_and_short_admin_keys_are_refused(value: str):
    with pytest.raises(AccessKeyError, match="at least 32 characters"):
        check_admin_key(value)


def test_an_admin_key_with_spaces_is_refused():
    with pytest.raises(AccessKeyError, match="spaces"):
        check_admin_key("an admin key with spaces in it, long enough")


def test_the_env_key_is_seeded_once_and_works(store: SqlAccessKeyStore):
    first = seed_env_key(store, ADMIN_VALUE)
    again = seed_env_key(store, ADMIN_VALUE)
    assert first.key == again.key and first.new_key is None
    assert len(store.all()) == 1
    stored = store.get(ENV_KEY_ID)
    assert stored is not None and stored.matches(ADMIN_VALUE) and stored.allows("admin")


def test_a_changed_env_key_replaces_the_previous_one(store: SqlAccessKeyStore):
    seed_env_key(store, ADMIN_VALUE)
    rotated = seed_env_key(store, ADMIN_VALUE + "-rotated")
    assert "changed" in rotated.note
    stored = store.get(ENV_KEY_ID)
    assert stored is not None
    assert stored.matches(ADMIN_VALUE + "-rotated") and not stored.matches(ADMIN_VALUE)


def test_a_revoked_env_key_stays_revoked_until_its_value_changes(store: SqlAccessKeyStore):
    seed_env_key(store, ADMIN_VALUE)
    revoke_key(store, ENV_KEY_ID)
    kept = seed_env_key(store, ADMIN_VALUE)
    assert "revoked" in kept.note
    assert kept.key is not None and not kept.key.active
    renewed = seed_env_key(store, ADMIN_VALUE + "-new")
    assert renewed.key is not None and renewed.key.active


def test_a_recofleet_key_given_as_env_key_is_its_own_record(store: SqlAccessKeyStore):
    made, key = create_key(store, ["admin"], "made by the CLI")
    assert seed_env_key(store, key).key == made
    _, other = new_key()
    assert seed_env_key(store, other).key is not None  # new: stored under its own id
    assert len(store.all()) == 2
    reader, reader_key = create_key(store, ["profiles:read"])
    with pytest.raises(AccessKeyError, match="admin scope"):
        seed_env_key(store, reader_key)
    forged = f"rf_{reader.id}_{'x' * 43}"
    with pytest.raises(AccessKeyError, match="is not that key"):
        seed_env_key(store, forged)


def test_a_new_install_gets_one_admin_key_shown_once(store: SqlAccessKeyStore):
    first = seed_admin_key(store, None)
    assert first.new_key and first.key is not None and first.key.matches(first.new_key)
    assert first.key.scopes == {"admin"}
    later = seed_admin_key(store, None)
    assert later.new_key is None and later.key is None
    # Revoking every key does not make a new install: no key works until one is made.
    revoke_key(store, first.key.id)
    assert seed_admin_key(store, None).new_key is None


def test_with_an_env_key_nothing_is_generated(store: SqlAccessKeyStore):
    seeded = seed_admin_key(store, ADMIN_VALUE)
    assert seeded.new_key is None and [k.id for k in store.all()] == [ENV_KEY_ID]


# --- the verifier: the store, remembered briefly -----------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingStore(SqlAccessKeyStore):
    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.lookups = 0

    def get(self, key_id: str) -> AccessKey | None:
        self.lookups += 1
        return super().get(key_id)


async def test_a_revoked_key_is_refused_once_the_remembered_answer_expires(engine: Engine):
    store, clock = CountingStore(engine), Clock()
    verifier = KeyVerifier(store, cache_s=0.5, clock=clock)
    made, key = create_key(store, ["profiles:read"])
    assert await verifier.verify(key) == made
    revoke_key(store, made.id)
    clock.now += 0.4
    assert await verifier.verify(key) == made  # remembered: within the half second
    clock.now += 0.2
    assert await verifier.verify(key) is None
    assert store.lookups == 2


async def test_wrong_keys_are_refused_and_remembered_too(engine: Engine):
    store, clock = CountingStore(engine), Clock()
    verifier = KeyVerifier(store, clock=clock, max_cached=3)
    _, key = create_key(store, ["admin"])
    wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    assert await verifier.verify(wrong) is None
    assert await verifier.verify(wrong) is None
    assert store.lookups == 1
    assert await verifier.verify("anything else at all") is None
    # At most max_cached answers are kept: the oldest go first.
    for n in range(5):
        await verifier.verify(f"made-up-{n}")
    assert len(verifier._cache) == 3
