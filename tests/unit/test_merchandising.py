"""Merchandising rules: what a merchandiser writes, and what a member then sees.

Rules are validated and applied by campaigns (services/campaigns/merchandising.py, its
servicer in process over a SQLite store), and arranged by ranking
(services/ranking/arrangement.py, its servicer in process with a category cap).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import Engine

from services.campaigns import store as store_module
from services.campaigns.merch_servicer import MerchandisingServicer
from services.campaigns.merchandising import (
    InvalidRule,
    MerchandisingSettings,
    Purchase,
    Request,
    Rule,
    live_rules,
    merchandise,
    named,
    parse_rule,
)
from services.campaigns.store import CatalogFacts, SqlCatalogStore
from services.common.clock import Clock
from services.common.db import make_engine
from services.common.events import CatalogItem
from services.gen.recofleet.campaigns.v1 import campaigns_pb2
from services.gen.recofleet.common.v1 import common_pb2
from services.gen.recofleet.ranking.v1 import ranking_pb2, ranking_pb2_grpc
from services.ranking.arrangement import arrange
from services.ranking.rankers import RankedItem
from services.ranking.settings import Diversity
from tests.unit.test_ranking_diversity import serving_ranking

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
ITEMS = [
    CatalogItem(item_id="rake", category="garden", price=25.0, tags=["eco"], brand="Acme"),
    CatalogItem(item_id="hose", category="garden", price=40.0, brand="Flow"),
    CatalogItem(item_id="lamp", category="lighting", price=20.0, tags=["eco"], brand="Lumo"),
    CatalogItem(item_id="mug", category="kitchen", price=8.0, brand="Acme"),
    CatalogItem(item_id="pan", category="kitchen", price=60.0),
    CatalogItem(item_id="novel", category="books", price=12.0, tags=["gift"]),
    CatalogItem(item_id="candle", category="lighting", price=5.0, tags=["gift", "eco"]),
    CatalogItem(item_id="hero", category="garden", price=99.0, tags=["spring"]),
    CatalogItem(item_id="sofa", category="furniture", price=500.0, in_stock=False),
    *[
        CatalogItem(item_id=f"spring-{n}", category="garden", price=10.0 + n, tags=["spring"])
        for n in range(1, 4)
    ],
]
# Retrieval's proposals, best first: the ranker keeps this order in these tests.
PROPOSED = ["rake", "hose", "lamp", "mug", "pan", "novel", "candle", "unknown"]


def rule(**fields: Any) -> Rule:
    """A rule as a merchandiser writes it, named after its action unless given a name."""
    fields.setdefault("placement", "home")
    return named(parse_rule(fields), fields.get("name") or fields["action"])


def candidates(*item_ids: str) -> list[common_pb2.Candidate]:
    return [
        common_pb2.Candidate(item_id=i, score=1 - n / 100, category="misc", source="als")
        for n, i in enumerate(item_ids)
    ]


def apply(
    rules: Sequence[Rule],
    proposed: Sequence[str] = PROPOSED,
    *,
    limit: int = 10,
    purchases: Sequence[Purchase] = (),
    banned: frozenset[str] = frozenset(),
) -> Any:
    request = Request(candidates(*proposed), NOW, limit, purchases, banned)
    return merchandise(live_rules(rules, NOW), request, CatalogFacts(ITEMS))


def shown(rules: Sequence[Rule], proposed: Sequence[str] = PROPOSED, limit: int = 10) -> list[str]:
    """What the member sees: the rules applied, then arranged over the ranker's order."""
    return [item.item_id for item in arranged(rules, proposed, limit)]


def arranged(
    rules: Sequence[Rule], proposed: Sequence[str] = PROPOSED, limit: int = 10
) -> list[RankedItem]:
    done = apply(rules, proposed, limit=limit)
    ranked = [RankedItem(c.item_id, 1.0, ["picked for you"], c.category) for c in done.candidates]
    return arrange(ranked, done.arrangement, limit)


def reasons(items: Sequence[RankedItem]) -> dict[str, list[str]]:
    return {item.item_id: item.reasons for item in items}


