"""Segment discovery: k-means over portraits recovers planted groups, and every cluster comes
with a condition that parses and selects mostly that cluster; `recofleet segments discover`
on a store built from native events."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.cli import main
from services.common.events import Event
from services.common.settings import FleetSettings
from services.profiles import scoring
from services.profiles.conditions import parse
from services.profiles.discovery import (
    Discovery,
    NotEnoughMembers,
    category_field,
    discover,
    discover_values,
    report,
)
from services.profiles.domain import CategoryStat, MemberProfile
from services.profiles.portrait import Portrait, Portraitist, values
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SqlProfileStore
from services.profiles.tags import check_tag

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)

# Three planted groups: (recency days, orders, spend, category shares of their weight).
GROUPS: dict[
    str, tuple[tuple[float, float], tuple[int, int], tuple[float, float], dict[str, float]]
] = {
    "kitchen-whales": ((1, 12), (8, 15), (2000, 5000), {"kitchen": 0.8, "home-decor": 0.2}),
    "garden-lapsed": ((200, 330), (1, 1), (10, 40), {"garden": 0.85, "toys": 0.15}),
    "decor-regulars": ((30, 70), (3, 5), (200, 500), {"home-decor": 0.7, "kitchen": 0.3}),
}
PER_GROUP = 60
PROSPECTS = 10


def _profile(member_id: str, group: str, rng: random.Random) -> MemberProfile:
    (r_low, r_high), (f_low, f_high), (m_low, m_high), mix = GROUPS[group]
    last = NOW - rng.uniform(r_low, r_high) * DAY
    orders = rng.randint(f_low, f_high)
    categories = {}
    for category, share in mix.items():
        weight = share * rng.uniform(0.8, 1.2) * 5 * orders
        categories[category] = CategoryStat(
            weight=weight,
            events=orders,
            affinity=weight,
            affinity_at_s=last.timestamp(),
            last_purchase_at_s=last.timestamp(),
        )
    return MemberProfile(
        member_id=member_id,
        first_seen=last - 400 * DAY,
        last_seen=last,
        last_order_at=last,
        first_order_at=last - 300 * DAY,
        orders=orders,
        spend=round(rng.uniform(m_low, m_high), 2),
        events=orders,
        categories=categories,
    )


def _prospect(n: int) -> MemberProfile:
    seen = NOW - (100 + n) * DAY
    stat = CategoryStat(weight=1, events=1, affinity=1, affinity_at_s=seen.timestamp())
    return MemberProfile(
        member_id=f"p-{n:03d}",
        first_seen=seen,
        last_seen=seen,
        events=1,
        categories={"kitchen": stat},
    )


def population(seed: int = 7) -> tuple[list[MemberProfile], dict[str, str]]:
    """Every planted member (and a few prospects), with each member's group."""
    rng = random.Random(seed)
    profiles, truth = [], {}
    for group in GROUPS:
        for n in range(PER_GROUP):
            member_id = f"{group}-{n:03d}"
            profiles.append(_profile(member_id, group, rng))
            truth[member_id] = group
    profiles += [_prospect(n) for n in range(PROSPECTS)]
    return sorted(profiles, key=lambda p: p.member_id), truth


def scoring_of(profiles: list[MemberProfile]) -> scoring.Scoring:
    rows = [p.rfm(NOW) for p in profiles if p.orders]
    return scoring.compute(
        computed_at=NOW,
        window_days=365,
        population=[(r.recency_days or 0.0, r.frequency, r.monetary) for r in rows],
        catalog_prices={},
        paid_prices={},
    )


def portraits(profiles: list[MemberProfile], scored: bool = True) -> list[Portrait]:
    artist = Portraitist(ProfilesSettings())
    current = scoring_of(profiles) if scored else None
    return [artist.draw(p, current, NOW) for p in profiles]


@pytest.fixture(scope="module")
def planted() -> tuple[list[Portrait], dict[str, str]]:
    profiles, truth = population()
    return portraits(profiles), truth


@pytest.fixture(scope="module")
def found(planted: tuple[list[Portrait], dict[str, str]]) -> Discovery:
    drawn, _ = planted
    return discover(iter(drawn), k=3, top_categories=4)


