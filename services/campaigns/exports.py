"""An exported audience as CSV rows: the same columns from the CLI and from the gateway."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from services.gen.recofleet.campaigns.v1 import campaigns_pb2

EXPORT_COLUMNS = (
    "member_id",
    "channel",
    "coupon_code",
    "title",
    "description",
    "discount_percent",
    "discount_amount",
    "minimum_spend",
    "tier",
    "expires_at",
    "send_after",
)


def export_row(row: campaigns_pb2.ExportRow) -> tuple[Any, ...]:
    """One member's row, in EXPORT_COLUMNS order (instants in ISO 8601, empty when unset)."""

    def when(name: str) -> str:
        if not row.HasField(name):  # type: ignore[arg-type]
            return ""
        return str(getattr(row, name).ToDatetime(tzinfo=UTC).isoformat())

    return (
        row.member_id,
        row.channel,
        row.coupon_code,
        row.title,
        row.description,
        row.discount_percent,
        row.discount_amount,
        row.minimum_spend,
        row.tier,
        when("expires_at"),
        when("send_after"),
    )
