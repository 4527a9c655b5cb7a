"""Campaigns: definitions and templates, offers with caps, consent, schedules, control groups
and budgets, exports, and redemptions counted once. The store runs on SQLite and PostgreSQL;
profiles is faked at the edge (members with their portrait values)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine

from services.campaigns.campaign_store import Planned, SqlCampaignStore
from services.campaigns.desk import AudienceError, CampaignDesk, Matched, NotAllowed
from services.campaigns.model import Audience, DefinitionError, FrequencyCap, validated
from services.campaigns.offers import Member, in_control
from services.campaigns.settings import CampaignsSettings, WelcomeOffer
from services.campaigns.templates import TEMPLATES, from_template
from services.common.bus import CAMPAIGN_MESSAGES_TOPIC, EXPOSURES_TOPIC, Message
from services.common.coupons import coupon_codes
from services.common.events import Event
from services.common.exposures import read_exposure
from services.common.members import Erase
from services.profiles.conditions import parse

NOW = datetime(2027, 4, 6, 10, 0, tzinfo=UTC)
SECRET = b"k" * 32
CONSENT_ALL = {"personalization": True, "email": True, "sms": True, "push": True, "onsite": True}


class MovableClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@dataclass
class Shop:
    """Members as profiles would portray them: their condition values and consent."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    consent: dict[str, dict[str, bool]] = field(default_factory=dict)
    segments: dict[str, set[str]] = field(default_factory=dict)
    # Segments profiles no longer has: an audience naming one is refused, as profiles does.
    deleted: set[str] = field(default_factory=set)

    def add(self, member_id: str, segments: Sequence[str] = (), **values: Any) -> None:
        self.values[member_id] = {"frequency": 1, "m_score": None, "monetary": 0.0, **values}
        self.consent[member_id] = dict(CONSENT_ALL)
        self.segments[member_id] = set(segments)

    def member(self, member_id: str) -> Member:
        found = self.values[member_id]
        return Member(
            member_id,
            True,
            self.consent[member_id],
            m_score=found["m_score"],
            spend=found["monetary"],
        )

    def holds(self, member_id: str, audience: Audience) -> bool:
        in_segment = not audience.segments or bool(
            self.segments[member_id] & set(audience.segments)
        )
        condition = not audience.condition or parse(audience.condition)(self.values[member_id])
        return in_segment and condition

    async def match(self, member_id: str, audiences: Sequence[Audience]) -> Matched:
        for n, audience in enumerate(audiences):
            for name in set(audience.segments) & self.deleted:
                raise AudienceError(f"audience.audiences[{n}].segments: no segment {name!r}")
        if member_id not in self.values:
            unknown = Member(member_id, False, dict(CONSENT_ALL))
            return Matched(False, unknown, [False] * len(audiences))
        hits = [self.holds(member_id, a) for a in audiences]
        return Matched(True, self.member(member_id), hits)

    async def count(self, audience: Audience) -> tuple[int, dict[str, int], datetime]:
        inside = [m for m in sorted(self.values) if self.holds(m, audience)]
        channels = ("email", "sms", "push", "onsite")
        by_channel = {c: sum(self.consent[m][c] for m in inside) for c in channels}
        return len(inside), by_channel, NOW

    async def pages(self, audience: Audience, channel: str) -> AsyncIterator[list[Member]]:
        inside = [
            self.member(m)
            for m in sorted(self.values)
            if self.holds(m, audience) and self.consent[m].get(channel, False)
        ]
        for start in range(0, len(inside), 3):
            yield inside[start : start + 3]


class Published:
    def __init__(self) -> None:
        self.records: list[tuple[str, Message]] = []

    def __call__(self, topic: str, messages: Sequence[Message]) -> None:
        self.records.extend((topic, m) for m in messages)

    def on(self, topic: str) -> list[Message]:
        return [m for t, m in self.records if t == topic]


@pytest.fixture
def store(engine: Engine) -> SqlCampaignStore:
    return SqlCampaignStore(engine, SECRET)


@dataclass
class World:
    desk: CampaignDesk
    shop: Shop
    clock: MovableClock
    published: Published
    store: SqlCampaignStore


def _world(store: SqlCampaignStore, **settings: Any) -> World:
    shop, clock, published = Shop(), MovableClock(NOW), Published()
    desk = CampaignDesk(store, shop, published, clock, CampaignsSettings(**settings))  # type: ignore[arg-type]
    return World(desk, shop, clock, published, store)


@pytest.fixture
def world(store: SqlCampaignStore) -> World:
    return _world(store)