def _selected(condition: str, drawn: list[Portrait]) -> set[str]:
    parsed = parse(condition)
    return {p.profile.member_id for p in drawn if parsed(values(p))}


def test_clusters_recover_the_planted_groups(found: Discovery) -> None:
    assert found.mode == "scores"
    assert found.seen == 3 * PER_GROUP + PROSPECTS
    assert found.clustered == 3 * PER_GROUP and found.without_order == PROSPECTS
    assert [c.size for c in found.clusters] == [PER_GROUP] * 3
    assert [c.share for c in found.clusters] == pytest.approx([1 / 3] * 3)
    by_words = {c.description.split(" (")[0]: c for c in found.clusters}
    assert set(by_words) == {
        "recent, frequent, high spenders; mostly kitchen",
        "lapsed, infrequent, low spenders; mostly garden",
        "mid spenders; mostly home-decor",
    }
    whales = by_words["recent, frequent, high spenders; mostly kitchen"]
    assert whales.name == "recent-frequent-high-spenders-kitchen"
    assert whales.medians["frequency"] >= 8 and whales.medians["recency_days"] <= 12
    lapsed = by_words["lapsed, infrequent, low spenders; mostly garden"]
    assert "(median 1 order," in lapsed.description


def test_each_condition_selects_its_group_among_all_members(
    planted: tuple[list[Portrait], dict[str, str]], found: Discovery
) -> None:
    """As a saved segment, over every member (prospects too), the condition picks the group.

    The groups lie several standard deviations apart on scores and shares: a condition of
    bounds at the cluster's own 5th-50th percentiles should take almost nobody else, so
    precision is held to 0.95; recall to 0.8, since up to three bounds each may leave out
    the tail of the cluster below its 5th percentile (or above its 95th).
    """
    drawn, truth = planted
    groups = set()
    for cluster in found.clusters:
        picked = _selected(cluster.condition, drawn)
        group, hits = Counter(truth.get(m, "prospect") for m in picked).most_common(1)[0]
        groups.add(group)
        precision, recall = hits / len(picked), hits / PER_GROUP
        assert precision >= 0.95, (cluster.condition, precision)
        assert recall >= 0.8, (cluster.condition, recall)
        # What discovery reports is what the parsed condition does on the portraits.
        assert cluster.precision == pytest.approx(precision, abs=1e-4)
        assert cluster.recall == pytest.approx(recall, abs=1e-4)
        assert cluster.matched == len(picked)
    assert groups == set(GROUPS)


def test_conditions_parse_and_read_only_scores_and_shares(found: Discovery) -> None:
    for cluster in found.clusters:
        fields = parse(cluster.condition).fields
        assert fields and fields <= {"r_score", "f_score", "m_score", "frequency"} | {
            f"affinity.{c}" for c in ("kitchen", "home-decor", "garden", "toys")
        }
    assert found.features == (
        "r_score", "f_score", "m_score",
        "affinity.kitchen", "affinity.home-decor", "affinity.garden", "affinity.toys",
    )  # fmt: skip


def test_definitions_are_ready_to_post(found: Discovery) -> None:
    definitions = found.definitions()
    assert len({d["name"] for d in definitions}) == 3
    for definition, cluster in zip(definitions, found.clusters, strict=True):
        assert set(definition) == {"name", "condition", "description"}
        assert check_tag(definition["name"]) is None
        parse(definition["condition"])
        assert definition["description"].startswith(cluster.description)
        assert f"{PER_GROUP} of {3 * PER_GROUP} members who ordered" in definition["description"]
    json.dumps(definitions)


def test_the_same_members_give_the_same_segments(
    planted: tuple[list[Portrait], dict[str, str]], found: Discovery
) -> None:
    drawn, _ = planted
    assert discover(drawn, k=3, top_categories=4) == found


def test_without_scores_it_clusters_on_figures() -> None:
    """Before the first score boundaries: log figures, and bounds on days, orders, spend."""
    profiles, truth = population()
    drawn = portraits(profiles, scored=False)
    result = discover(drawn, k=3, top_categories=2)
    assert result.mode == "figures"
    assert result.features[:3] == ("recency_days", "frequency", "monetary")
    assert [c.size for c in result.clusters] == [PER_GROUP] * 3
    for cluster in result.clusters:
        assert not parse(cluster.condition).fields & {"r_score", "f_score", "m_score"}
        picked = _selected(cluster.condition, drawn)
        hits = Counter(truth.get(m, "prospect") for m in picked).most_common(1)[0][1]
        assert hits / len(picked) >= 0.95 and cluster.precision >= 0.95


