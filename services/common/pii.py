"""Emails and phone numbers never leave ingestion in clear: they become keyed hashes.

A keyed hash (HMAC-SHA256 with a secret from settings) keeps the same person the same
token everywhere, so a member whose id is an email stays one member, while nobody
without the secret can test guesses against the tokens.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import unicodedata
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from pydantic import BaseModel

from services.common.settings import FleetSettings

TOKEN_PREFIX = "pii:"
# Letters of any script on either side of the "@" (josé@exämple.de is an address too). A
# match starts only where a run of address characters does (the lookbehind): tried from
# every position of a long run without a domain, the scan was quadratic (40,000 "a"
# before an "@" took 4 s, and held ingestion's lock on the interpreter meanwhile).
# URLs' delimiters (/ = ? # &) end an address's local part, although RFC 5322 allows them:
# else "?email=ann@example.com" or ".../welcome/ann@example.com" became one token with
# the key or the path, and a token that is not the member's.
_ADDRESS = r"\w.!$%'*+^`{|}~-"
EMAIL = re.compile(rf"(?<![{_ADDRESS}])[{_ADDRESS}]+@[\w-]+(?:\.[\w-]+)+")
# What people write between a phone number's digit groups: spaces (non-breaking ones
# become plain ones on the NFKC form, see `_matchable`), brackets, dots and dashes.
SEPARATORS = " ().\u2010\u2012\u2013-"  # "-" last: the classes below read it as itself
# A phone number written as people write them: a "+" prefix or separators between digit
# groups. Bare digit runs are left alone: they are far more often ids (orders, SKUs). A
# "+" and nine digits or more is a number even when a word touches it ("tel_+4477...").
# A number is at most 30 characters long: unbounded, a long run of spaced digits was
# scanned to its end from each of its digits.
PHONE = re.compile(
    rf"(?<![\w+])(?:\+|\(|\b)\d[\d{SEPARATORS}]{{6,28}}\d(?![\w:])"
    rf"|(?<![\d+])\+\d[\d{SEPARATORS}]{{6,28}}\d(?!\d)"
)
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
# Keys named like contact data ("mobilePhone", "phone1", "e-mail", "cell"): their values
# are personal when they look like an address or a number (`_looks_contact`), so that
# "email_opt_in": true or "phone_type": "mobile" keep their meaning.
CONTACT_STEMS = ("email", "phone", "mobile", "msisdn", "whatsapp", "telephone")
# Also the caller's address (Segment's `context.ip`): it names a household as well.
CONTACT_WORDS = frozenset(
    {"tel", "sms", "cell", "fax", "mail", "ip", "ipaddress", "clientip", "userip", "remoteip"}
)
# How a key marks what is below it: not at all, by its name, or as a contact key.
NOT_CONTACT, NAMED_CONTACT, CONTACT = 0, 1, 2
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
PHONE_RUN = re.compile(rf"[\d+{SEPARATORS}]{{10}}")
# A piece of a URL between its delimiters, with an escape or a "+" in it (`_readings`): an
# email or a phone number in a query string or a path is written percent-encoded
# ("?email=ann%40example.com"), a form's spaces as "+" ("?tel=+44+7700+900123"). Pieces
# start where a delimiter ends (the lookbehind), for the reason EMAIL's matches do.
_DELIMITERS = r"\s?&#=/;,\"'<>"
URL_PIECE = re.compile(
    rf"(?<![^{_DELIMITERS}])[^{_DELIMITERS}]*(?:%[0-9A-Fa-f]{{2}}|\+)[^{_DELIMITERS}]*"
)
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

    def scrub(self, value: Any, key: str = "", under_contact: int = NOT_CONTACT) -> Any:
        """A copy of `value` (JSON-like) with every email and phone number replaced by its token.

        Keys are scrubbed like free text. Under a contact key (`email`, `phone`, ...) every
        value becomes a token whatever its shape, however deep (GA4 writes
        `{"email": {"value": ...}}`); under a key only named like one (`mobilePhone`), every
        value that looks like an address or a number.
        """
        contact = max(under_contact, _contact_level(key))
        if isinstance(value, dict):
            return {
                self.scrub_text(str(k)): self.scrub(v, str(k), contact) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.scrub(v, key, contact) for v in value]
        if _contact_value(value, contact):
            text = str(value)
            return text if text.startswith(TOKEN_PREFIX) else self.token(text)
        if isinstance(value, str):
            return self.scrub_text(value, phones=key.lower() not in ID_KEYS)
        return value

    def finds(self, value: Any, key: str = "", under_contact: int = NOT_CONTACT) -> bool:
        """True when `scrub` would change `value`. Pydantic models are read field by field."""
        contact = max(under_contact, _contact_level(key))
        if isinstance(value, BaseModel):
            return self._model_finds(value, contact)
        if isinstance(value, dict):
            return any(
                _text_finds(str(k)) or self.finds(v, str(k), contact) for k, v in value.items()
            )
        if isinstance(value, list):
            return any(self.finds(v, key, contact) for v in value)
        if _contact_value(value, contact):
            return not str(value).startswith(TOKEN_PREFIX)
        if isinstance(value, str):
            return _text_finds(value, phones=key.lower() not in ID_KEYS)
        return False

    def _model_finds(self, model: BaseModel, under_contact: int) -> bool:
        """`finds` over a model's fields, with the common cases (no value, a number or a
        date, a string) decided on the spot: this runs for every event on the fast path."""
        kinds = _field_kinds(type(model))
        for key, value in model.__dict__.items():
            if value is None:
                continue
            contact_level, id_key = kinds[key]
            contact = contact_level if contact_level > under_contact else under_contact
            if not contact and type(value) in _SCALARS:
                continue
            if not contact and isinstance(value, str):
                if _text_finds(value, phones=not id_key):
                    return True
            elif self.finds(value, key, contact):
                return True
        return False

    def scrub_text(self, text: str, phones: bool = True) -> str:
        """`text` with its emails and phone numbers replaced, also where a URL writes them
        percent-encoded; a text with something replaced comes back in its NFKC form."""
        matchable = _matchable(text)
        scrubbed = self._scrub_plain(self._scrub_url(matchable, phones), phones)
        return text if scrubbed == matchable else scrubbed

    def _scrub_plain(self, text: str, phones: bool) -> str:
        if "@" in text:
            text = EMAIL.sub(self._replace(self.token), text)
        if phones and PHONE_RUN.search(text):
            text = PHONE.sub(self._replace(self._phone_token), text)
        return text

    def _scrub_url(self, text: str, phones: bool) -> str:
        if not _may_be_encoded(text, phones):
            return text

        def piece(match: re.Match[str]) -> str:
            original = match.group(0)
            for reading in _readings(original):
                scrubbed = self._scrub_plain(reading, phones)
                if scrubbed != reading:
                    return quote(scrubbed, safe=":")
            return original

        return URL_PIECE.sub(piece, text)

    def _phone_token(self, match: str) -> str:
        return self.token(match) if _is_phone(match) else match

    @staticmethod
    def _replace(make: Callable[[str], str]) -> Callable[[re.Match[str]], str]:
        return lambda match: make(match.group(0))


# Values that hold no text: only under a contact key are they personal.
_SCALARS = frozenset({int, float, bool, datetime})
_PHONE_CHARACTERS = frozenset("+" + SEPARATORS)


@functools.lru_cache(maxsize=4096)
def _contact_level(key: str) -> int:
    """Whether `key` is a contact key, only named like one, or neither.

    Contact keys are compared after `str.lower`, which maps no other character onto the
    ASCII letters of these keys (the Kelvin sign, the one non-ASCII letter that lowers to
    ASCII, lowers to a "k"), so they match exactly as spelled, in any case.
    """
    lowered = key.lower()
    if lowered in CONTACT_KEYS:
        return CONTACT
    word = "".join(c for c in lowered if c.isascii() and c.isalnum())
    if word in CONTACT_WORDS or any(stem in word for stem in CONTACT_STEMS):
        return NAMED_CONTACT
    return NOT_CONTACT


@functools.cache
def _field_kinds(model: type[BaseModel]) -> dict[str, tuple[int, bool]]:
    """Per field of `model`: its contact level, and whether it is an id key."""
    return {name: (_contact_level(name), name.lower() in ID_KEYS) for name in model.model_fields}


def _contact_value(value: Any, contact: int) -> bool:
    """Whether `value` is personal because of the key it stands under."""
    if contact == CONTACT:
        return _personal(value)
    return contact == NAMED_CONTACT and _looks_contact(value)


def _personal(value: Any) -> bool:
    """Whether a value under a contact key is one (no value, or a yes/no, is not)."""
    return not (value is None or value == "" or isinstance(value, bool))


def _looks_contact(value: Any) -> bool:
    """An address, an IP address, or a number of 7 to 15 digits written with nothing but
    separators."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 10**6 <= abs(value) < 10**15
    if not isinstance(value, str):
        return False
    text = _matchable(value).strip()
    if "@" in text or _is_ip(text):
        return True
    digits = sum(c.isdigit() for c in text)
    return (
        7 <= digits <= 15
        and not DATE_LIKE.match(text)
        and all(c.isdigit() or c in _PHONE_CHARACTERS for c in text)
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _matchable(text: str) -> str:
    """What the patterns read: the NFKC form of a non-ASCII text (the fullwidth at sign U+FF20 is an
    "@", a non-breaking space a space, a composed "é" one letter)."""
    return text if text.isascii() else unicodedata.normalize("NFKC", text)


def _may_be_encoded(text: str, phones: bool) -> bool:
    """Whether a URL piece of `text` may hold contact data encoded: a percent escape, or a
    form's "+" among enough digits for a phone number."""
    return "%" in text or ("+" in text and phones and PHONE_RUN.search(text) is not None)


def _readings(piece: str) -> list[str]:
    """What a URL piece may say: percent-decoded (twice if it was encoded twice), then
    with its "+" read as spaces (a form's encoding) if it has any; each as the patterns
    read it."""
    decoded = unquote(piece)
    if "%" in decoded:
        decoded = unquote(decoded)
    readings = [decoded] if decoded != piece else []
    if "+" in decoded:
        readings.append(decoded.replace("+", " "))
    return [_matchable(r) for r in readings]


def _text_finds(text: str, phones: bool = True) -> bool:
    """True when `scrub_text` would change `text` (the same patterns, without replacing)."""
    matchable = _matchable(text)
    if _plain_finds(matchable, phones):
        return True
    if not _may_be_encoded(matchable, phones):
        return False
    return any(
        _plain_finds(reading, phones)
        for match in URL_PIECE.finditer(matchable)
        for reading in _readings(match.group(0))
    )


def _plain_finds(text: str, phones: bool) -> bool:
    if "@" in text and EMAIL.search(text):
        return True
    if phones and PHONE_RUN.search(text):
        return any(_is_phone(match.group(0)) for match in PHONE.finditer(text))
    return False


def _is_phone(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    if not 9 <= digits <= 15 or DATE_LIKE.match(match):
        return False
    return match.startswith("+") or any(c in SEPARATORS for c in match)


def _normalise(value: str) -> str:
    # The same address or number written differently must give the same token.
    value = _matchable(value).strip()
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