def _campaign(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "Spring garden",
        "status": "active",
        "offer": {"discount_percent": 15, "coupon": "fixed", "coupon_code": "SPRING15"},
        "channels": ["email", "onsite"],
        "control_share": 0.0,
    }
    return {**base, **changes}


def _offers(world: World, member_id: str, channel: str = "") -> list[Any]:
    return asyncio.run(world.desk.offers(member_id, channel)).given


def _purchase(member_id: str, order_id: str, value: float, **context: Any) -> Event:
    return Event.model_validate(
        {
            "event_id": f"e-{order_id}-{len(context)}-{value}",
            "type": "purchase",
            "member_id": member_id,
            "timestamp": NOW.isoformat(),
            "order_id": order_id,
            "revenue": value,
            "items": [{"item_id": "rake", "price": value, "quantity": 1}],
            "context": context,
        }
    )


# Definitions and templates


@pytest.mark.parametrize(
    ("change", "field_path"),
    [
        ({"offer": {"discount_percent": 150, "coupon_code": "X15X"}}, "offer.discount_percent"),
        ({"channels": []}, "channels"),
        ({"channels": ["fax"]}, "channels.0"),
        ({"schedule": {"timezone": "Mars/Olympus"}}, "schedule.timezone"),
        (
            {"schedule": {"seasons": [{"start": "02-30", "end": "03-31"}]}},
            "schedule.seasons.0.start",
        ),
        ({"control_share": 0.9}, "control_share"),
        ({"offer": {"discount_percent": 10}}, "offer"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_an_invalid_campaign_names_the_wrong_field(change: dict[str, Any], field_path: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        validated(_campaign(**change))
    assert str(caught.value).startswith(f"{field_path}:"), str(caught.value)


def test_every_template_makes_a_campaign_from_a_name_alone() -> None:
    for name in TEMPLATES:
        body: dict[str, Any] = {"name": f"My {name}"}
        if name == "seasonal":
            body["category"] = "garden"
        made = from_template(name, body)
        assert made.name == f"My {name}"
        assert made.status == "active"


def test_the_seasonal_template_targets_past_buyers_of_its_category_weekly_by_email() -> None:
    made = from_template("seasonal", {"name": "Spring garden", "category": "garden"})

    assert made.audience.condition == "days_since_purchase['garden'] <= 365"
    assert made.offer.discount_percent == 15
    assert made.channels == ["email"]
    assert made.frequency_caps["email"] == FrequencyCap(max=1, per_days=7)
    with pytest.raises(DefinitionError, match=r"^category:"):
        from_template("seasonal", {"name": "No category"})


def test_a_template_body_overrides_only_what_it_names() -> None:
    made = from_template("spend-tier", {"name": "Tiers", "offer": {"expires_after_days": 3}})

    assert made.offer.expires_after_days == 3
    assert [t.name for t in made.offer.tiers] == ["bronze", "silver", "gold"]


def test_the_welcome_offer_words_follow_its_settings(world: World) -> None:
    world.desk.seed_welcome(WelcomeOffer(discount_percent=25, coupon_code="HELLO25"))
    world.shop.add("newbie", frequency=0)

    [offer] = _offers(world, "newbie", "onsite")

    assert offer.definition.title() == "Welcome: 25% off your first order"
    assert offer.exposure.coupon_code == "HELLO25"
    # A visitor never seen gets it too; a member who ordered does not.
    assert _offers(world, "first-visit", "onsite")
    world.shop.add("regular", frequency=3)
    assert not _offers(world, "regular", "onsite")


def test_the_welcome_offer_keeps_to_its_channels_and_can_be_switched_off(world: World) -> None:
    world.desk.seed_welcome(WelcomeOffer(channels=["email"]))
    world.shop.add("newbie", frequency=0)
    assert [g.exposure.channel for g in _offers(world, "newbie")] == ["email"]
    assert not _offers(world, "newbie", "onsite")

    world.desk.seed_welcome(WelcomeOffer(enabled=False))

    assert not _offers(world, "newbie", "email")
    assert world.desk.get("welcome").status == "paused"


# Offers: consent, control group, caps, schedule, budget


def test_an_eligible_member_gets_the_offer_and_the_exposure_is_published(world: World) -> None:
    world.desk.create(_campaign())
    world.shop.add("m-1")

    [offer] = _offers(world, "m-1", "email")

    assert offer.exposure.coupon_code == "SPRING15"
    [record] = world.published.on(EXPOSURES_TOPIC)
    exposure = read_exposure(record.value)
    assert (exposure.member_id, exposure.channel, exposure.group) == ("m-1", "email", "treatment")


def test_a_member_who_withdrew_consent_for_a_channel_gets_nothing_on_it(world: World) -> None:
    created = world.desk.create(_campaign())
    world.shop.add("m-1")
    world.shop.consent["m-1"]["email"] = False

    offered = asyncio.run(world.desk.offers("m-1", "email"))

    assert offered.given == []
    assert offered.withheld[created.campaign_id] == "no consent for email"
    assert _offers(world, "m-1", "onsite")


def test_a_campaign_whose_segment_is_gone_is_withheld_and_the_others_still_offered(
    world: World,
) -> None:
    spring = world.desk.create(_campaign())
    vip = world.desk.create(
        _campaign(
            name="VIP",
            audience={"segments": ["vip"]},
            offer={"discount_percent": 20, "coupon": "fixed", "coupon_code": "VIP20"},
        )
    )
    world.shop.add("m-1", segments=["vip"])
    world.shop.deleted.add("vip")

    offered = asyncio.run(world.desk.offers("m-1", "email"))

    assert [g.draft.campaign.campaign_id for g in offered.given] == [spring.campaign_id]
    assert offered.withheld[vip.campaign_id] == "audience refused: segments: no segment 'vip'"


def test_a_member_gets_nothing_when_every_live_campaigns_audience_is_refused(
    world: World,
) -> None:
    vip = world.desk.create(_campaign(audience={"segments": ["vip"]}))
    world.shop.add("m-1", segments=["vip"])
    world.shop.deleted.add("vip")

    offered = asyncio.run(world.desk.offers("m-1", "email"))

    assert offered.given == [] and list(offered.withheld) == [vip.campaign_id]


def test_the_control_group_is_held_out_and_recorded_once(world: World) -> None:
    created = world.desk.create(_campaign(control_share=0.5))
    members = [f"m-{n}" for n in range(40)]
    for member_id in members:
        world.shop.add(member_id)
    held = {m for m in members if in_control(m, created.campaign_id, 0.5)}
    assert 8 < len(held) < 32

    for _ in range(2):
        got = {m for m in members if _offers(world, m, "onsite")}

    assert got == set(members) - held
    control = [read_exposure(r.value) for r in world.published.on(EXPOSURES_TOPIC)]
    assert sorted(e.member_id for e in control if e.group == "control") == sorted(held)


def test_a_campaign_cap_holds_per_channel_and_lapses_with_its_window(world: World) -> None:
    world.desk.create(_campaign(frequency_caps={"email": {"max": 1, "per_days": 7}}))
    world.shop.add("m-1")

    assert _offers(world, "m-1", "email")
    assert not _offers(world, "m-1", "email")
    assert _offers(world, "m-1", "onsite")  # other channels have their own count
    world.clock.at = NOW + timedelta(days=7, minutes=1)
    assert _offers(world, "m-1", "email")


def test_the_global_cap_holds_across_campaigns_best_first(store: SqlCampaignStore) -> None:
    world = _world(store, global_caps={"email": {"max": 1, "per_days": 7}})
    world.desk.create(_campaign(name="Low", priority=1))
    high = world.desk.create(
        _campaign(name="High", priority=9, offer={"discount_percent": 5, "coupon_code": "HIGH5"})
    )
    world.shop.add("m-1")

    offered = asyncio.run(world.desk.offers("m-1", "email"))

    assert [g.exposure.campaign_id for g in offered.given] == [high.campaign_id]
    assert "capped" in offered.withheld.values()


def test_no_member_goes_over_the_cap_under_concurrent_offers_from_two_replicas(
    engine: Engine,
) -> None:
    # Two stores on their own connection pools stand for two campaigns replicas.
    replicas = [SqlCampaignStore(engine, SECRET) for _ in range(2)]
    cap = FrequencyCap(max=3, per_days=1)
    recorded: list[int] = []
    start = threading.Barrier(8)

    def offer(store: SqlCampaignStore) -> None:
        start.wait()
        for _ in range(4):
            plan = Planned("c-1", "treatment", cap=cap, fixed_code="CODE1")
            got, _ = store.expose("m-1", "email", [plan], None, NOW)
            recorded.append(len(got))

    threads = [threading.Thread(target=offer, args=(replicas[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(recorded) == 3
    assert replicas[0].exposure_counts("c-1") == {("email", "treatment"): 3}


def test_schedule_and_quiet_hours_follow_the_campaigns_time_zone(world: World) -> None:
    created = world.desk.create(
        _campaign(
            schedule={
                "starts_at": "2027-04-01T00:00:00+02:00",
                "ends_at": "2027-05-01T00:00:00+02:00",
                "timezone": "Europe/Berlin",
                "quiet_hours": {"email": {"start": "21:00", "end": "08:00"}},
            }
        )
    )
    world.shop.add("m-1")

    def offered_at(at: datetime, channel: str = "email") -> bool:
        world.clock.at = at
        return bool(asyncio.run(world.desk.offers("m-1", channel, preview=True)).given)

    # Berlin is UTC+2 in April: the campaign starts at 22:00 UTC on 31 March.
    assert not offered_at(datetime(2027, 3, 31, 21, 59, tzinfo=UTC), "onsite")
    assert offered_at(datetime(2027, 3, 31, 22, 0, tzinfo=UTC), "onsite")
    # Quiet from 21:00 to 08:00 Berlin time, i.e. 19:00 to 06:00 UTC.
    assert offered_at(datetime(2027, 4, 10, 18, 59, tzinfo=UTC))
    assert not offered_at(datetime(2027, 4, 10, 19, 0, tzinfo=UTC))
    assert not offered_at(datetime(2027, 4, 11, 5, 59, tzinfo=UTC))
    assert offered_at(datetime(2027, 4, 11, 6, 0, tzinfo=UTC))
    withheld = asyncio.run(world.desk.offers("m-1", "email")).withheld
    assert withheld == {}
    assert not offered_at(datetime(2027, 4, 30, 22, 0, tzinfo=UTC), "onsite")
    assert created.campaign_id


def test_a_season_recurs_every_year(world: World) -> None:
    world.desk.create(_campaign(schedule={"seasons": [{"start": "03-01", "end": "05-31"}]}))
    world.shop.add("m-1")

    for at, expected in [
        (datetime(2027, 2, 28, 12, tzinfo=UTC), False),
        (datetime(2027, 3, 1, 0, tzinfo=UTC), True),
        (datetime(2028, 5, 31, 23, tzinfo=UTC), True),
        (datetime(2028, 6, 1, 0, tzinfo=UTC), False),
    ]:
        world.clock.at = at
        assert bool(asyncio.run(world.desk.offers("m-1", "onsite", preview=True)).given) is expected


def test_an_exhausted_budget_stops_the_campaign(world: World) -> None:
    created = world.desk.create(_campaign(budget={"max_redemptions": 2}))
    for n in range(3):
        world.shop.add(f"m-{n}")

    world.desk.apply_events([_purchase("m-0", "o-1", 40, coupon="SPRING15")])
    assert _offers(world, "m-2", "onsite")
    world.desk.apply_events([_purchase("m-1", "o-2", 60, coupon="spring15")])

    offered = asyncio.run(world.desk.offers("m-2", "onsite"))
    assert offered.given == []
    assert offered.withheld[created.campaign_id] == "budget spent (redemptions)"
    spent = world.desk.spent(created.campaign_id)
    assert (spent.redemptions, spent.cost, spent.revenue) == (2, 15.0, 100.0)


# Redemptions


def test_a_coupon_redemption_counts_once_per_order(world: World) -> None:
    created = world.desk.create(_campaign())
    world.shop.add("m-1")
    purchase = _purchase("m-1", "o-1", 80, coupon="SPRING15")
    segment_shaped = _purchase(
        "m-1", "o-1", 80, source={"properties": {"coupon": "SPRING15", "order_id": "o-1"}}
    )

    assert world.desk.apply_events([purchase, purchase]) == 1
    assert world.desk.apply_events([segment_shaped]) == 0
    assert world.desk.apply_events([_purchase("m-1", "o-2", 10, coupon="NOT-OURS")]) == 0
    assert world.desk.spent(created.campaign_id).redemptions == 1


def test_coupons_are_read_where_each_source_puts_them() -> None:
    assert coupon_codes({"coupon": "a1b2"}) == ["A1B2"]
    assert coupon_codes({"source": {"properties": {"products": [{"coupon": "P1"}]}}}) == ["P1"]
    assert coupon_codes({"source": {"params": {"coupon": "G1, G2"}}}) == ["G1", "G2"]
    assert coupon_codes({"discount": 5}) == []


def test_tiers_follow_the_m_score_and_each_member_keeps_one_unique_code(world: World) -> None:
    created = world.desk.create(
        from_template("spend-tier", {"name": "Tiers", "control_share": 0}).model_dump(mode="json")
    )
    world.shop.add("gold", m_score=5, monetary=900.0)
    world.shop.add("bronze", m_score=2, monetary=40.0)

    [gold] = _offers(world, "gold", "onsite")
    [bronze] = _offers(world, "bronze", "onsite")
    [again] = _offers(world, "gold", "onsite")

    assert (gold.exposure.tier, gold.tier.discount_percent) == ("gold", 15)
    assert (bronze.exposure.tier, bronze.tier.discount_percent) == ("bronze", 5)
    assert gold.exposure.coupon_code.startswith("TIER-")
    assert again.exposure.coupon_code == gold.exposure.coupon_code != bronze.exposure.coupon_code
    world.desk.apply_events([_purchase("gold", "o-9", 200, coupon=gold.exposure.coupon_code)])
    assert world.desk.spent(created.campaign_id).cost == 30.0


def test_best_channel_choice_follows_what_the_member_answered(world: World) -> None:
    earlier = _campaign(
        name="Earlier", channels=["push"], offer={"discount_percent": 5, "coupon": "unique"}
    )
    world.desk.create(earlier)
    world.shop.add("m-1")
    [first] = _offers(world, "m-1", "push")
    world.desk.apply_events([_purchase("m-1", "o-1", 50, coupon=first.exposure.coupon_code)])
    world.desk.change(world.desk.campaigns[0].campaign_id, "end")
    created = world.desk.create(
        _campaign(
            channels=["email", "push"],
            channel_choice="best",
            offer={"discount_percent": 20, "coupon": "unique", "code_prefix": "BACK"},
        )
    )

    offered = asyncio.run(world.desk.offers("m-1", ""))

    assert [g.exposure.channel for g in offered.given] == ["push"]
    assert offered.withheld[created.campaign_id] == "best channel is push"
    # A member who never answered gets the campaign's first channel.
    world.shop.add("m-2")
    assert [g.exposure.channel for g in _offers(world, "m-2")] == ["email"]


# Export


def _export(world: World, campaign_id: str, channel: str, preview: bool = False) -> Any:
    async def run() -> tuple[list[Any], dict[str, int]]:
        rows: list[Any] = []
        skipped: dict[str, int] = {}
        async for page in world.desk.export(campaign_id, channel, preview):
            rows.extend(page.given)
            for reason, n in page.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
        return rows, skipped

    return asyncio.run(run())


def test_an_export_lists_the_channels_audience_and_respects_caps(world: World) -> None:
    created = world.desk.create(
        from_template("seasonal", {"name": "Spring", "category": "garden", "control_share": 0.2})
        .model_copy(update={"schedule": validated(_campaign()).schedule})
        .model_dump(mode="json")
    )
    cid = created.campaign_id
    members = [f"m-{n:02d}" for n in range(12)]
    for member_id in members:
        world.shop.add(member_id, **{"days_since_purchase.garden": 30.0})
    world.shop.add("no-garden")
    world.shop.consent["m-00"]["email"] = False
    held = {m for m in members if in_control(m, cid, 0.2)}

    preview, _ = _export(world, cid, "email", preview=True)
    rows, skipped = _export(world, cid, "email")
    again, skipped_again = _export(world, cid, "email")

    expected = set(members) - {"m-00"} - held
    assert {g.exposure.member_id for g, _ in rows} == expected
    assert {g.exposure.member_id for g, _ in preview} == expected
    assert skipped == ({"held out": len(held - {"m-00"})} if held - {"m-00"} else {})
    assert all(g.exposure.coupon_code.startswith("SEASON-") for g, _ in rows)
    messages = [msgspec.json.decode(m.value) for m in world.published.on(CAMPAIGN_MESSAGES_TOPIC)]
    assert {m["member_id"] for m in messages} == expected
    assert again == [] and skipped_again.get("capped") == len(expected)
    with pytest.raises(NotAllowed, match=r"^channel:"):
        _export(world, cid, "sms")


def test_an_erased_member_leaves_no_exposure_or_code(world: World) -> None:
    created = world.desk.create(
        _campaign(offer={"discount_percent": 10, "coupon": "unique", "code_prefix": "U"})
    )
    world.shop.add("m-1")
    [offer] = _offers(world, "m-1", "email")

    world.desk.apply_commands([Erase("m-1", "er-1", NOW)])

    assert world.store.exposure_counts(created.campaign_id) == {}
    assert world.store.campaign_of_code(offer.exposure.coupon_code) is None