def test_conditions_keep_members_without_an_order_out() -> None:
    """With no RFM bound, `frequency >= 1` keeps prospects out of the segment."""
    rng = random.Random(3)
    found = []
    for n in range(40):
        category = "garden" if n % 2 else "kitchen"
        found.append(
            {
                "recency_days": 10.0,
                "frequency": 2,
                "monetary": 100.0,
                "r_score": 3,
                "f_score": 3,
                "m_score": 3,
                f"affinity.{category}": round(rng.uniform(0.9, 1.0), 6),
            }
        )
    found.append({"recency_days": None, "frequency": 0, "affinity.kitchen": 1.0})
    result = discover_values(found, k=2, top_categories=2)
    assert result.without_order == 1
    for cluster in result.clusters:
        assert "frequency >= 1" in cluster.condition
        assert not parse(cluster.condition)({"affinity.kitchen": 1.0, "affinity.garden": 1.0})
        assert cluster.precision == 1.0 and cluster.recall == 1.0


def test_fewer_members_than_k_is_refused() -> None:
    one = {"recency_days": 1.0, "frequency": 1, "monetary": 5.0}
    with pytest.raises(NotEnoughMembers, match=r"2 members who ordered .* fewer than k=3"):
        discover_values([one, dict(one, monetary=7.0), {"frequency": 0}], k=3)
    with pytest.raises(NotEnoughMembers, match="only 1 different"):
        discover_values([one] * 5, k=2)
    with pytest.raises(ValueError, match="k is 2 to 20"):
        discover_values([one] * 30, k=21)


@pytest.mark.parametrize(
    "category, field",
    [
        ("kitchen", "affinity.kitchen"),
        ("home-decor", "affinity.home-decor"),
        ("Kids & Baby", "affinity['Kids & Baby']"),
        ("2024", "affinity['2024']"),
        ("and", "affinity['and']"),
        ("rock'n'roll", "affinity[\"rock'n'roll\"]"),
    ],
)
def test_every_category_is_named_as_conditions_read_it(category: str, field: str) -> None:
    assert category_field(category) == field
    assert parse(f"{field} >= 0.5")({f"affinity.{category}": 0.6})


def test_a_category_no_condition_can_name_is_not_a_feature() -> None:
    both = 'it\'s "quoted"'
    assert category_field(both) is None
    found = [
        {"recency_days": float(n), "frequency": 1 + n % 3, "monetary": 10.0 * n, both: 1.0}
        for n in range(20)
    ]
    for row in found:
        row[f"affinity.{both}"] = row.pop(both)
    result = discover_values(found, k=2)
    assert result.features == ("recency_days", "frequency", "monetary")
    assert "(k-means on standardised log recency, orders and spend: recency_days," in report(result)


def test_names_and_descriptions_fit_the_segments_api() -> None:
    """At most 64 characters of [a-z0-9_-] for a name, 500 for a description."""
    long = "x" * 480
    found = [
        {
            "recency_days": float(n),
            "frequency": 1 + n % 3,
            "monetary": 10.0 * n,
            f"affinity.{long if n % 2 else 'garden'}": 1.0,
        }
        for n in range(30)
    ]
    result = discover_values(found, k=2)
    assert f"affinity.{long}" in result.features
    for definition in result.definitions():
        assert check_tag(definition["name"]) is None
        assert len(definition["description"]) <= 500
        parse(definition["condition"])


