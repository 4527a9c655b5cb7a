"""Emails and phone numbers never leave ingestion in clear: they become keyed hashes.

A keyed hash (HMAC-SHA256 with a secret from settings) keeps the same person the same
token everywhere, so a member whose id is an email stays one member, while nobody
without the secret can test guesses against the tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
# Cheap screens over a raw body: a body that passes none of them holds no email or phone
# number, which spares the walk through every field of every event on the hot path.
SUSPECT_KEY = re.compile(
    rb'"(?:' + b"|".join(k.encode() for k in sorted(CONTACT_KEYS)) + rb')"', re.IGNORECASE
)
# A run of digits and separators standing on its own: one glued to letters is an
# identifier (a UUID's last group, a SKU), not a phone number.
DIGIT_RUN = re.compile(rb"(?<![0-9A-Za-z-])[0-9 ().+-]{10,}(?![0-9A-Za-z-])")
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
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def token(self, value: str) -> str:
        digest = hmac.new(self._secret, _normalise(value).encode(), hashlib.sha256).hexdigest()
        return f"{TOKEN_PREFIX}{digest[:32]}"

    @staticmethod
    def may_contain(raw: bytes) -> bool:
        """False only when `raw` (a JSON body) certainly holds no email or phone number."""
        if b"@" in raw or SUSPECT_KEY.search(raw):
            return True
        return any(sum(c in b"0123456789" for c in run) >= 9 for run in DIGIT_RUN.findall(raw))

    def scrub(self, value: Any, key: str = "") -> Any:
        """A copy of `value` (JSON-like) with every email and phone number replaced by its token."""
        if isinstance(value, dict):
            return {k: self.scrub(v, str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v, key) for v in value]
        if key.lower() in CONTACT_KEYS and value not in (None, "", True, False):
            text = str(value)
            return text if text.startswith(TOKEN_PREFIX) else self.token(text)
        if isinstance(value, str):
            return self.scrub_text(value, phones=key.lower() not in ID_KEYS)
        return value

    def scrub_text(self, text: str, phones: bool = True) -> str:
        if "@" in text:
            text = EMAIL.sub(self._replace(self.token), text)
        if phones and sum(c.isdigit() for c in text) >= 9:
            text = PHONE.sub(self._replace(self._phone_token), text)
        return text

    def _phone_token(self, match: str) -> str:
        digits = sum(c.isdigit() for c in match)
        if not 9 <= digits <= 15 or DATE_LIKE.match(match):
            return match
        if not (match.startswith("+") or any(c in " ().-" for c in match)):
            return match
        return self.token(match)

    @staticmethod
    def _replace(make: Callable[[str], str]) -> Callable[[re.Match[str]], str]:
        return lambda match: make(match.group(0))


def _normalise(value: str) -> str:
    # The same address or number written differently must give the same token.
    value = value.strip()
    if "@" in value:
        return value.lower()
    digits = "".join(c for c in value if c.isdigit())
    return f"+{digits}" if value.startswith("+") else digits
