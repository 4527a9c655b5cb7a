"""Coupons and discounts on an order's event, read the same way by every service.

A shop says them where its source puts them: the native event's `context.coupon` and
`context.discount`, Segment's `properties` (or one of its `products`), GA4's parameters
(or one of its `items`); ingestion keeps the last two under `context.source`. Several
codes may come joined by commas (GA4's documentation does so).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from services.common.events import check_member_id

# (fields of the order, its list of lines) per source kept under `context.source`.
SOURCE_FIELDS = (("properties", "products"), ("params", "items"))


def order_fields(context: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every mapping of the order's event that may carry a coupon or a discount: the
    native context, then the source's order fields and each of its lines."""
    yield context
    source = context.get("source")
    if not isinstance(source, Mapping):
        return
    for key, lines in SOURCE_FIELDS:
        fields = source.get(key)
        if not isinstance(fields, Mapping):
            continue
        yield fields
        listed = fields.get(lines)
        if isinstance(listed, list):
            yield from (line for line in listed if isinstance(line, Mapping))


def coupon_key(code: Any) -> str:
    """A code as codes are issued and matched: trimmed and upper case (shops take codes
    in any case). "" for no code, or one no store could keep as an id."""
    if not isinstance(code, str):
        return ""
    key = code.strip().upper()
    # The bounds of any id a store keeps (length, no control characters).
    return key if key and check_member_id(key) is None else ""


def coupon_codes(context: Mapping[str, Any]) -> list[str]:
    """Every coupon code of the order, as `coupon_key` keeps it, once each, order-level
    codes first."""
    found: dict[str, None] = {}
    for fields in order_fields(context):
        coupon = fields.get("coupon")
        if isinstance(coupon, str):
            for part in coupon.split(","):
                key = coupon_key(part)
                if key:
                    found.setdefault(key)
    return list(found)


def discounted(context: Mapping[str, Any]) -> bool:
    """Whether a coupon or a positive discount applied to the order or one of its lines."""
    return bool(coupon_codes(context)) or any(
        _positive(fields.get("discount")) for fields in order_fields(context)
    )


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