def test_evaluation_samples_large_populations(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.profiles.discovery as discovery

    monkeypatch.setattr(discovery, "EVALUATION_LIMIT", 50)
    found = [
        {"recency_days": float(n % 50), "frequency": 1 + n % 7, "monetary": float(n)}
        for n in range(200)
    ]
    result = discover_values(found, k=2)
    assert result.evaluated_on == 50 < result.clustered == 200
    assert "on a sample of 50" in result.definitions()[0]["description"]


# The command, on a store built from native events.


def _purchase(member: str, n: int, at: datetime, category: str, price: float) -> Event:
    return Event.model_validate(
        {
            "type": "purchase",
            "member_id": member,
            "event_id": f"{member}-o{n}",
            "order_id": f"{member}-o{n}",
            "timestamp": at,
            "items": [{"item_id": f"{category}-1", "category": category, "price": price}],
        }
    )


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECOFLEET_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("RECOFLEET_PROFILES_DATABASE_URL", raising=False)
    return tmp_path


def _fill_store(members: int) -> None:
    """3 in 5 kitchen members with many recent orders, the others garden ones with one old
    order, and a visitor who never ordered."""
    now = FleetSettings().clock().now()
    store = SqlProfileStore.from_url(FleetSettings().sqlite_url("profiles"), ProfilesSettings())
    try:
        events = []
        for n in range(members):
            member = f"m-{n:03d}"
            if n % 5 < 3:
                events += [
                    _purchase(member, o, now - (2 + o) * DAY, "kitchen", 80.0) for o in range(6)
                ]
            else:
                events.append(_purchase(member, 0, now - 250 * DAY, "garden", 4.0))
        store.apply_events(events)
        store.apply_events(
            [Event.model_validate({"type": "view", "member_id": "visitor", "item_id": "x"})]
        )
        store.recompute_scoring(now)
    finally:
        store.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_discover_prints_each_cluster(capsys, data_dir: Path) -> None:
    _fill_store(20)
    code, out, err = run(capsys, "segments", "discover", "--k", "2", "--top-categories", "2")
    assert code == 0, err
    assert out.startswith("20 members who ordered, in 2 clusters")
    assert "1 of 21 members have no order and are left out" in out
    assert "1. recent-frequent-high-spenders-kitchen: 12 members (60.0%)" in out
    assert "2. lapsed-infrequent-low-spenders-garden: 8 members (40.0%)" in out
    assert "recent, frequent, high spenders; mostly kitchen (median 6 orders, 480 spent" in out
    conditions = [line.split("condition: ")[1] for line in out.splitlines() if "condition:" in line]
    assert len(conditions) == 2
    for condition in conditions:
        parse(condition)
    assert out.count("precision 1.00, recall 1.00") == 2


def test_discover_json_is_a_list_of_segment_definitions(capsys, data_dir: Path) -> None:
    _fill_store(20)
    code, out, _ = run(capsys, "segments", "discover", "--k", "2", "--json")
    assert code == 0
    definitions = json.loads(out)
    assert [d["name"] for d in definitions] == [
        "recent-frequent-high-spenders-kitchen",
        "lapsed-infrequent-low-spenders-garden",
    ]
    for definition in definitions:
        assert set(definition) == {"name", "condition", "description"}
        parse(definition["condition"])
    assert "12 of 20 members who ordered (60.0%)" in definitions[0]["description"]


def test_discover_refuses_more_clusters_than_members(capsys, data_dir: Path) -> None:
    _fill_store(3)
    code, out, err = run(capsys, "segments", "discover", "--k", "4")
    assert code == 1 and not out
    assert "recofleet segments: 3 members who ordered" in err and "fewer than k=4" in err


def test_discover_without_a_store_says_so(capsys, data_dir: Path) -> None:
    code, _, err = run(capsys, "segments", "discover", "--k", "3")
    assert code == 1
    assert "no profiles store" in err
    assert not (data_dir / "profiles.db").exists()


@pytest.mark.parametrize("k", ["1", "21", "many"])
def test_discover_keeps_k_within_bounds(capsys, data_dir: Path, k: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["segments", "discover", "--k", k])
    assert exit_.value.code == 2
    assert "--k" in capsys.readouterr().err


def test_members_without_personalization_consent_are_left_out(
    planted: tuple[list[Portrait], dict[str, str]],
) -> None:
    drawn, _ = planted
    withdrawn = {p.profile.member_id for p in drawn[::2]}
    consented = [
        dataclasses.replace(p, consent={**p.consent, "personalization": False})
        if p.profile.member_id in withdrawn
        else p
        for p in drawn
    ]
    found = discover(iter(consented), k=3, top_categories=4)
    assert found.seen == len(drawn) - len(withdrawn)
