"""Event formats shops already emit, mapped onto native event dicts.

`translate(fmt, payload)` reads one request body in one format and returns, per source event,
a `Translated`: the native event dicts it became (validated later by ingestion with
`parse_event`), or the name it was ignored under, or why it cannot be mapped. One bad source
event never spoils the others; only a body that cannot be read at all (not JSON, wrong shape)
or an unknown format raises `ValueError`. `count(fmt, payload)` tells how many source events
a body holds before any is decoded, so that a body past the limit costs no work.

Formats (see each module for its mapping table and what it ignores on purpose):
- `native`: one event or `{"events": [...]}`, passed through unchanged;
- `segment`: Segment e-commerce v2 track events (HTTP Tracking API track or batch bodies);
- `ga4`: GA4 ecommerce events (Measurement Protocol bodies, or bare gtag-style events);
- `google_retail`: Google Cloud Retail user events (one, `{"userEvents": [...]}`, or NDJSON).

Source events also say who their sender is (`Translated.identity`): a known member seen
with an anonymous id (Segment identify/alias or any call with both ids, GA4 user_id with
client_id, Retail userInfo.userId with visitorId), and consent where the format carries it
(Segment Consent Management, GA4 `consent`); ingestion turns them into member commands
(docs/identity.md), also for source events it ignores or rejects as events.

Every native event made from another format carries a deterministic `event_id` (the source's
own id when it has one, else a hash of the source event), so a retried delivery dedupes.
Each source event becomes at most one native event (with `items[]` for several products).
What the shop sent beyond the mapped fields is kept in the native `context["source"]`; this
package does not scrub personal data from it: ingestion scrubs the decoded body first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common.events import entries_of
from services.ingestion.formats import ga4, google_retail, segment
from services.ingestion.formats.common import (
    Identity,
    MappingError,
    Translated,
    decode_json,
    entry_count,
)

__all__ = [
    "FORMATS",
    "Identity",
    "MappingError",
    "Translated",
    "canonical",
    "count",
    "read",
    "translate",
    "translate_body",
]

FORMATS = ("native", "segment", "ga4", "google_retail")


def read(fmt: str, payload: bytes) -> Any:
    """The decoded body of `payload` in format `fmt`, ready for `translate_body`.

    Ingestion scrubs personal data from what this returns before it translates, so that
    no mapping, and no message about a value that cannot be mapped, sees it in clear.
    Raises `ValueError` for an unknown format or a body that cannot be read at all.
    """
    return _format(fmt).read(payload)


def translate_body(fmt: str, body: Any, received: datetime | None = None) -> list[Translated]:
    """The source events of a decoded `body` in format `fmt`, each mapped onto native dicts;
    `received` (when ingestion took the body) lets a format correct its sender's clock."""
    return _format(fmt).translate(body, received)


def count(fmt: str, payload: bytes) -> int | None:
    """How many source events `payload` holds in format `fmt`, told from the body's outline
    without decoding any of them; None when the body cannot be counted so (not JSON, not
    shaped like this format), which `read` then refuses with its reason. Raises
    `ValueError` for an unknown format.
    """
    return _format(fmt).count(payload)


def translate(fmt: str, payload: bytes) -> list[Translated]:
    """The source events of `payload` in format `fmt`, each mapped onto native event dicts.

    `fmt` is one of `FORMATS`, matched ignoring case, with `-` read as `_` and an empty name
    meaning `native`. Raises `ValueError` with a readable message for an unknown format or a
    body that cannot be read as that format.
    """
    return translate_body(fmt, read(fmt, payload))


def canonical(fmt: str) -> str:
    """The name of format `fmt` as `FORMATS` spells it (case and `-` aside; empty is native)."""
    return (fmt or "native").strip().lower().replace("-", "_")


@dataclass(frozen=True)
class _Format:
    read: Callable[[bytes], Any]
    translate: Callable[[Any, datetime | None], list[Translated]]
    count: Callable[[bytes], int | None]


def _format(fmt: str) -> _Format:
    handlers = _FORMATS.get(canonical(fmt))
    if handlers is None:
        raise ValueError(f"unknown event format '{fmt}'; supported: {', '.join(FORMATS)}")
    return handlers


def _native(body: Any, received: datetime | None = None) -> list[Translated]:
    results = []
    for index, raw in enumerate(entries_of(body)):
        if isinstance(raw, dict):
            own_id = raw.get("event_id")
            source_id = own_id if isinstance(own_id, str) else ""
            results.append(Translated(index, source_id, [raw]))
        else:
            reason = f"an event must be a JSON object, got {type(raw).__name__}"
            results.append(Translated(index, "", [], error=reason))
    return results


def _native_count(payload: bytes) -> int | None:
    return entry_count(payload, ("events",))


_FORMATS: dict[str, _Format] = {
    "native": _Format(decode_json, _native, _native_count),
    "segment": _Format(segment.read, segment.translate, segment.count),
    # Their senders' clocks are taken as they are: neither format says when it was sent.
    "ga4": _Format(ga4.read, lambda body, _: ga4.translate(body), ga4.count),
    "google_retail": _Format(
        google_retail.read, lambda body, _: google_retail.translate(body), google_retail.count
    ),
}
