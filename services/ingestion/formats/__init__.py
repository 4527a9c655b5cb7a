"""Event formats shops already emit, mapped onto native event dicts.

`translate(fmt, payload)` reads one request body in one format and returns, per source event,
a `Translated`: the native event dicts it became (validated later by ingestion with
`parse_event`), or the name it was ignored under, or why it cannot be mapped. One bad source
event never spoils the others; only a body that cannot be read at all (not JSON, wrong shape)
or an unknown format raises `ValueError`.

Formats (see each module for its mapping table and what it ignores on purpose):
- `native`: one event or `{"events": [...]}`, passed through unchanged;
- `segment`: Segment e-commerce v2 track events (HTTP Tracking API track or batch bodies);
- `ga4`: GA4 ecommerce events (Measurement Protocol bodies, or bare gtag-style events);
- `google_retail`: Google Cloud Retail user events (one, `{"userEvents": [...]}`, or NDJSON).

Every native event made from another format carries a deterministic `event_id` (the source's
own id when it has one, else a hash of the source event), so a retried delivery dedupes.
Each source event becomes at most one native event (with `items[]` for several products).
What the shop sent beyond the mapped fields is kept in the native `context["source"]`; this
package does not scrub personal data from it (another module does).
"""

from __future__ import annotations

from collections.abc import Callable

from services.common.events import split_batch
from services.ingestion.formats import ga4, google_retail, segment
from services.ingestion.formats.common import MappingError, Translated

__all__ = ["FORMATS", "MappingError", "Translated", "translate"]

FORMATS = ("native", "segment", "ga4", "google_retail")


def translate(fmt: str, payload: bytes) -> list[Translated]:
    """The source events of `payload` in format `fmt`, each mapped onto native event dicts.

    `fmt` is one of `FORMATS`, matched ignoring case, with `-` read as `_` and an empty name
    meaning `native`. Raises `ValueError` with a readable message for an unknown format or a
    body that cannot be read as that format.
    """
    name = (fmt or "native").strip().lower().replace("-", "_")
    translator = _TRANSLATORS.get(name)
    if translator is None:
        raise ValueError(f"unknown event format '{fmt}'; supported: {', '.join(FORMATS)}")
    return translator(payload)


def _native(payload: bytes) -> list[Translated]:
    results = []
    for index, raw in enumerate(split_batch(payload)):
        if isinstance(raw, dict):
            own_id = raw.get("event_id")
            source_id = own_id if isinstance(own_id, str) else ""
            results.append(Translated(index, source_id, [raw]))
        else:
            reason = f"an event must be a JSON object, got {type(raw).__name__}"
            results.append(Translated(index, "", [], error=reason))
    return results


_TRANSLATORS: dict[str, Callable[[bytes], list[Translated]]] = {
    "native": _native,
    "segment": segment.translate,
    "ga4": ga4.translate,
    "google_retail": google_retail.translate,
}
