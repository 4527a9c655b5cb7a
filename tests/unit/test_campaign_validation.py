"""What campaigns refuses when a campaign or a rule is saved, because it would break answers
later: an instant no Timestamp holds, an audience profiles cannot read, an offer lifetime
past the calendar. And a campaign stored before these checks does not take the others
down with it."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, update

from services.campaigns.campaign_store import SqlCampaignStore, campaigns
from services.campaigns.desk import CampaignDesk
from services.campaigns.merchandising import InvalidRule, parse_rule
from services.campaigns.model import MAX_OFFER_DAYS, DefinitionError, validated
from services.campaigns.offers import expires_at
from services.campaigns.settings import CampaignsSettings
from services.common.timestamps import EARLIEST, LATEST, storable, timestamp
from services.gateway.schemas import SEGMENT_NAME
from tests.unit.test_campaign_desk import NOW, SECRET, MovableClock, Published, Shop

PIN = {"placement": "home", "action": "pin", "item_id": "85123A", "position": 1}
OFFER = {"discount_percent": 10, "coupon_code": "AUD10"}


def _campaign(**changes: Any) -> dict[str, Any]:
    return {
        "name": "x",
        "status": "active",
        "offer": OFFER,
        "channels": ["onsite"],
        "control_share": 0.0,
        **changes,
    }


# The instants a Timestamp holds


def _readable(at: datetime) -> bool:
    try:
        timestamp(at).ToDatetime(tzinfo=UTC)
    except ValueError:
        return False
    return True


def _accepted(at: datetime) -> bool:
    try:
        storable(at)
    except ValueError:
        return False
    return True


@given(
    st.datetimes(),
    st.sampled_from([None, UTC, timezone(timedelta(hours=-14)), timezone(timedelta(hours=14))]),
)
def test_an_instant_is_accepted_exactly_when_its_stamp_can_be_read_back(
    at: datetime, zone: timezone | None
) -> None:
    at = at.replace(tzinfo=zone)

    assert _accepted(at) == _readable(at)


@pytest.mark.parametrize(
    ("at", "accepted"),
    [
        (EARLIEST, True),
        (LATEST, True),
        (datetime(9999, 12, 31, 23, 59, 59), True),  # naive: UTC
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=1))), True),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))), False),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), False),
        (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=-1))), True),
    ],
)
def test_the_range_is_a_timestamps_once_in_utc(at: datetime, accepted: bool) -> None:
    assert _accepted(at) is accepted


# Campaigns


@pytest.mark.parametrize(
    ("change", "field_path"),
    [
        ({"schedule": {"ends_at": "9999-12-31T23:59:59-14:00"}}, "schedule.ends_at"),
        ({"schedule": {"starts_at": "0001-01-01T00:00:00+01:00"}}, "schedule.starts_at"),
        ({"audience": {"condition": "(("}}, "audience.condition"),
        ({"audience": {"condition": "colour == 'red'"}}, "audience.condition"),
        ({"audience": {"segments": ["../x"]}}, "audience.segments.0"),
        ({"audience": {"segments": ["at-risk", "Big Spenders"]}}, "audience.segments.1"),
        ({"offer": {**OFFER, "expires_after_days": 3_000_000}}, "offer.expires_after_days"),
        (
            {"offer": {**OFFER, "expires_after_days": MAX_OFFER_DAYS + 1}},
            "offer.expires_after_days",
        ),
    ],
)
def test_a_campaign_that_would_break_offers_names_the_field(
    change: dict[str, Any], field_path: str
) -> None:
    with pytest.raises(DefinitionError) as refused:
        validated(_campaign(**change))

    assert str(refused.value).startswith(f"{field_path}: "), str(refused.value)


def test_the_messages_say_what_is_wanted() -> None:
    def says(**change: Any) -> str:
        with pytest.raises(DefinitionError) as refused:
            validated(_campaign(**change))
        return str(refused.value)

    assert "9999-12-31T23:59:59Z" in says(schedule={"ends_at": "9999-12-31T23:59:59-14:00"})
    assert "at 3" in says(audience={"condition": "(("})
    assert "lower-case letters" in says(audience={"segments": ["../x"]})
    assert "3650" in says(offer={**OFFER, "expires_after_days": 3_000_000})


@pytest.mark.parametrize(
    "change",
    [
        {"schedule": {"ends_at": "9999-12-31T23:59:59Z"}},
        {"schedule": {"ends_at": "9999-12-31T23:59:59+14:00"}},
        {"audience": {"condition": "   "}},
        {"audience": {"segments": ["at-risk", "garden_fans-2"], "condition": "frequency >= 1"}},
        {"offer": {**OFFER, "expires_after_days": MAX_OFFER_DAYS}},
    ],
)
def test_the_edges_of_what_is_allowed_are_allowed(change: dict[str, Any]) -> None:
    validated(_campaign(**change))


@pytest.mark.parametrize(
    "name", ["garden-fans", "at-risk", "a", "a" * 64, "a" * 65, "../x", "Garden", "-x", "", "é"]
)
def test_a_campaign_names_segments_as_segments_are_named(name: str) -> None:
    valid = re.fullmatch(SEGMENT_NAME, name) is not None
    try:
        validated(_campaign(audience={"segments": [name]}))
    except DefinitionError:
        assert not valid
    else:
        assert valid


def test_an_offer_at_the_longest_lifetime_expires_within_the_campaigns_end() -> None:
    ends = {"ends_at": "9999-12-31T23:59:59Z"}
    definition = validated(
        _campaign(schedule=ends, offer={**OFFER, "expires_after_days": MAX_OFFER_DAYS})
    )

    lapses = expires_at(definition, NOW)

    assert lapses == NOW + timedelta(days=MAX_OFFER_DAYS)
    assert timestamp(lapses).ToDatetime(tzinfo=UTC) == lapses


# Rules


@pytest.mark.parametrize(
    ("change", "field_path"),
    [
        ({"ends_at": "9999-12-31T23:59:59-01:00"}, "ends_at"),
        ({"starts_at": "0001-01-01T00:00:00+01:00"}, "starts_at"),
    ],
)
def test_a_rule_past_what_a_timestamp_holds_names_the_field(
    change: dict[str, Any], field_path: str
) -> None:
    with pytest.raises(InvalidRule) as refused:
        parse_rule({**PIN, **change})

    assert str(refused.value).startswith(f"{field_path}: must be from 0001-01-01"), str(
        refused.value
    )


def test_a_rule_may_end_at_the_last_instant_in_any_zone_that_keeps_it_in_range() -> None:
    rule = parse_rule({**PIN, "ends_at": "9999-12-31T23:59:59+01:00"})

    assert rule.ends_at == datetime(9999, 12, 31, 22, 59, 59, tzinfo=UTC)


# A campaign stored before these checks


def _stored_before_the_checks(store: SqlCampaignStore, engine: Engine, campaign_id: str) -> None:
    """What an earlier release let through: an end past what a Timestamp holds."""
    broken = validated(_campaign(name="Broken")).model_dump(mode="json")
    broken["schedule"]["ends_at"] = "9999-12-31T23:59:59-14:00"
    store.create(campaign_id, validated(_campaign(name="Broken")), NOW)
    with engine.begin() as conn:
        conn.execute(
            update(campaigns)
            .where(campaigns.c.campaign_id == campaign_id)
            .values(definition=json.dumps(broken))
        )


def test_a_campaign_stored_before_the_checks_is_left_out_not_fatal(engine: Engine) -> None:
    store = SqlCampaignStore(engine, SECRET)
    shop = Shop()
    shop.add("m-1")
    _stored_before_the_checks(store, engine, "c-broken")
    desk = CampaignDesk(store, shop, Published(), MovableClock(NOW), CampaignsSettings())  # type: ignore[arg-type]
    kept = desk.create(_campaign(name="Kept"))

    offered = asyncio.run(desk.offers("m-1", "onsite"))

    assert [c.campaign_id for c in desk.campaigns] == [kept.campaign_id]
    assert [g.exposure.campaign_id for g in offered.given] == [kept.campaign_id]
    with pytest.raises(DefinitionError, match=r"^schedule\.ends_at: "):
        desk.change("c-broken", "activate")
    fixed = desk.replace("c-broken", _campaign(name="Broken, fixed"))
    assert fixed.definition.schedule.ends_at is None
    assert {c.campaign_id for c in desk.campaigns} == {kept.campaign_id, "c-broken"}
    desk.refresh()
    assert {c.campaign_id for c in desk.campaigns} == {kept.campaign_id, "c-broken"}