# --- what a rule may be -------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "says"),
    [
        ({"action": "pin", "item_id": "rake", "position": 0}, "position: "),
        ({"action": "pin", "item_id": "rake"}, "position: Field required"),
        ({"action": "pin", "position": 1}, "item_id: Field required"),
        ({"action": "pinn", "item_id": "rake", "position": 1}, "action: 'pinn' is not one of"),
        ({"item_id": "rake", "position": 1}, "action: Field required"),
        ({"action": "boost"}, "category: give at least one of category, tag, brand"),
        ({"action": "boost", "tag": "eco", "strength": 11}, "strength: "),
        ({"action": "bury", "brand": "Acme", "strength": 0}, "strength: "),
        ({"action": "filter", "min_price": 50, "max_price": 10}, "max_price: must be at least"),
        ({"action": "filter", "in_stock": False}, "in_stock: "),
        (
            {"action": "promote", "campaign_id": "c-1", "item_ids": ["a"], "tag": "x", "share": 1},
            "item_ids: give item_ids or a selector, not both",
        ),
        ({"action": "promote", "campaign_id": "c-1", "item_ids": ["a"], "share": 1.5}, "share: "),
        ({"action": "exclude_bought", "days": 0}, "days: "),
        ({"action": "pin", "item_id": "rake", "position": 1, "colour": "red"}, "colour: Extra"),
        (
            {
                "action": "pin",
                "item_id": "rake",
                "position": 1,
                "starts_at": "2026-12-08T00:00:00Z",
                "ends_at": "2026-12-01T00:00:00Z",
            },
            "ends_at: must be after starts_at",
        ),
        ({"action": "pin", "item_id": "rake", "position": 1, "placement": ""}, "placement: "),
    ],
)
def test_an_invalid_rule_is_refused_naming_the_field(definition: dict[str, Any], says: str) -> None:
    definition = {"placement": "home", **definition}

    with pytest.raises(InvalidRule) as refused:
        parse_rule(definition)

    assert str(refused.value).startswith(says), str(refused.value)


def test_a_rule_is_read_with_its_defaults_and_one_word_as_a_list() -> None:
    boost = parse_rule({"placement": "home", "action": "boost", "category": "garden"})

    assert boost.model_dump(mode="json") | {"category": ["garden"], "strength": 0.5} == (
        boost.model_dump(mode="json")
    )
    assert boost.priority == 0 and boost.starts_at is None


# --- time windows and precedence ----------------------------------------------------


@pytest.mark.parametrize(
    ("starts", "ends", "applies"),
    [
        (NOW + timedelta(hours=1), None, False),  # before its start
        (None, NOW - timedelta(seconds=1), False),  # after its end
        (NOW - timedelta(days=1), NOW + timedelta(days=6), True),  # a week, running
        (NOW, None, True),  # the start is included
        (None, NOW, False),  # the end is not
    ],
)
def test_a_rule_applies_only_within_its_time_window(
    starts: datetime | None, ends: datetime | None, applies: bool
) -> None:
    window = {"starts_at": starts, "ends_at": ends}
    pin = rule(action="pin", name="home-hero", item_id="hero", position=1, **window)

    first = shown([pin])[0]

    assert (first == "hero") is applies
    assert shown([]) == PROPOSED[: len(shown([]))]


def test_of_two_pins_on_one_position_the_higher_priority_wins_the_other_takes_the_next() -> None:
    low = rule(action="pin", name="low", item_id="novel", position=1, priority=1)
    high = rule(action="pin", name="high", item_id="candle", position=1, priority=5)

    # Listed low first: priority decides, not the order rules come in.
    assert shown([low, high])[:3] == ["candle", "novel", "rake"]


def test_an_item_pinned_by_two_rules_takes_the_higher_priority_s_position() -> None:
    low = rule(action="pin", name="low", item_id="novel", position=2, priority=1)
    high = rule(action="pin", name="high", item_id="novel", position=5, priority=5)

    items = arranged([low, high])

    assert [i.item_id for i in items].index("novel") == 4
    assert reasons(items)["novel"][-1] == "pinned by rule high"


def test_a_pinned_item_retrieval_did_not_propose_is_added_from_the_catalog() -> None:
    done = apply([rule(action="pin", name="home-hero", item_id="hero", position=2)])

    added = next(c for c in done.candidates if c.item_id == "hero")
    assert (added.source, added.category) == ("rule", "garden")
    assert [(p.item_id, p.position, p.rule) for p in done.arrangement.pins] == [
        ("hero", 2, "home-hero")
    ]
    assert done.rules == ["home-hero"]


@pytest.mark.parametrize(
    ("item_id", "why"),
    [("sofa", "out of stock"), ("ghost", "unknown to the catalog")],
)
def test_a_pin_adds_no_item_the_shop_cannot_sell(item_id: str, why: str) -> None:
    done = apply([rule(action="pin", item_id=item_id, position=1)])

    assert item_id not in [c.item_id for c in done.candidates], why
    assert list(done.arrangement.pins) == []


