"""Campaign exposures on the bus: an offer shown or sent to a member, or a member of the
campaign's control group held out from it (services.common.bus.EXPOSURES_TOPIC).

campaigns publishes them when it records an exposure (offers asked for, audiences exported);
analytics reads them to measure each campaign's exposed members against its held-out ones.
One record holds one exposure, keyed by member, so a member's exposures stay in order.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

from services.common.bus import Message

Group = Literal["treatment", "control"]


class Exposure(msgspec.Struct, frozen=True, kw_only=True):
    # Unique per exposure: a record delivered twice is applied once.
    exposure_id: str
    campaign_id: str
    member_id: str
    # email, sms, push or onsite.
    channel: str
    # "treatment": the offer was shown or sent; "control": held out by the control group.
    group: Group
    at: Annotated[datetime, msgspec.Meta(tz=True)]
    offer_id: str = ""
    # The code the member got (empty for the control group).
    coupon_code: str = ""
    tier: str = ""

    def to_message(self) -> Message:
        return Message(self.member_id, msgspec.json.encode(self))


_decoder = msgspec.json.Decoder(Exposure)


def read_exposure(raw: bytes) -> Exposure:
    """An exposure off the bus; msgspec.ValidationError (or DecodeError) when it is not one."""
    exposure = _decoder.decode(raw)
    if exposure.at.tzinfo is not UTC:
        exposure = msgspec.structs.replace(exposure, at=exposure.at.astimezone(UTC))
    return exposure
