"""Emails and phone numbers become keyed hashes; ids, dates and prices stay as they are."""

from __future__ import annotations

import random
import stat
import uuid

import pytest

from services.common.pii import PiiScrubber, PiiSecretError, check_secret, local_secret

SCRUB = PiiScrubber(b"0123456789abcdef0123456789abcdef")


@pytest.mark.parametrize(
    "text",
    [
        "write to jane.doe@example.com today",
        "call +44 20 7946 0958 please",
        "(555) 123-4567",
        "555-123-4567",
        "tel: 020 7946 0958",
    ],
)
def test_contact_details_in_free_text_are_replaced(text):
    scrubbed = SCRUB.scrub_text(text)
    assert "pii:" in scrubbed
    assert SCRUB.finds({"note": text})
    assert not any(part in scrubbed for part in ("jane", "7946", "123-4567"))


@pytest.mark.parametrize(
    "text",
    [
        "order 5363651234",
        "2026-11-22 10:00:00",
        "2026-11-22T10:00:00Z",
        "sku 85123A qty 12",
        "12.50 GBP",
        "WHITE HANGING HEART T-LIGHT HOLDER",
    ],
)
def test_ids_dates_and_prices_are_left_alone(text):
    assert SCRUB.scrub_text(text) == text


def test_the_same_address_or_number_written_differently_gives_one_token():
    assert SCRUB.token("Jane.Doe@Example.com ") == SCRUB.token("jane.doe@example.com")
    assert SCRUB.token("+44 20 7946 0958") == SCRUB.token("+44-20-7946-0958")
    assert SCRUB.token("jane@example.com") != PiiScrubber(b"x" * 32).token("jane@example.com")


def test_contact_keys_are_hashed_whatever_their_shape_and_ids_keep_their_format():
    scrubbed = SCRUB.scrub(
        {
            "order_id": "2026-000-123-456",
            "member_id": "jane@example.com",
            "context": {"traits": {"phone": 447700900123, "email": "JANE@example.com"}},
        }
    )
    assert scrubbed["order_id"] == "2026-000-123-456"
    assert scrubbed["member_id"] == scrubbed["context"]["traits"]["email"]
    assert scrubbed["context"]["traits"]["phone"].startswith("pii:")


@pytest.mark.parametrize("secret", ["changeme", "secret", "short"])
def test_placeholder_or_short_secrets_are_refused(secret):
    with pytest.raises(PiiSecretError):
        check_secret(secret)


def test_a_local_secret_is_made_once_and_kept_private(tmp_path):
    path = tmp_path / "secrets" / "pii.key"
    first = local_secret(path)
    assert local_secret(path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_events_are_only_scrubbed_when_they_hold_contact_data():
    # Random event ids must not make every batch look suspect (it would cost a full walk).
    ids = [str(uuid.UUID(int=random.Random(n).getrandbits(128))) for n in range(2000)]
    assert not any(SCRUB.finds({"event_id": i}) for i in ids)
    assert not SCRUB.finds(
        {"type": "view", "member_id": "17850", "item_id": "85123A", "timestamp": "2026-11-22"}
    )
    for suspect in (
        {"member_id": "a@b.co"},
        {"note": "+44 7700 900123"},
        {"context": {"Phone": 1}},
        {"q": "+123456789"},
        {"q": "call 555.123.4567"},
        {"context": {"jane@example.com": True}},
        {"member_id": "abc-555-123-4567"},
    ):
        assert SCRUB.finds(suspect), suspect
        assert SCRUB.scrub(suspect) != suspect


def test_keys_are_scrubbed_like_text():
    scrubbed = SCRUB.scrub({"context": {"jane@example.com": 1, "+44 20 7946 0958": 2}})
    assert all(key.startswith("pii:") for key in scrubbed["context"])