def test_a_pin_adds_no_item_the_caller_excluded() -> None:
    done = apply([rule(action="pin", item_id="hero", position=1)], banned=frozenset({"hero"}))

    assert "hero" not in [c.item_id for c in done.candidates]


# --- boosts and buries --------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "moved"),
    [
        ({"category": "kitchen"}, {"mug", "pan"}),
        ({"tag": "gift"}, {"novel", "candle"}),
        ({"brand": "Acme"}, {"rake", "mug"}),
        ({"min_price": 10, "max_price": 21}, {"lamp", "novel"}),
        ({"category": ["books", "lighting"], "tag": "eco"}, {"lamp", "candle"}),
    ],
)
def test_a_boost_moves_what_it_selects_up_and_a_bury_down(
    selector: dict[str, Any], moved: set[str]
) -> None:
    before = shown([])
    boosted = shown([rule(action="boost", strength=1, **selector)])
    buried = shown([rule(action="bury", strength=1, **selector)])

    # Strength 1 lifts every selected item past every other one, and buries them below.
    assert set(boosted[: len(moved)]) == moved
    assert set(buried[-len(moved) :]) == moved
    for item_id in moved:
        assert boosted.index(item_id) <= before.index(item_id) <= buried.index(item_id)
    # The others keep their order.
    assert [i for i in boosted if i not in moved] == [i for i in before if i not in moved]


def test_a_weak_boost_lifts_an_item_part_of_the_way() -> None:
    lifted = shown([rule(action="boost", category="lighting", strength=0.3)])

    # Of 8, candle was 7th (key 1 - 6/8 = 0.25) and lamp 3rd (0.75): 0.3 in rank space
    # lifts candle past pan and novel only, and lamp to the top.
    assert lifted == ["lamp", "rake", "hose", "mug", "candle", "pan", "novel", "unknown"]


def test_boosted_and_buried_items_name_their_rules() -> None:
    items = reasons(
        arranged(
            [
                rule(action="boost", name="garden-week", category="garden"),
                rule(action="bury", name="clear-kitchen", category="kitchen"),
            ]
        )
    )

    assert items["rake"] == ["picked for you", "boosted by rule garden-week"]
    assert items["pan"] == ["picked for you", "buried by rule clear-kitchen"]
    assert items["lamp"] == ["picked for you"]


# --- filters and exclusions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "kept"),
    [
        ({"min_price": 10, "max_price": 30}, ["rake", "lamp", "novel"]),
        ({"category": "garden"}, ["rake", "hose"]),
        ({"in_stock": True}, [i for i in PROPOSED if i != "unknown"]),
        ({"category": "kitchen", "max_price": 10}, ["mug"]),
    ],
)
def test_a_filter_keeps_only_what_matches(selector: dict[str, Any], kept: list[str]) -> None:
    done = apply([rule(action="filter", name="only-these", **selector)])

    assert [c.item_id for c in done.candidates] == kept
    assert {r.item_id for r in done.removed} == set(PROPOSED) - set(kept)
    assert {r.reason for r in done.removed} == {"rule:only-these"}


def test_a_filter_never_removes_a_pinned_item() -> None:
    rules = [
        rule(action="filter", category="garden"),
        rule(action="pin", name="home-hero", item_id="novel", position=1),
    ]

    assert shown(rules) == ["novel", "rake", "hose"]


def test_what_was_bought_within_the_days_is_left_out_and_older_purchases_stay() -> None:
    purchases = [
        Purchase("rake", NOW - timedelta(days=3)),
        Purchase("lamp", NOW - timedelta(days=10)),
    ]
    exclude = rule(action="exclude_bought", name="not-again", days=7)

    done = apply([exclude], purchases=purchases)

    kept = [c.item_id for c in done.candidates]
    assert "rake" not in kept and "lamp" in kept
    assert [(r.item_id, r.reason) for r in done.removed] == [("rake", "rule:not-again")]


def test_what_was_bought_lately_goes_even_when_pinned() -> None:
    rules = [
        rule(action="exclude_bought", days=7),
        rule(action="pin", item_id="hero", position=1),
    ]

    done = apply(rules, purchases=[Purchase("hero", NOW - timedelta(days=1))])

    assert "hero" not in [c.item_id for c in done.candidates]
    assert list(done.arrangement.pins) == []


# --- promotions ---------------------------------------------------------------------


