"""Emails and phone numbers never leave ingestion in clear: they become keyed hashes.

A keyed hash (HMAC-SHA256 with a secret from settings) keeps the same person the same
token everywhere, so a member whose id is an email stays one member, while nobody
without the secret can test guesses against the tokens.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from services.common.settings import FleetSettings

TOKEN_PREFIX = "pii:"
EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A phone number written as people write them: a "+" prefix or separators between digit
# groups. Bare digit runs are left alone: they are far more often ids (orders, SKUs).
PHONE = re.compile(r"(?<![\w+])(?:\+|\(|\b)\d[\d ().-]{6,}\d(?![\w:])")
DATE_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}")
# Keys whose whole value is personal contact data, whatever it looks like.
CONTACT_KEYS = frozenset(
    {
        "email",
        "email_address",
        "emailaddress",
        "phone",
        "phone_number",
        "phonenumber",
        "mobile",
        "mobile_phone",
        "telephone",
        "tel",
        "sms",
    }
)
# Identifiers shops format freely ("2026-000123456"): only an email-shaped one is personal.
ID_KEYS = frozenset(
    {
        "event_id",
        "item_id",
        "product_id",
        "sku",
        "order_id",
        "session_id",
        "recommendation_id",
        "timestamp",
        "currency",
        "type",
        "category",
    }
)
# Every phone number the scrubber replaces is at least ten characters of digits and
# separators in a row (nine digits and a "+" or a separator): strings without such a run
# are spared the phone pattern, the dearest step.
PHONE_RUN = re.compile(r"[\d ().+-]{10}")
PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "password", "default", "test"})
MIN_SECRET_LENGTH = 16


class PiiSecretError(ValueError):
    """The configured secret is missing, too short or a placeholder."""


def check_secret(secret: str) -> bytes:
    if secret.strip().lower() in PLACEHOLDERS or len(secret) < MIN_SECRET_LENGTH:
        raise PiiSecretError(
            f"the PII secret must be a real secret of at least {MIN_SECRET_LENGTH} characters"
        )
    return secret.encode("utf-8")


def local_secret(path: Path) -> bytes:
    """A secret made once for a one-machine fleet and kept (0600) in its data dir."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return check_secret(path.read_text().strip())


class PiiScrubber:
    """Replaces emails and phone numbers in decoded JSON values by keyed tokens.

    `scrub` and `finds` apply the same rules (`_text_finds`, `_personal`), so that a value
    `finds` calls clean is one `scrub` would leave unchanged: the fast path of ingestion
    checks validated events with `finds` and only scrubs when it answers True.
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def token(self, value: str) -> str:
        digest = hmac.new(self._secret, _normalise(value).encode(), hashlib.sha256).hexdigest()
        return f"{TOKEN_PREFIX}{digest[:32]}"

    def scrub(self, value: Any, key: str = "", under_contact: bool = False) -> Any:
        """A copy of `value` (JSON-like) with every email and phone number replaced by its token.

        Keys are scrubbed like free text. Under a contact key (`email`, `phone`, ...) every
        value becomes a token whatever its shape, however deep (GA4 writes
        `{"email": {"value": ...}}`).
        """
        contact = under_contact or key.lower() in CONTACT_KEYS
        if isinstance(value, dict):
            return {
                self.scrub_text(str(k)): self.scrub(v, str(k), contact) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.scrub(v, key, contact) for v in value]
        if contact and _personal(value):
            text = str(value)
            return text if text.startswith(TOKEN_PREFIX) else self.token(text)
        if isinstance(value, str):
            return self.scrub_text(value, phones=key.lower() not in ID_KEYS)
        return value

    def finds(self, value: Any, key: str = "", under_contact: bool = False) -> bool:
        """True when `scrub` would change `value`. Pydantic models are read field by field."""
        contact = under_contact or key.lower() in CONTACT_KEYS
        if isinstance(value, BaseModel):
            return self._model_finds(value, contact)
        if isinstance(value, dict):
            return any(
                _text_finds(str(k)) or self.finds(v, str(k), contact) for k, v in value.items()
            )
        if isinstance(value, list):
            return any(self.finds(v, key, contact) for v in value)
        if contact and _personal(value):
            return not str(value).startswith(TOKEN_PREFIX)
        if isinstance(value, str):
            return _text_finds(value, phones=key.lower() not in ID_KEYS)
        return False

    def _model_finds(self, model: BaseModel, under_contact: bool) -> bool:
        """`finds` over a model's fields, with the common cases (no value, a number or a
        date, a string) decided on the spot: this runs for every event on the fast path."""
        kinds = _field_kinds(type(model))
        for key, value in model.__dict__.items():
            if value is None:
                continue
            contact_key, id_key = kinds[key]
            contact = under_contact or contact_key
            if not contact and type(value) in _SCALARS:
                continue
            if not contact and isinstance(value, str):
                if _text_finds(value, phones=not id_key):
                    return True
            elif self.finds(value, key, contact):
                return True
        return False

    def scrub_text(self, text: str, phones: bool = True) -> str:
        if "@" in text:
            text = EMAIL.sub(self._replace(self.token), text)
        if phones and PHONE_RUN.search(text):
            text = PHONE.sub(self._replace(self._phone_token), text)
        return text

    def _phone_token(self, match: str) -> str:
        return self.token(match) if _is_phone(match) else match

    @staticmethod
    def _replace(make: Callable[[str], str]) -> Callable[[re.Match[str]], str]:
        return lambda match: make(match.group(0))


# Values that hold no text: only under a contact key are they personal.
_SCALARS = frozenset({int, float, bool, datetime})


@functools.cache
def _field_kinds(model: type[BaseModel]) -> dict[str, tuple[bool, bool]]:
    """Per field of `model`: whether its name is a contact key, and an id key."""
    return {
        name: (name.lower() in CONTACT_KEYS, name.lower() in ID_KEYS) for name in model.model_fields
    }


def _personal(value: Any) -> bool:
    """Whether a value under a contact key is one (no value, or a yes/no, is not).

    Contact keys are compared after `str.lower`, which maps no other character onto the
    ASCII letters of these keys (the Kelvin sign, the one non-ASCII letter that lowers to
    ASCII, lowers to a "k"), so they match exactly as spelled, in any case.
    """
    return not (value is None or value == "" or isinstance(value, bool))


def _text_finds(text: str, phones: bool = True) -> bool:
    """True when `scrub_text` would change `text` (the same patterns, without replacing)."""
    if "@" in text and EMAIL.search(text):
        return True
    if phones and PHONE_RUN.search(text):
        return any(_is_phone(match.group(0)) for match in PHONE.finditer(text))
    return False


def _is_phone(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    if not 9 <= digits <= 15 or DATE_LIKE.match(match):
        return False
    return match.startswith("+") or any(c in " ().-" for c in match)


def _normalise(value: str) -> str:
    # The same address or number written differently must give the same token.
    value = value.strip()
    if "@" in value:
        return value.lower()
    digits = "".join(c for c in value if c.isdigit())
    return f"+{digits}" if value.startswith("+") else digits


def pii_secret(fleet: FleetSettings) -> bytes:
    """The secret PII is hashed with: from settings, or made once for a one-machine fleet.

    Every ingestion replica, and every loader, must hash alike (and every service keys its
    erasure tombstones with it), so a fleet on Kafka must be given one.
    """
    if fleet.pii_secret is not None:
        return check_secret(fleet.pii_secret.get_secret_value())
    if fleet.bus != "local":
        raise SystemExit("RECOFLEET_PII_SECRET must be set when events go to a shared bus")
    return local_secret(fleet.data_dir / "secrets" / "pii.key")
