"""Portraits: lifecycle rules, decayed affinities, price band, channel, discounts, rule tags."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.bus.local_log import LocalLogBus
from services.common.coupons import discounted
from services.common.events import Event
from services.common.settings import FleetSettings
from services.ingestion import formats
from services.ingestion.domain import open_ingestor
from services.ingestion.settings import IngestionSettings
from services.loading import load, read_source
from services.profiles.domain import (
    CategoryStat,
    ManualTag,
    MemberProfile,
    apply_event,
    channel_of,
    decay,
    new_profile,
)
from services.profiles.portrait import (
    Portraitist,
    affinities,
    lifecycle,
    preferred_channel,
    price_profile,
)
from services.profiles.scoring import RfmScores, Scoring, quantiles
from services.profiles.server import profile_worker
from services.profiles.settings import LifecycleSettings, ProfilesSettings
from services.profiles.store import SqlProfileStore

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
DAY = timedelta(days=1)
RULES = LifecycleSettings()
HALF_LIFE_S = 90 * 86400.0


def member(
    *, first_seen_days: float = 400, first_order_days: float | None = None, last_order_days=None
) -> MemberProfile:
    profile = MemberProfile("m-1", first_seen=NOW - first_seen_days * DAY, last_seen=NOW)
    if first_order_days is not None:
        profile.first_order_at = NOW - first_order_days * DAY
        profile.last_order_at = NOW - (last_order_days or first_order_days) * DAY
        profile.orders = 3
    return profile


def scores(f: int = 3, m: int = 3) -> RfmScores:
    return RfmScores(r=3, f=f, m=m)


@pytest.mark.parametrize(
    ("profile", "rfm", "segment"),
    [
        # never ordered: new while first seen within 30 days, a prospect after
        (member(first_seen_days=10), None, "new"),
        (member(first_seen_days=31), None, "prospect"),
        # first order within 30 days: new, whatever the scores
        (member(first_order_days=30), scores(f=5, m=5), "new"),
        # recency decides before the scores do
        (member(first_order_days=300, last_order_days=181), scores(m=5), "churned"),
        (member(first_order_days=300, last_order_days=180), scores(m=5), "at-risk"),
        (member(first_order_days=300, last_order_days=91), scores(f=5), "at-risk"),
        (member(first_order_days=300, last_order_days=90), scores(m=5, f=5), "high-value"),
        (member(first_order_days=300, last_order_days=5), scores(m=4, f=4), "loyal"),
        (member(first_order_days=300, last_order_days=5), scores(m=4, f=3), "active"),
        # no boundaries yet: neither high-value nor loyal can be told
        (member(first_order_days=300, last_order_days=5), None, "active"),
    ],
)
def test_lifecycle_rules_in_their_order(profile: MemberProfile, rfm: Any, segment: str) -> None:
    assert lifecycle(profile, rfm, NOW, RULES) == segment


def test_lifecycle_thresholds_are_settings() -> None:
    rules = LifecycleSettings(new_days=7, at_risk_days=30, churned_days=60, loyal_min_f_score=3)
    profile = member(first_order_days=20, last_order_days=20)

    assert lifecycle(profile, scores(f=3), NOW, rules) == "loyal"
    assert lifecycle(member(first_order_days=90, last_order_days=45), None, NOW, rules) == (
        "at-risk"
    )
    with pytest.raises(ValidationError, match="new_days <= at_risk_days < churned_days"):
        LifecycleSettings(at_risk_days=200, churned_days=180)


def test_affinity_halves_every_half_life() -> None:
    stat = CategoryStat()
    stat.add(8.0, (NOW - 180 * DAY).timestamp(), HALF_LIFE_S)

    assert stat.affinity_as_of(NOW - 90 * DAY, HALF_LIFE_S) == pytest.approx(4.0)
    assert stat.affinity_as_of(NOW, HALF_LIFE_S) == pytest.approx(2.0)
    assert stat.weight == 8.0  # the raw weight never decays
    # a newer event decays what was there to its own time, then adds
    stat.add(1.0, (NOW - 90 * DAY).timestamp(), HALF_LIFE_S)
    assert stat.affinity_as_of(NOW, HALF_LIFE_S) == pytest.approx((4.0 + 1.0) / 2)
    # a late event arrives decayed by as much as it is older than the latest one
    stat.add(2.0, (NOW - 180 * DAY).timestamp(), HALF_LIFE_S)
    assert stat.affinity_as_of(NOW, HALF_LIFE_S) == pytest.approx((4.0 + 1.0 + 1.0) / 2)
    assert decay(0, HALF_LIFE_S) == 1.0


def test_affinities_rank_by_decayed_weight_with_shares() -> None:
    profile = member()
    old, recent = CategoryStat(), CategoryStat()
    old.add(30.0, (NOW - 360 * DAY).timestamp(), HALF_LIFE_S)  # 30 / 16 = 1.875 today
    recent.add(5.0, (NOW - DAY).timestamp(), HALF_LIFE_S)
    recent.bought((NOW - DAY).timestamp())
    profile.categories = {"garden": old, "kitchen": recent}

    ranked = affinities(profile, NOW, HALF_LIFE_S)

    assert [a.category for a in ranked] == ["kitchen", "garden"]
    assert ranked[1].weight == pytest.approx(1.875)
    assert sum(a.share for a in ranked) == pytest.approx(1.0)
    assert ranked[0].last_purchase_at == NOW - DAY
    assert ranked[1].last_purchase_at is None


def _priced(points: dict[str, list[float]]) -> Scoring:
    return Scoring(
        computed_at=NOW,
        window_days=365,
        population=0,
        prices={name: quantiles(values) for name, values in points.items()},
    )


def _paid(profile: MemberProfile, category: str, units: int, unit_price: float) -> None:
    stat = profile.categories.setdefault(category, CategoryStat())
    stat.paid_units += units
    stat.paid_amount += units * unit_price


def test_price_band_places_paid_prices_within_their_categories() -> None:
    # Kitchen items cost 1..10, furniture 100..1000: a member buying the cheapest
    # furniture and the dearest kitchenware is mid-range, not "high" for paying 100.
    scoring = _priced({"kitchen": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "furniture": [100, 1000]})
    cheap, dear, mixed = member(), member(), member()
    _paid(cheap, "kitchen", 10, 2.0)
    _paid(dear, "kitchen", 1, 9.5)
    _paid(dear, "furniture", 1, 950.0)
    _paid(mixed, "kitchen", 1, 10.0)
    _paid(mixed, "furniture", 1, 100.0)

    assert price_profile(cheap, scoring).band == "low"
    assert price_profile(dear, scoring).band == "high"
    mixed_price = price_profile(mixed, scoring)
    assert mixed_price.band == "mid"
    assert mixed_price.percentile == 0.5
    assert mixed_price.typical_price == 55.0
    # units weigh: nine cheap kitchen items outweigh one dear piece of furniture
    _paid(cheap, "furniture", 1, 1000.0)
    assert price_profile(cheap, scoring).band == "low"


def test_price_band_is_unknown_without_a_distribution_or_a_price() -> None:
    profile = member()
    _paid(profile, "toys", 2, 5.0)

    assert price_profile(profile, _priced({"kitchen": [1, 2, 3]})).band is None
    assert price_profile(profile, None).typical_price == 5.0
    assert price_profile(member(), None).typical_price is None


def ev(type_: str = "purchase", **fields: Any) -> Event:
    base: dict[str, Any] = {"type": type_, "member_id": "m-1", "timestamp": NOW}
    if type_ in ("purchase", "view"):
        base["items"] = [{"item_id": "pan", "category": "kitchen", "price": 4.0, "quantity": 2}]
    return Event.model_validate(base | fields)


def apply(profile: MemberProfile, event: Event, new_order: bool = True) -> None:
    apply_event(
        profile,
        event,
        item_categories={},
        weights=ProfilesSettings().category_weights,
        new_order=new_order,
        keep_recent=20,
        half_life_s=HALF_LIFE_S,
    )


@pytest.mark.parametrize(
    ("context", "counted"),
    [
        ({}, False),
        ({"coupon": "SPRING10"}, True),
        ({"coupon": " "}, False),
        ({"discount": 2.5}, True),
        ({"discount": 0}, False),
        ({"discount": True}, False),
        ({"source": {"format": "segment", "properties": {"coupon": "X", "total": 3}}}, True),
        ({"source": {"format": "segment", "properties": {"products": [{"coupon": "X"}]}}}, True),
        ({"source": {"format": "ga4", "params": {"items": [{"discount": 1.2}]}}}, True),
        ({"source": {"format": "ga4", "params": {"coupon": ""}}}, False),
        ({"source": "uci-online-retail", "country": "United Kingdom"}, False),
    ],
)
def test_what_counts_as_a_discounted_order(context: dict[str, Any], counted: bool) -> None:
    assert discounted(context) is counted


def test_price_sensitivity_is_the_share_of_discounted_orders() -> None:
    profile = new_profile(ev())
    apply(profile, ev(order_id="o-1", context={"coupon": "WELCOME10"}))
    apply(profile, ev(order_id="o-2"))
    apply(profile, ev(order_id="o-2", context={"coupon": "LATE"}), new_order=False)
    apply(profile, ev(order_id="o-3"))
    apply(profile, ev(order_id="o-4", context={"discount": 3}))

    price = price_profile(profile, None)
    assert (price.discounted_orders, price.sensitivity) == (2, 0.5)
    assert profile.first_order_at == NOW


@pytest.mark.parametrize(
    ("context", "channel"),
    [
        ({"channel": "Email "}, "email"),
        ({"utm_medium": "cpc"}, "cpc"),
        ({"source": {"format": "segment", "context": {"channel": "server"}}}, "server"),
        ({"source": {"format": "segment", "channel": "browser", "context": {}}}, "browser"),
        (
            {"source": {"format": "segment", "context": {"campaign": {"medium": "Social"}}}},
            "social",
        ),
        ({"source": {"format": "ga4", "params": {"medium": "organic"}}}, "organic"),
        ({"source": {"format": "ga4", "params": {"campaign_medium": "email"}}}, "email"),
        ({"channel": 3}, None),
        ({"source": "uci-online-retail"}, None),
        ({}, None),
    ],
)
def test_where_an_events_channel_is_read(context: dict[str, Any], channel: str | None) -> None:
    assert channel_of(context) == channel


def test_preferred_channel_has_most_events_and_channels_are_bounded() -> None:
    profile = new_profile(ev("view"))
    for channel in ["app", "web", "web", "email", "app"]:
        apply(profile, ev("view", context={"channel": channel}))
    for n in range(40):
        apply(profile, ev("view", context={"channel": f"made-up-{n}"}))

    assert preferred_channel(profile.channels) == "app"  # a tie with web: by name
    assert len(profile.channels) == 16
    assert preferred_channel({}) is None


def test_rule_tags_come_from_settings_and_manual_tags_are_kept_apart() -> None:
    settings = ProfilesSettings(
        tag_rules={
            "kitchen-lover": "affinity.kitchen >= 0.5",
            "spender": "monetary >= 100",
            "press-vip": "'press' in tags and frequency >= 1",
        }
    )
    profile = new_profile(ev())
    apply(profile, ev(order_id="o-1"))
    profile.manual_tags = [ManualTag("press", NOW - DAY)]

    portrait = Portraitist(settings).draw(profile, None, NOW)

    assert portrait.rule_tags == ["kitchen-lover", "press-vip"]
    assert [t.tag for t in portrait.manual_tags] == ["press"]
    assert portrait.lifecycle == "new"
    assert portrait.scores is None


def test_a_tag_rule_outside_the_grammar_stops_the_service_from_starting() -> None:
    with pytest.raises(ValidationError, match="tag rule 'odd': unknown field 'spend'"):
        ProfilesSettings(tag_rules={"odd": "spend > 3"})
    with pytest.raises(ValidationError, match="tag rule 'Big Spender'"):
        ProfilesSettings(tag_rules={"Big Spender": "monetary > 3"})


def test_the_default_tag_rules_parse() -> None:
    assert set(Portraitist(ProfilesSettings()).tag_rules) == {"vip", "win-back", "bargain-hunter"}


def sample_segments(tmp_path: Path, redate: bool) -> Counter[str]:
    """Lifecycle sizes of the bundled sample loaded as `recofleet load-sample` does."""
    fleet = FleetSettings(data_dir=tmp_path / "var", bus_fsync=False)
    settings = ProfilesSettings()
    clock = fleet.clock()
    bus = LocalLogBus(fleet.data_dir / "bus", partitions=2, fsync=False)
    store = SqlProfileStore.from_url(fleet.sqlite_url("profiles"), settings)
    try:
        ingestor = open_ingestor(fleet, bus, IngestionSettings())
        load(
            ingestor,
            bus.location(),
            fleet.data_dir,
            None,
            redate_to=clock.now() if redate else None,
        )
        profile_worker(bus, store, settings).drain()
        now = clock.now()
        scoring = store.recompute_scoring(now)
        portraitist = Portraitist(settings)
        members = {e.member_id for e in read_source(None)[1]}
        return Counter(
            portraitist.draw(store.get(m), scoring, now).lifecycle  # type: ignore[arg-type]
            for m in sorted(members)
        )
    finally:
        store.close()
        bus.close()


def test_the_redated_sample_has_every_segment_of_a_live_shop(tmp_path: Path) -> None:
    segments = sample_segments(tmp_path, redate=True)

    assert sum(segments.values()) == 600
    assert set(segments) == {"new", "active", "loyal", "high-value", "at-risk", "churned"}
    assert segments["churned"] < 150, segments
    # Without re-dating, the sample's newest order is years old: everyone is churned.
    assert sample_segments(tmp_path / "dated", redate=False) == Counter({"churned": 600})


def test_segment_and_ga4_orders_say_their_coupon_and_channel_through_the_mapping() -> None:
    segment = {
        "type": "track",
        "event": "Order Completed",
        "userId": "m-1",
        "messageId": "m-9",
        "channel": "browser",
        "context": {"campaign": {"medium": "email"}},
        "properties": {
            "order_id": "o-9",
            "total": 9.0,
            "coupon": "SPRING10",
            "products": [{"product_id": "pan", "price": 9.0}],
        },
    }
    ga4 = {
        "client_id": "c-1",
        "user_id": "m-1",
        "events": [
            {
                "name": "purchase",
                "params": {
                    "transaction_id": "o-10",
                    "value": 4.0,
                    "currency": "EUR",
                    "medium": "cpc",
                    "items": [{"item_id": "pan", "price": 4.0, "discount": 1.0}],
                },
            }
        ],
    }
    for fmt, body, channel in (("segment", segment, "browser"), ("ga4", ga4, "cpc")):
        [translated] = formats.translate(fmt, json.dumps(body).encode())
        [event] = [Event.model_validate(raw) for raw in translated.events]
        assert discounted(event.context), fmt
        assert channel_of(event.context) == channel, fmt