@pytest.mark.parametrize(("share", "limit", "slots"), [(0.3, 10, 3), (0.25, 10, 3), (0.07, 100, 7)])
def test_a_promotion_fills_its_share_of_the_slots_with_the_campaign_s_items(
    share: float, limit: int, slots: int
) -> None:
    proposed = [f"other-{n}" for n in range(limit)] + ["novel", "candle", "lamp", "mug"]
    campaign = ["novel", "candle", "lamp", "mug", "pan", "rake", "hose"]
    promote = rule(
        action="promote",
        campaign_id="c-spring",
        campaign_name="spring-sale",
        item_ids=campaign,
        share=share,
    )

    items = arranged([promote], proposed, limit)

    promoted = [i for i in items if i.item_id in campaign]
    assert len(items) == limit
    assert len(promoted) == slots
    assert all(i.reasons[-1] == "in campaign spring-sale" for i in promoted)
    # The best ranked of them first, spread over the list rather than piled at its end.
    assert [i.item_id for i in promoted] == campaign[:slots]
    assert [i.item_id for i in items].index(campaign[0]) < limit - 1


def test_a_promotion_by_tag_adds_the_catalog_s_items_retrieval_did_not_propose() -> None:
    promote = rule(action="promote", campaign_id="c-spring", tag="spring", share=0.3)

    done = apply([promote], limit=10)
    items = arranged([promote], limit=10)

    added = [c.item_id for c in done.candidates if c.source == "rule"]
    assert len(added) == 3 and all(i in {"hero", "spring-1", "spring-2", "spring-3"} for i in added)
    assert sorted(done.arrangement.promotions[0].item_ids) == sorted(added)
    assert len([i for i in items if i.item_id in added]) == 3
    assert reasons(items)[added[0]][-1] == "in campaign c-spring"


def test_a_promotion_adds_nothing_when_enough_of_its_items_were_proposed() -> None:
    promote = rule(action="promote", campaign_id="c", category="garden", share=0.2)

    done = apply([promote], limit=10)

    assert [c.source for c in done.candidates].count("rule") == 0
    assert list(done.arrangement.promotions[0].item_ids) == ["rake", "hose"]


# --- through ranking ----------------------------------------------------------------


@pytest.fixture
async def ranking(tmp_path: Path) -> AsyncIterator[ranking_pb2_grpc.RankingServiceStub]:
    """Ranking with the blend ranker and at most one item of a category on home."""
    async with serving_ranking(tmp_path, {"home": Diversity(max_per_category=1)}, NOW) as stub:
        yield stub


@pytest.fixture
def campaigns_store(tmp_path: Path) -> Iterator[SqlCatalogStore]:
    store = SqlCatalogStore(make_engine(f"sqlite:///{tmp_path / 'campaigns.db'}"))
    store.save(ITEMS)
    yield store
    store.close()


