"""The UCI Online Retail reader: cleaning, merging, ids, time zones, categories, sample files."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.events import CatalogItem, Event, EventType
from services.datasets import online_retail as olr

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
ROWS = [
    # A summer invoice first: events must come out sorted by time, not file order.
    "536500,22423,REGENCY CAKESTAND 3 TIER,2,2011-06-15 14:30:00,12.75,13047.0,United Kingdom",
    # Winter invoice with a duplicated StockCode (merged), a POST line (dropped).
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850,"
    "United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom",
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,4,2010-12-01 08:26:00,2.95,17850,"
    "United Kingdom",
    "536365,POST,POSTAGE,1,2010-12-01 08:26:00,18.00,17850,United Kingdom",
    # A cancellation of a real product, and a discount cancellation.
    "C536379,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-6,2010-12-01 09:41:00,2.55,17850,"
    "United Kingdom",
    "C536383,D,Discount,-1,2010-12-01 09:49:00,27.50,17850,United Kingdom",
    # Missing customer; zero price; non-positive quantity without a C; a bank charge.
    "536414,22139,,56,2010-12-01 11:52:00,0.00,,United Kingdom",
    "536544,21773,DECORATIVE ROSE BATHROOM BOTTLE,1,2010-12-01 14:32:00,2.51,,United Kingdom",
    "536600,21123,SET/10 IVORY POLKADOT PARTY CANDLES,1,2011-07-01 10:00:00,0.00,12583,France",
    "536601,85123A,WHITE HANGING HEART T-LIGHT HOLDER,-3,2011-07-01 10:05:00,2.55,12583,France",
    "536602,BANK CHARGES,Bank Charges,1,2011-07-01 10:10:00,15.00,12583,France",
    # A second invoice of 13047, an item id in lower case and a variant description.
    "536501,22423,REGENCY CAKESTAND 3 TIER,1,2011-06-20 10:00:00,10.95,13047,United Kingdom",
    "536501,85123a,CREAM HANGING HEART T-LIGHT HOLDER,2,2011-06-20 10:00:00,2.55,13047,"
    "United Kingdom",
    "536501,71053,WHITE METAL LANTERN,1,2011-06-20 10:00:00,3.75,13047,United Kingdom",
    # One invoice of 12583 whose lines span two minutes.
    "536502,22423,REGENCY CAKESTAND 3 TIER,1,2011-07-01 10:01:00,12.75,12583,France",
    "536502,20725,LUNCH BAG RED RETROSPOT,10,2011-07-01 10:00:00,1.65,12583,France",
]


@pytest.fixture()
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "online_retail.csv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n", encoding="utf-8")
    return path


def by_order(events: list[Event]) -> dict[str, Event]:
    return {event.order_id or "": event for event in events}


# --------------------------------------------------------------------------- cleaning


def test_read_rows_drops_what_is_not_a_clean_product_purchase(csv_path: Path) -> None:
    rows = list(olr.read_rows(csv_path))
    assert {row.invoice_no for row in rows} == {"536500", "536365", "536501", "536502"}
    assert all(row.item_id not in {"POST", "D", "BANK CHARGES"} for row in rows)
    assert all(row.quantity > 0 and row.unit_price > 0 for row in rows)
    assert {row.member_id for row in rows} == {"13047", "17850", "12583"}  # "13047.0" -> "13047"
    assert "85123A" in {row.item_id for row in rows if row.invoice_no == "536501"}  # upper-cased


@pytest.mark.parametrize(
    ("code", "product"),
    [
        ("85123A", True),
        ("22423", True),
        ("DCGS0003", True),
        ("POST", False),
        ("DOT", False),
        ("M", False),
        ("m", False),
        ("C2", False),
        ("BANK CHARGES", False),
        ("AMAZONFEE", False),
        ("CRUK", False),
        ("PADS", False),
        ("gift_0001_20", False),
        ("23444", False),
        ("", False),
    ],
)
def test_is_product_code(code: str, product: bool) -> None:
    assert olr.is_product_code(code) is product


def test_member_id_of() -> None:
    assert olr.member_id_of("17850") == "17850"
    assert olr.member_id_of("17850.0") == "17850"
    assert olr.member_id_of(" 12346.0 ") == "12346"
    assert olr.member_id_of("") is None
    assert olr.member_id_of("   ") is None


def test_missing_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("InvoiceNo,StockCode\n536365,85123A\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing column"):
        list(olr.read_rows(path))


def test_unparsable_date_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        HEADER + "\n536365,85123A,X,6,01/12/2010 08:26,2.55,17850,United Kingdom\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="bad row"):
        list(olr.read_rows(path))


# --------------------------------------------------------------------------- invoices and events


def test_duplicate_stock_codes_in_an_invoice_are_merged(csv_path: Path) -> None:
    invoices = {invoice.invoice_no: invoice for invoice in olr.read_invoices(csv_path)}
    lines = {line.item_id: line for line in invoices["536365"].lines}
    assert list(lines) == ["85123A", "71053"]
    assert lines["85123A"].quantity == 10
    assert lines["85123A"].price == 2.71  # (6 * 2.55 + 4 * 2.95) / 10
    assert lines["71053"].quantity == 6
    assert lines["71053"].price == 3.39


def test_one_purchase_event_per_invoice(csv_path: Path) -> None:
    events = olr.to_events(csv_path)
    assert len(events) == 4
    winter = by_order(events)["536365"]
    assert winter.type is EventType.PURCHASE
    assert winter.member_id == "17850"
    assert winter.currency == "GBP"
    assert winter.revenue == 47.44  # 6 * 2.55 + 6 * 3.39 + 4 * 2.95
    assert [(i.item_id, i.quantity, i.price, i.category) for i in winter.items] == [
        ("85123A", 10, 2.71, "candles-lights"),
        ("71053", 6, 3.39, "candles-lights"),
    ]
    assert winter.context == {"country": "United Kingdom", "source": "uci-online-retail"}


def test_event_ids_are_deterministic(csv_path: Path) -> None:
    first = olr.to_events(csv_path)
    second = olr.to_events(csv_path)
    assert [e.event_id for e in first] == [
        "olr-536365",
        "olr-536500",
        "olr-536501",
        "olr-536502",
    ]
    assert [e.to_bytes() for e in first] == [e.to_bytes() for e in second]


def test_timestamps_are_london_time_converted_to_utc(csv_path: Path) -> None:
    events = by_order(olr.to_events(csv_path))
    # GMT in winter: the wall clock is UTC.
    assert events["536365"].timestamp == datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    # BST in summer: one hour ahead of UTC.
    assert events["536500"].timestamp == datetime(2011, 6, 15, 13, 30, tzinfo=UTC)
    # An invoice whose lines span two minutes takes the earliest.
    assert events["536502"].timestamp == datetime(2011, 7, 1, 9, 0, tzinfo=UTC)
    assert b'"timestamp":"2011-06-15T13:30:00Z"' in events["536500"].to_bytes()


def test_to_utc_handles_the_clock_changes() -> None:
    assert olr.to_utc(datetime(2011, 3, 27, 0, 59)) == datetime(2011, 3, 27, 0, 59, tzinfo=UTC)
    assert olr.to_utc(datetime(2011, 3, 27, 2, 0)) == datetime(2011, 3, 27, 1, 0, tzinfo=UTC)
    assert olr.to_utc(datetime(2011, 10, 30, 2, 0)) == datetime(2011, 10, 30, 2, 0, tzinfo=UTC)


def test_events_are_sorted_by_timestamp_and_filtered_by_member(csv_path: Path) -> None:
    events = olr.to_events(csv_path)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    only = olr.to_events(csv_path, members={"13047"})
    assert [e.order_id for e in only] == ["536500", "536501"]
    assert olr.to_events(csv_path, members=set()) == []


# --------------------------------------------------------------------------- catalog


def test_catalog(csv_path: Path) -> None:
    catalog = {item.item_id: item for item in olr.to_catalog(csv_path)}
    assert sorted(catalog) == ["20725", "22423", "71053", "85123A"]
    heart = catalog["85123A"]
    assert heart.name == "White Hanging Heart T-light Holder"  # most frequent description
    assert heart.category == "candles-lights"
    assert heart.price == 2.55  # median of 2.55, 2.95, 2.55
    assert heart.in_stock is True
    assert catalog["22423"].price == 12.75  # median of 12.75, 10.95, 12.75
    assert catalog["71053"].price == 3.57  # median of 3.39, 3.75
    assert catalog["22423"].category == "kitchen"
    assert catalog["20725"].category == "bags"
    subset = olr.to_catalog(csv_path, item_ids={"71053", "NOPE"})
    assert [item.item_id for item in subset] == ["71053"]


def test_event_categories_match_the_catalog(csv_path: Path) -> None:
    catalog = {item.item_id: item.category for item in olr.to_catalog(csv_path)}
    for event in olr.to_events(csv_path):
        for line in event.items:
            assert line.category == catalog[line.item_id]


# --------------------------------------------------------------------------- categories


@pytest.mark.parametrize(
    ("description", "category"),
    [
        ("WHITE HANGING HEART T-LIGHT HOLDER", "candles-lights"),
        ("WHITE METAL LANTERN", "candles-lights"),
        ("JUMBO BAG RED RETROSPOT", "bags"),
        ("LUNCH BAG RED RETROSPOT", "bags"),
        ("REGENCY CAKESTAND 3 TIER", "kitchen"),
        ("PACK OF 72 RETROSPOT CAKE CASES", "kitchen"),
        ("SPACEBOY LUNCH BOX", "kitchen"),
        ("SET OF 3 CAKE TINS PANTRY DESIGN", "kitchen"),
        ("PAPER CHAIN KIT 50'S CHRISTMAS", "christmas"),
        ("PARTY BUNTING", "party"),
        ("SET/20 RED RETROSPOT PAPER NAPKINS", "party"),
        ("ALARM CLOCK BAKELIKE RED", "home-decor"),
        ("DOORMAT RED RETROSPOT", "home-decor"),
        ("WOODEN PICTURE FRAME WHITE FINISH", "home-decor"),
        ("STRAWBERRY CERAMIC TRINKET BOX", "storage"),
        ("FELTCRAFT DOLL MOLLY", "toys"),
        ("MINI JIGSAW SPACEBOY", "toys"),
        ("WATERING CAN PINK BUNNY", "garden"),
        ("ROSE DU SUD CUSHION COVER", "textiles"),
        ("KNITTED UNION FLAG HOT WATER BOTTLE", "bath"),
        ("PACK OF 12 LONDON TISSUES", "bath"),
        ("DIAMANTE NECKLACE", "jewellery"),
        ("HAND WARMER UNION JACK", "jewellery"),
        ("MINI HIGHLIGHTER PENS", "stationery"),  # LIGHT inside a word is not a light
        ("PACK OF 12 SPACEBOY TISSUES", "bath"),
        ("jumbo bag red retrospot", "bags"),  # case-insensitive
        ("", "other"),
        ("POSTAGE", "other"),
    ],
)
def test_categorize(description: str, category: str) -> None:
    assert olr.categorize(description) == category
    assert category in olr.CATEGORIES


def test_light_as_a_colour_is_not_a_light() -> None:
    assert olr.categorize("BISCUITS SMALL BOWL LIGHT BLUE") == "kitchen"
    assert olr.categorize("SET OF 3 BIRD LIGHT PINK FEATHER") != "candles-lights"


# --------------------------------------------------------------------------- members and samples


def test_select_members_is_reproducible_and_prefers_repeat_buyers(csv_path: Path) -> None:
    chosen = olr.select_members(csv_path, count=2, seed=7)
    assert chosen == olr.select_members(csv_path, count=2, seed=7)
    assert len(chosen) == 2
    assert "13047" in chosen  # the only member with two invoices
    assert olr.select_members(csv_path, count=10, seed=1) == {"13047", "17850", "12583"}
    assert olr.select_members(csv_path, count=0, seed=1) == set()


def test_write_sample_is_byte_reproducible(csv_path: Path, tmp_path: Path) -> None:
    first = olr.write_sample(csv_path, tmp_path / "a", members=2, seed=3)
    second = olr.write_sample(csv_path, tmp_path / "b", members=2, seed=3)
    assert first == second
    for name in (olr.EVENTS_FILE, olr.CATALOG_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp"))

    events = olr.load_jsonl_gz(tmp_path / "a" / olr.EVENTS_FILE, Event)
    catalog = olr.load_jsonl_gz(tmp_path / "a" / olr.CATALOG_FILE, CatalogItem)
    assert first.members == len({e.member_id for e in events}) == 2
    assert first.events == len(events)
    assert first.lines == sum(len(e.items) for e in events)
    # The catalog holds exactly the items of the sampled events.
    assert {i.item_id for i in catalog} == {line.item_id for e in events for line in e.items}
    assert first.items == len(catalog)
    assert sum(first.categories.values()) == len(catalog)
    # One JSON event per line, as Event.to_bytes() writes it.
    raw = gzip.decompress((tmp_path / "a" / olr.EVENTS_FILE).read_bytes()).splitlines()
    assert raw == [e.to_bytes() for e in events]


def test_cli(csv_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = olr.main(["--source", str(csv_path), "--out", str(out), "--members", "3", "--seed", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "members: 3" in printed
    assert "events:  4" in printed
    assert "candles-lights" in printed
    assert (out / olr.EVENTS_FILE).exists()
    assert (out / olr.CATALOG_FILE).exists()


# --------------------------------------------------------------------------- the bundled sample

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def test_bundled_sample_is_consistent() -> None:
    events = olr.load_jsonl_gz(SAMPLE / olr.EVENTS_FILE, Event)
    catalog = {
        item.item_id: item for item in olr.load_jsonl_gz(SAMPLE / olr.CATALOG_FILE, CatalogItem)
    }
    assert 500 <= len({e.member_id for e in events}) <= 700
    assert len({e.event_id for e in events}) == len(events)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    for event in events:
        assert event.type is EventType.PURCHASE
        assert event.event_id == "olr-" + (event.order_id or "")
        assert event.currency == "GBP"
        for line in event.items:
            assert line.item_id in catalog
            assert line.category == catalog[line.item_id].category
    # Every catalog item is bought in the sample, and few are uncategorised.
    assert set(catalog) == {line.item_id for e in events for line in e.items}
    other = sum(1 for item in catalog.values() if item.category == "other")
    assert other / len(catalog) < 0.25
    sizes = sum((SAMPLE / name).stat().st_size for name in (olr.EVENTS_FILE, olr.CATALOG_FILE))
    assert sizes < 1_500_000


def test_to_catalog_and_events_reads_once_and_agrees(csv_path: Path) -> None:
    catalog, events = olr.to_catalog_and_events(csv_path, members={"12583"})
    assert events == olr.to_events(csv_path, members={"12583"})
    assert catalog == olr.to_catalog(csv_path, item_ids={"22423", "20725"})