class Context:
    """What a servicer method gets as its gRPC context: abort raises like grpc's does."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


def merchandising(store: SqlCatalogStore) -> MerchandisingServicer:
    return MerchandisingServicer(store, Clock.fixed(NOW), MerchandisingSettings())


async def put(servicer: MerchandisingServicer, **definition: Any) -> campaigns_pb2.Rule:
    request = campaigns_pb2.PutRuleRequest(definition_json=json.dumps(definition))
    return await servicer.PutRule(request, Context())


async def test_ranking_keeps_a_pin_at_its_position_after_the_category_cap(
    ranking: ranking_pb2_grpc.RankingServiceStub, campaigns_store: SqlCatalogStore
) -> None:
    rules = merchandising(campaigns_store)
    await put(rules, placement="home", name="home-hero", action="pin", item_id="hose", position=2)
    pool = [("rake", "garden"), ("hose", "garden"), ("lamp", "lighting")]
    pool += [(f"spring-{n}", "garden") for n in range(1, 4)] + [
        ("mug", "kitchen"),
        ("novel", "books"),
    ]
    proposed = [
        common_pb2.Candidate(item_id=i, score=1 - n / 10, category=c, source="als")
        for n, (i, c) in enumerate(pool)
    ]
    applied = await rules.ApplyRules(
        campaigns_pb2.ApplyRulesRequest(
            member_id="m-1", placement="home", candidates=proposed, limit=4
        ),
        Context(),
    )

    async def rank(arrangement: common_pb2.Arrangement | None) -> list[common_pb2.ScoredItem]:
        request = ranking_pb2.RankRequest(
            member=ranking_pb2.MemberContext(member_id="m-1"),
            candidates=applied.candidates,
            placement="home",
            limit=4,
            arrangement=arrangement,
        )
        return list((await ranking.Rank(request)).items)

    plain, pinned = await rank(None), await rank(applied.arrangement)

    # Without the rule the cap lets one garden item in; with it, hose holds position 2.
    assert [i.category for i in plain].count("garden") == 1
    assert pinned[1].item_id == "hose"
    assert pinned[1].reasons[-1] == "pinned by rule home-hero"
    assert [i.item_id for i in pinned if i.category != "garden"] == [
        i.item_id for i in plain if i.category != "garden"
    ][:2]
    assert len(pinned) == 4


async def test_a_request_without_arrangement_is_ranked_as_before(
    ranking: ranking_pb2_grpc.RankingServiceStub,
) -> None:
    proposed = candidates(*PROPOSED)
    request = ranking_pb2.RankRequest(
        member=ranking_pb2.MemberContext(member_id="m-1"),
        candidates=proposed,
        placement="cart",
        limit=5,
    )

    plain = await ranking.Rank(request)
    request.arrangement.CopyFrom(common_pb2.Arrangement())
    empty = await ranking.Rank(request)

    assert plain == empty
    assert len(plain.items) == 5


# --- the servicer: rules kept, shared between replicas ------------------------------


async def test_a_rule_applies_at_once_on_the_replica_that_took_it_and_after_a_refresh_elsewhere(
    tmp_path: Path,
) -> None:
    engine: Engine = make_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    one, other = SqlCatalogStore(engine), SqlCatalogStore(engine)
    one.save(ITEMS)
    other.refresh()
    here, there = merchandising(one), merchandising(other)
    request = campaigns_pb2.ApplyRulesRequest(
        placement="home", candidates=candidates("rake", "lamp")
    )

    created = await put(here, placement="home", action="pin", item_id="hero", position=1)

    async def pins(servicer: MerchandisingServicer) -> list[str]:
        reply = await servicer.ApplyRules(request, Context())
        return [p.item_id for p in reply.arrangement.pins]

    assert await pins(here) == ["hero"]
    assert await pins(there) == []
    there.book.refresh()
    assert await pins(there) == ["hero"]

    await here.DeleteRule(campaigns_pb2.GetRuleRequest(rule_id=created.rule_id), Context())
    assert await pins(here) == []
    there.book.refresh()
    assert await pins(there) == []
    engine.dispose()


async def test_an_invalid_rule_is_invalid_argument_naming_the_field(
    campaigns_store: SqlCatalogStore,
) -> None:
    with pytest.raises(Aborted) as refused:
        await put(merchandising(campaigns_store), placement="home", action="pin", item_id="x")

    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details == "position: Field required"


async def test_a_stored_rule_comes_back_with_its_name_window_and_whether_it_is_live(
    campaigns_store: SqlCatalogStore,
) -> None:
    servicer = merchandising(campaigns_store)
    later = (NOW + timedelta(days=1)).isoformat()

    created = await put(servicer, placement="home", action="boost", tag="eco", starts_at=later)
    found = await servicer.GetRule(
        campaigns_pb2.GetRuleRequest(rule_id=created.rule_id),
        Context(),
    )

    definition = json.loads(found.definition_json)
    assert definition["name"] == created.rule_id
    assert definition["tag"] == ["eco"] and definition["strength"] == 0.5
    assert not found.live
    listed = await servicer.ListRules(campaigns_pb2.ListRulesRequest(placement="cart"), Context())
    assert list(listed.rules) == []


async def test_recent_purchases_sent_with_their_time_feed_exclude_bought(
    campaigns_store: SqlCatalogStore,
) -> None:
    servicer = merchandising(campaigns_store)
    await put(servicer, placement="home", action="exclude_bought", days=7, name="not-again")

    def bought(item_id: str, days_ago: int) -> campaigns_pb2.PurchasedItem:
        at = Timestamp()
        at.FromDatetime(NOW - timedelta(days=days_ago))
        return campaigns_pb2.PurchasedItem(item_id=item_id, at=at)

    reply = await servicer.ApplyRules(
        campaigns_pb2.ApplyRulesRequest(
            placement="home",
            candidates=candidates("rake", "lamp", "mug"),
            recent_purchases=[bought("rake", 3), bought("lamp", 10)],
        ),
        Context(),
    )

    assert [c.item_id for c in reply.candidates] == ["lamp", "mug"]
    assert [(r.item_id, r.reason) for r in reply.removed] == [("rake", "rule:not-again")]
    assert list(reply.rules) == ["not-again"]


# --- the catalog's facts in memory --------------------------------------------------


def test_the_catalog_keeps_tags_brand_and_attributes_and_the_facts_rules_read(
    engine: Engine,
) -> None:
    store = SqlCatalogStore(engine)
    sent = CatalogItem(
        item_id="rake",
        category="garden",
        price=25.0,
        tags=["eco", "spring"],
        brand="Acme",
        attributes={"colour": "green", "weight_kg": 1.5},
    )

    store.save([sent])

    assert store.item("rake") == sent
    facts = SqlCatalogStore(engine).facts().facts("rake")
    assert facts is not None
    assert (facts.category, facts.price, facts.brand, facts.tags) == (
        "garden",
        25.0,
        "Acme",
        frozenset({"eco", "spring"}),
    )
    assert store.item("ghost") is None


def test_a_replica_reads_what_another_saved_and_its_stock() -> None:
    facts = CatalogFacts(ITEMS)

    facts.update([CatalogItem(item_id="mug", category="kitchen", brand="Other", in_stock=False)])
    facts.restock(frozenset({"rake"}))

    rake, mug = facts.facts("rake"), facts.facts("mug")
    assert rake is not None and rake.in_stock is False
    assert mug is not None and mug.brand == "Other" and mug.price is None
    assert facts.facts("ghost") is None


def test_the_refresh_reads_only_what_changed_yet_sees_every_change(engine: Engine) -> None:
    writer, reader = SqlCatalogStore(engine), SqlCatalogStore(engine)

    writer.save([CatalogItem(item_id="new", category="garden", tags=["eco"], price=3.0)])
    reader.refresh()
    writer.save([CatalogItem(item_id="new", category="garden", tags=["gift"], in_stock=False)])
    reader.refresh()

    found = reader.facts().facts("new")
    assert found is not None
    assert (found.tags, found.in_stock, found.price) == (frozenset({"gift"}), False, None)


def test_a_batch_is_read_once_not_at_every_refresh_after_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    read: list[str] = []
    facts_of = store_module._facts_of

    def counted(row: Any) -> CatalogItem:
        read.append(row["item_id"])
        return facts_of(row)

    monkeypatch.setattr(store_module, "_facts_of", counted)
    writer, reader = SqlCatalogStore(engine), SqlCatalogStore(engine)
    writer.save([CatalogItem(item_id=f"sku-{n}", category="garden") for n in range(50)])
    clock[0] += 1
    reader.refresh()
    assert len(read) == 50
    # The next refresh reads them again (they are within the overlap that catches a late
    # commit); after that, nothing new is nothing read.
    clock[0] += store_module.CHANGE_OVERLAP_S + 1
    reader.refresh()
    for _ in range(3):
        clock[0] += store_module.CHANGE_OVERLAP_S + 1
        reader.refresh()
    assert len(read) <= 100
    before = len(read)
    writer.save([CatalogItem(item_id="sku-7", category="toys")])
    clock[0] += 1
    reader.refresh()
    assert read[before:] == ["sku-7"]
    found = reader.facts().facts("sku-7")
    assert found is not None and found.category == "toys"


async def test_a_promotion_of_a_campaigns_own_items_follows_the_campaign(
    campaigns_store: SqlCatalogStore,
) -> None:
    live: dict[str, tuple[str, list[str]]] = {"c-spring": ("Spring garden", ["hose", "rake"])}
    rules = MerchandisingServicer(
        campaigns_store, Clock.fixed(NOW), MerchandisingSettings(), live.get
    )
    await put(rules, placement="home", action="promote", campaign_id="c-spring", share=0.5)
    proposed = [common_pb2.Candidate(item_id="lamp", score=0.9, category="lighting")]
    request = campaigns_pb2.ApplyRulesRequest(
        member_id="m-1", placement="home", candidates=proposed, limit=4
    )

    running = await rules.ApplyRules(request, Context())
    live.clear()  # the campaign paused or ended
    stopped = await rules.ApplyRules(request, Context())

    [promotion] = running.arrangement.promotions
    assert list(promotion.item_ids) == ["hose", "rake"]
    assert promotion.reason == "in campaign Spring garden"
    assert {c.item_id for c in running.candidates} == {"lamp", "hose", "rake"}
    assert not stopped.arrangement.promotions
    assert [c.item_id for c in stopped.candidates] == ["lamp"]
