"""Read the public UCI Online Retail CSV and convert it to native recofleet events.

The data set (a UK online gift-ware retailer, 2010-12-01 .. 2011-12-09) is by Chen, Sain & Guo
(2012), "Data mining for the online retail industry", J. Database Marketing & Customer Strategy
Management 19(3), doi:10.1057/dbm.2012.17; the copy read here comes from the CRAN package
`onlineretail` (CC0, with the donor's permission). Its CSV columns are InvoiceNo, StockCode,
Description, Quantity, InvoiceDate (`YYYY-MM-DD HH:MM:SS`, UK local time), UnitPrice (GBP),
CustomerID (empty for many rows) and Country.

What the conversion does:

* cleaning: rows without a CustomerID, cancellations (InvoiceNo starting with "C"),
  Quantity <= 0, UnitPrice <= 0 and non-product StockCodes (postage, fees, manual adjustments,
  gift vouchers: see `is_product_code`) are dropped;
* one `purchase` event per invoice, whose `items` are its lines; lines of the same StockCode are
  merged (quantities summed, price = quantity-weighted average); `event_id` is derived from the
  InvoiceNo so that loading the same data twice is idempotent; the timestamp is the invoice's
  earliest InvoiceDate read as Europe/London time and converted to UTC;
* a category per item, derived from its (most frequent) Description by an ordered keyword
  taxonomy (`categorize`): the source has no categories, so these are our labels;
* one `CatalogItem` per item, priced at the median UnitPrice of its clean rows.

`write_sample` writes a small reproducible sample (gzip JSON lines) that the fleet bundles under
`data/sample/`; `load_jsonl_gz` reads such files back. Run as a module for the CLI:

    python -m services.datasets.online_retail --source online_retail.csv --out data/sample \
        --members 600 --seed 42
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import random
import re
import statistics
import string
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from zoneinfo import ZoneInfo

from pydantic import BaseModel

from services.common.events import CatalogItem, Event, EventType

SOURCE_TIMEZONE = ZoneInfo("Europe/London")
CURRENCY = "GBP"
EVENT_ID_PREFIX = "olr-"
SOURCE_NAME = "uci-online-retail"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
REQUIRED_COLUMNS = (
    "InvoiceNo",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "UnitPrice",
    "CustomerID",
    "Country",
)
EVENTS_FILE = "events.jsonl.gz"
CATALOG_FILE = "catalog.jsonl.gz"
# EventItem accepts at most this quantity per line; no merged line of the real data comes close
# (the largest is 80,995), but a hand-made file should not make the whole conversion fail.
MAX_LINE_QUANTITY = 100_000
# Share of a sample drawn from members with exactly one invoice (the rest have two or more).
SINGLE_INVOICE_SHARE = 0.1

# StockCodes that are not products: postage, carriage, fees, discounts, manual adjustments,
# samples, bad-debt adjustments, charity commission, cushion pads sold at a token price.
NON_PRODUCT_CODES = frozenset(
    {
        "POST",
        "DOT",
        "M",
        "C2",
        "D",
        "S",
        "B",
        "BANK CHARGES",
        "AMAZONFEE",
        "CRUK",
        "PADS",
        # Numeric codes that are service lines too.
        "23444",  # Next Day Carriage
        "23574",  # PACKING CHARGE
        "23702",  # High Resolution Image
    }
)

_MEMBER_ID = re.compile(r"(\d+)(?:\.0+)?")

_M = TypeVar("_M", bound=BaseModel)


def is_product_code(code: str) -> bool:
    """Whether a StockCode names a product.

    Products have a numeric code (`85123A`, `22423`, `DCGS0003`); service lines have an all-letter
    code (`POST`, `DOT`, `M`, `BANK CHARGES`, `AMAZONFEE`, ...), `C2` (carriage) or a gift-voucher
    code (`gift_0001_20`), plus three numeric service codes (`23444` next-day carriage, `23574`
    packing charge, `23702` image fee). The all-letter rule also drops `DCGSSBOY`/`DCGSSGIRL`,
    which only occur on rows without a CustomerID.
    """
    code = code.strip().upper()
    if not code or code in NON_PRODUCT_CODES or code.startswith("GIFT_"):
        return False
    return any(ch.isdigit() for ch in code)


def member_id_of(raw: str) -> str | None:
    """The member id for a CustomerID cell: `"17850"` or `"17850.0"` -> `"17850"`; empty -> None."""
    value = raw.strip()
    if not value:
        return None
    match = _MEMBER_ID.fullmatch(value)
    return match.group(1) if match else value


def to_utc(local: datetime) -> datetime:
    """Read a naive InvoiceDate as Europe/London wall-clock time and return it in UTC.

    In the autumn hour that occurs twice the earlier (summer-time) reading is taken (fold=0).
    """
    return local.replace(tzinfo=SOURCE_TIMEZONE).astimezone(UTC)


# --------------------------------------------------------------------------- categories

# Ordered rules, first match wins: (category, "KEYWORD|KEYWORD|..."). A category may have several
# rules so that precise phrases are tried first and weak hints (a material, a motif, a design line)
# last. Keywords match whole words of the upper-cased description (letters on either side break a
# match, digits and punctuation don't) and also their plural with S or ES appended.
CATEGORY_RULES: tuple[tuple[str, str], ...] = (
    (
        "christmas",
        "CHRISTMAS|XMAS|ADVENT|SANTA|REINDEER|SNOWFLAKE|SNOWMAN|NATIVITY|BAUBLE|STOCKING|"
        "NOEL|ANGEL|HOLLY|MISTLETOE|POINSETTIA|NUTCRACKER|TREE DECORATION|CHRISTMAS CRACKER",
    ),
    # Precise phrases that a broader keyword of an earlier category would otherwise claim.
    (
        "jewellery",
        "BAG CHARM|KEYRING|KEY RING|KEY CHAIN|KEY FOB|UMBRELLA|HAND WARMER|POCKET WARMER",
    ),
    ("toys", "SOFT TOY|PLAYING CARDS|DRAWING SLATE|BUBBLES|MARBLES|SKITTLES"),
    ("textiles", "CUSHION COVER|C/COVER|TEA COSY|EGG COSY"),
    ("bath", "HOT WATER BOTTLE|FIRST AID|SOAP DISH|SOAP HOLDER|BATHROOM SCALES|WASHBAG|WASH BAG"),
    ("home-decor", "WALL ART|PHOTO FRAME|PHOTOFRAME|DOORSTOP|DOOR STOP|DOORMAT"),
    ("storage", "MONEY BOX|MONEY BANK|PIGGY BANK|TRINKET POT|TRINKET BOX|JEWELLERY BOX"),
    ("stationery", "PIN CUSHION|SEWING KIT|MEASURING TAPE|STATIONERY|JOURNAL"),
    (
        "candles-lights",
        "CANDLE|CANDLEHOLDER|CANDLESTICK|CANDLEPOT|T-LIGHT|TLIGHT|TEALIGHT|TEA LIGHT|LIGHT|"
        "NIGHTLIGHT|LIGHTBULB|LANTERN|LAMP|LAMPSHADE|CHANDELIER|INCENSE|OIL BURNER|TORCH|"
        "MATCHES|FRAGRANCE OIL",
    ),
    (
        "party",
        "PARTY|BUNTING|NAPKIN|BALLOON|CONFETTI|PINATA|STRAWS|INVITES|STREAMER|TATTOO|"
        "GRASS SKIRT|SOMBRERO|PARTY CONE",
    ),
    ("bags", "BAG|HANDBAG|SHOPPER|TOTE|RUCKSACK|BACKPACK|SATCHEL|PURSE"),
    (
        "kitchen",
        "MUG|CUP|TEACUP|SAUCER|PLATE|PLATTER|BOWL|FRUITBOWL|TEA|TEAPOT|TEATIME|TEA TOWEL|CAKE|"
        "CAKESTAND|CAKE CASES|LUNCH BOX|LUNCHBOX|JAR|BAKING|CUTLERY|SPOON|FORK|KNIFE|KITCHEN|"
        "PANTRY|APRON|OVEN|TRAY|DISH|JUG|BEAKER|COASTER|TUMBLER|COFFEE|MILK|JAM|SUGAR|EGG CUP|"
        "FOOD|SNACK|BISCUIT|RECIPE|CHOPPING BOARD|PAN|MEASURING|SCALES|DINNER|BREAKFAST|"
        "PICNIC|BOTTLE|FLASK|GLASSES|WINE|CHAMPAGNE|COCKTAIL|DRINK|DOILY|DOILIES|CUPCAKE|"
        "LOLLY|MOULD|SIEVE|COLANDER|TIMER|WASHING UP|PLACEMAT|TABLECLOTH|TABLE CLOTH|TRIVET|"
        "POPCORN|SWEETIE|CHOCOLATE|JELLY|HONEY|CONDIMENT|SALT|PEPPER|BREAD|BUTTER|CHEESE|"
        "SANDWICH|CUTTER|CHOPSTICKS|TOASTRACK|SQUEEZER|COOKING|ROLLING PIN|GOBLET|CADDY|LADLE|"
        "CHALICE|APERITIF GLASS|MILKSHAKE GLASS|TEA GLASS",
    ),
    (
        "toys",
        "TOY|GAME|DOLL|PUZZLE|JIGSAW|TEDDY|SOLDIER|SKIPPING ROPE|KITE|DOMINOES|YO-YO|"
        "SPINNING TOP|KNITTING NANCY|ROCKET|SNAKES AND LADDERS|SNAKES & LADDERS|BINGO|DRAUGHTS|"
        "CHESS|LUDO|BOOMERANG|WATER PISTOL|PLAYHOUSE|TEA SET|ROBOT|PAINT SET|COLOURING|CRAYONS|"
        "CHALK|PUPPET|INFLATABLE|HELICOPTER|FLYING DISC|MODELLING|NAUGHTS|CROQUET|ROUNDERS|"
        "BEACH BALL|FOOTBALL|HARMONICA|SPACEMAN|BUILDING BLOCK|BLOCKS|ALPHABET BLOCKS",
    ),
    (
        "jewellery",
        "NECKLACE|NECKL|NECKLAC|BRACELET|BRACLET|EARRINGS|EARRING|RING|PENDANT|CHARM|BEAD|"
        "BROOCH|HAIR|HAIRCLIP|HAIRBAND|HAIRSLIDE|HAIR SLIDE|DIAMANTE|JEWEL|JEWELLERY|JEWELLED|"
        "BANGLE|ANKLET|TIARA|CHOKER|LARIAT|SUNGLASSES|WALLET|GLOVES|SCARF|HAT|BADGE|CUFFLINKS|"
        "WATCH|PASSPORT|CARD HOLDER|CARDHOLDER|CRYSTAL|AMETHYST|PEARL|MURANO|GEMSTONE|"
        "HEADPHONES|EAR MUFF",
    ),
    (
        "stationery",
        "CARD|GREETING|POSTCARD|PAPER|NOTEBOOK|NOTEPAD|NOTE|NOTELETS|PEN|PENCIL|WRAP|"
        "GIFT WRAP|STICKER|ENVELOPE|TAPE|SKETCHBOOK|CALENDAR|DIARY|BOOK|ERASER|RUBBER|RULER|"
        "STAMP|TAG|LABEL|RIBBON|ORIGAMI|SEWING|CRAFT|ALBUM|SCRAPBOOK|BOOKMARK|PAPERWEIGHT|"
        "P'WEIGHT|CLIP|OFFICE|MARKER|HIGHLIGHTER|WRITING|SHARPENER|STENCIL|DRAWING|MEMO|"
        "MEMOBOARD|PAD|FOLDER|LETTER|SCISSOR|HOLE PUNCH|GLUE|THREAD|NEEDLE|KNITTING|EMBROIDERY|"
        "BUTTONS|ADDRESS|CHALKBOARD|BLACKBOARD|CANVAS|TISSUE REAM|REEL|CALCULATOR",
    ),
    (
        "garden",
        "GARDENING|PLANT|PLANTER|BIRD FEEDER|FEEDER|BIRD TABLE|BIRDHOUSE|BIRD HOUSE|DOVECOTE|"
        "WATERING CAN|WATERING|FLOWER POT|PLANT POT|SEED|TROWEL|GNOME|HEN HOUSE|WELLIES|"
        "WELLY|THERMOMETER|HERB|GREENHOUSE|OUTDOOR|SPADE|RAKE|PEG|WIND CHIME|WINDMILL|CLOCHE|"
        "PARASOL|DECKCHAIR|HAMMOCK|HOSE|SECATEURS|POTTING|GROW|SOW|TWINE|KNEELING",
    ),
    (
        "bath",
        "BATH|BATHROOM|SOAP|TOWEL|FLANNEL|TOILET|SPONGE|LIP GLOSS|NAIL|MAKE UP|MAKEUP|"
        "COSMETIC|TISSUES|SHOWER|TOOTHBRUSH|PERFUME|SCENT|SCENTED|LAVENDER|HAND CREAM|LOTION|"
        "COMPACT MIRROR|PLASTERS|POT POURRI|POT POURI",
    ),
    (
        "textiles",
        "QUILT|QUILTED|THROW|BLANKET|CURTAIN|FABRIC|PATCHWORK|RUG|BEDSPREAD|PILLOW|"
        "PILLOWCASE|SLIPPER|SOCKS|DRESS|TUTU|BIB|PONCHO|RAINCOAT|RAIN MAC|HOODIE|T-SHIRT|"
        "TABLE RUNNER|PATCHES|IRONING BOARD COVER",
    ),
    (
        "home-decor",
        "SIGN|FRAME|PHOTO|PICTURE|PRINT|CLOCK|CUSHION|MIRROR|DOOR|DOORSIGN|HOOK|WALL|KNOB|"
        "DRAWERKNOB|ORNAMENT|DECORATION|DECORATIVE|GARLAND|WREATH|VASE|PLAQUE|HANGER|COATHANGER|"
        "TILE|MAGNET|FAN|MOBILE|CHIME|ART|FLAG|PENNANT|SHELF|TABLE|CHAIR|STOOL|POUFFE|MAT|"
        "ARTIFICIAL FLOWER|FLOWER|ASHTRAY|FRIDGE|FIGURE|STATUE|SCULPTURE|BUDDHA|RADIO|"
        "COAT RACK|RACK|SCREEN|UMBRELLA STAND|SHELL|FLYING DUCKS",
    ),
    (
        "storage",
        "BOX|TIN|BASKET|DRAWER|CABINET|CUPBOARD|SIDEBOARD|STORAGE|TRINKET|CONTAINER|BIN|"
        "CRATE|CHEST|TIDY|ORGANISER|CASE|HAMPER|BUCKET|TRUNK|SAVINGS|POUCH|HOLDALL|"
        "WASTEPAPER|CANISTER|CANNISTER|KEEPSAKE",
    ),
    ("textiles", "CROCHET|KNITTED|LACE|COTTON|LINEN|FLOCK|GINGHAM|EMBROIDERED|FELT"),
    # Last resorts: design lines and motifs that only hint at a category.
    (
        "toys",
        "SPACEBOY|DOLLY|DOLLY GIRL|CIRCUS|DINOSAUR|BABUSHKA|FELTCRAFT|CHILDS|CHILDRENS|"
        "CHILDREN'S|KIDS|BABY|MAGIC|TOADSTOOL|BALL|MONSTER",
    ),
    ("garden", "GARDEN|BIRD|BIRDS|BUTTERFLY|BEE|LADYBIRD"),
    (
        "home-decor",
        "HANGING|BELL|STAND|ROSE|BLOSSOM|PAINTED|HEART|STAR|WOODEN|ZINC|METAL|ENAMEL|GLASS|"
        "CERAMIC|PORCELAIN|HOME|LOVE|EGG|EASTER|CHICK|RABBIT|BUNNY|HEN|FEATHER|HOLDER|"
        "SNOW|MUSHROOM|GEISHA|CACTUS|DOG|CAT|OWL|FROG",
    ),
)
OTHER_CATEGORY = "other"
# Every category `categorize` can return.
CATEGORIES: tuple[str, ...] = (
    "christmas",
    "kitchen",
    "candles-lights",
    "home-decor",
    "stationery",
    "party",
    "toys",
    "garden",
    "jewellery",
    "storage",
    "bath",
    "textiles",
    "bags",
    OTHER_CATEGORY,
)
assert {category for category, _ in CATEGORY_RULES} <= set(CATEGORIES)

# "LIGHT PINK" is a colour, not a light.
_LIGHT_COLOUR = re.compile(r"(?<![A-Z])LIGHT(?=\s+(?:PINK|BLUE|GREEN|PURPLE|BROWN|GREY|YELLOW)\b)")


def _rule_pattern(keywords: str) -> re.Pattern[str]:
    # Longest first so that the alternation tries "CAKE CASES" before "CAKE" within one rule.
    parts = {k.strip() for k in keywords.split("|") if k.strip()}
    words = sorted((re.escape(k).replace(r"\ ", r"\s+") for k in parts), key=len, reverse=True)
    return re.compile(r"(?<![A-Z])(?:" + "|".join(words) + r")(?:S|ES)?(?![A-Z])")


_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (category, _rule_pattern(keywords)) for category, keywords in CATEGORY_RULES
)


def categorize(description: str) -> str:
    """The shop category of an item from its free-text Description (first matching rule wins).

    The source data has no categories: this is a derived label, e.g.
    "WHITE HANGING HEART T-LIGHT HOLDER" -> "candles-lights", "JUMBO BAG RED RETROSPOT" -> "bags";
    descriptions matching no rule are "other".
    """
    text = _LIGHT_COLOUR.sub("", description.upper())
    for category, pattern in _RULES:
        if pattern.search(text):
            return category
    return OTHER_CATEGORY


# --------------------------------------------------------------------------- reading


class Row(NamedTuple):
    """One clean line of the CSV."""

    invoice_no: str
    item_id: str
    description: str
    quantity: int
    unit_price: float
    invoice_date: datetime  # naive, UK wall-clock time as in the source
    member_id: str
    country: str


class Line(NamedTuple):
    """One item of an invoice after merging its rows with the same StockCode."""

    item_id: str
    quantity: int
    price: float


@dataclass(frozen=True, slots=True)
class Invoice:
    """One clean invoice: becomes one `purchase` event."""

    invoice_no: str
    member_id: str
    timestamp: datetime  # UTC
    country: str
    revenue: float
    lines: tuple[Line, ...]


def read_rows(path: str | os.PathLike[str]) -> Iterator[Row]:
    """Yield the clean product rows of the CSV at `path`, in file order.

    Drops rows with an empty CustomerID, cancellations (InvoiceNo starting with "C"),
    Quantity <= 0, UnitPrice <= 0 and non-product StockCodes. Raises ValueError on a missing
    column or a cell that cannot be parsed.
    """
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        (i_invoice, i_code, i_description, i_quantity, i_date, i_price, i_customer, i_country) = (
            header.index(c) for c in REQUIRED_COLUMNS
        )
        width = len(header)
        dates: dict[str, datetime] = {}
        for record in reader:
            if not record:
                continue
            if len(record) < width:
                raise ValueError(f"{path}:{reader.line_num}: expected {width} fields")
            invoice_no = record[i_invoice].strip()
            member_id = member_id_of(record[i_customer])
            if not invoice_no or invoice_no[0] in "Cc" or member_id is None:
                continue
            code = record[i_code].strip().upper()
            if not is_product_code(code):
                continue
            try:
                quantity = int(float(record[i_quantity]))
                unit_price = float(record[i_price])
                raw_date = record[i_date].strip()
                invoice_date = dates.get(raw_date)
                if invoice_date is None:  # many rows share a date: parse each string once
                    invoice_date = dates[raw_date] = datetime.strptime(raw_date, DATE_FORMAT)
            except ValueError as exc:
                raise ValueError(f"{path}:{reader.line_num}: bad row: {exc}") from exc
            if quantity <= 0 or unit_price <= 0:
                continue
            yield Row(
                invoice_no=invoice_no,
                item_id=code,
                description=" ".join(record[i_description].split()),
                quantity=quantity,
                unit_price=unit_price,
                invoice_date=invoice_date,
                member_id=member_id,
                country=record[i_country].strip(),
            )


@dataclass
class _InvoiceAcc:
    member_id: str
    country: str
    first_date: datetime
    revenue: float = 0.0
    # item_id -> [quantity, amount = sum(quantity * unit_price)], in order of first appearance
    lines: dict[str, list[float]] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        amount = row.quantity * row.unit_price
        self.revenue += amount
        self.first_date = min(self.first_date, row.invoice_date)
        acc = self.lines.setdefault(row.item_id, [0, 0.0])
        acc[0] += row.quantity
        acc[1] += amount

    def build(self, invoice_no: str) -> Invoice:
        lines = tuple(
            Line(
                item_id=item_id,
                quantity=min(int(quantity), MAX_LINE_QUANTITY),
                price=round(amount / quantity, 2),
            )
            for item_id, (quantity, amount) in self.lines.items()
        )
        return Invoice(
            invoice_no=invoice_no,
            member_id=self.member_id,
            timestamp=to_utc(self.first_date),
            country=self.country,
            revenue=round(self.revenue, 2),
            lines=lines,
        )


@dataclass
class SourceData:
    """Everything the conversion needs from one pass over the CSV."""

    invoices: list[Invoice]
    descriptions: dict[str, Counter[str]]  # item_id -> description -> rows
    prices: dict[str, Counter[float]]  # item_id -> unit price -> rows

    def description(self, item_id: str) -> str:
        """The item's most frequent description (ties: alphabetically first); "" if unknown."""
        counts = self.descriptions.get(item_id)
        if not counts:
            return ""
        return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]

    def category(self, item_id: str) -> str:
        return categorize(self.description(item_id))

    def median_price(self, item_id: str) -> float | None:
        counts = self.prices.get(item_id)
        if not counts:
            return None
        values = sorted(counts.elements())
        return round(statistics.median(values), 2)

    def item_ids(self) -> list[str]:
        return sorted(self.descriptions)


def _collect(rows: Iterable[Row]) -> SourceData:
    invoices: dict[str, _InvoiceAcc] = {}
    descriptions: dict[str, Counter[str]] = {}
    prices: dict[str, Counter[float]] = {}
    for row in rows:
        acc = invoices.get(row.invoice_no)
        if acc is None:
            acc = invoices[row.invoice_no] = _InvoiceAcc(
                member_id=row.member_id, country=row.country, first_date=row.invoice_date
            )
        acc.add(row)
        if row.item_id not in descriptions:
            descriptions[row.item_id] = Counter()
            prices[row.item_id] = Counter()
        descriptions[row.item_id][row.description] += 1
        prices[row.item_id][row.unit_price] += 1
    return SourceData(
        invoices=[acc.build(invoice_no) for invoice_no, acc in invoices.items()],
        descriptions=descriptions,
        prices=prices,
    )


def load_source(path: str | os.PathLike[str]) -> SourceData:
    """Read and aggregate the CSV at `path` in one pass (the full file takes a few seconds)."""
    return _collect(read_rows(path))


def read_invoices(path: str | os.PathLike[str]) -> Iterator[Invoice]:
    """Yield the clean invoices of the CSV at `path` in order of first appearance.

    Rows of one invoice with the same StockCode are merged into one `Line` (quantities summed,
    price = quantity-weighted average rounded to 2 dp); `revenue` is round(sum(q * p), 2) over
    the invoice's clean rows; `timestamp` is its earliest InvoiceDate in UTC.
    """
    yield from load_source(path).invoices


# --------------------------------------------------------------------------- conversion


def event_id_for(invoice_no: str) -> str:
    """The deterministic event id of an invoice, so that reloading the data is idempotent."""
    return EVENT_ID_PREFIX + invoice_no


def invoice_to_event(invoice: Invoice, categories: dict[str, str]) -> Event:
    """The `purchase` event for one invoice; `categories` maps item ids to category slugs."""
    return Event.model_validate(invoice_to_native(invoice, categories))


def invoice_to_native(invoice: Invoice, categories: dict[str, str]) -> dict[str, Any]:
    """The same event as a native JSON object, not yet validated (loaders send these to
    ingestion, which validates them and says why it refuses any)."""
    return {
        "event_id": event_id_for(invoice.invoice_no),
        "type": EventType.PURCHASE.value,
        "member_id": invoice.member_id,
        "items": [
            {
                "item_id": line.item_id,
                "quantity": line.quantity,
                "price": line.price,
                "category": categories.get(line.item_id, OTHER_CATEGORY),
            }
            for line in invoice.lines
        ],
        "order_id": invoice.invoice_no,
        "revenue": invoice.revenue,
        "currency": CURRENCY,
        "timestamp": invoice.timestamp.isoformat(),
        "context": {"country": invoice.country, "source": SOURCE_NAME},
    }


def to_native(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The catalog and events of the CSV at `path` as native JSON objects, not validated."""
    data = load_source(path)
    invoices, categories = _chosen(data, None)
    events = [invoice_to_native(invoice, categories) for invoice in invoices]
    return [_catalog_entry(data, item_id) for item_id in sorted(categories)], events


def _events(data: SourceData, members: set[str] | None) -> list[Event]:
    invoices, categories = _chosen(data, members)
    return [invoice_to_event(invoice, categories) for invoice in invoices]


def _chosen(data: SourceData, members: set[str] | None) -> tuple[list[Invoice], dict[str, str]]:
    """The invoices of `members` (all when None) by time, and the category of each item in them."""
    chosen = [i for i in data.invoices if members is None or i.member_id in members]
    chosen.sort(key=lambda i: (i.timestamp, i.invoice_no))
    wanted = {line.item_id for invoice in chosen for line in invoice.lines}
    return chosen, {item_id: data.category(item_id) for item_id in wanted}


def _catalog(data: SourceData, item_ids: set[str] | None) -> list[CatalogItem]:
    items = []
    for item_id in data.item_ids():
        if item_ids is not None and item_id not in item_ids:
            continue
        items.append(CatalogItem.model_validate(_catalog_entry(data, item_id)))
    return items


def _catalog_entry(data: SourceData, item_id: str) -> dict[str, Any]:
    description = data.description(item_id)
    entry = {
        "item_id": item_id,
        "name": string.capwords(description) or None,
        "category": categorize(description),
        "price": data.median_price(item_id),
        "in_stock": True,
    }
    return {key: value for key, value in entry.items() if value is not None}


def _select(data: SourceData, count: int, seed: int) -> set[str]:
    if count < 0:
        raise ValueError("count must be >= 0")
    invoices_per_member = Counter(invoice.member_id for invoice in data.invoices)
    repeat = sorted(m for m, n in invoices_per_member.items() if n >= 2)
    single = sorted(m for m, n in invoices_per_member.items() if n == 1)
    rng = random.Random(seed)
    n_single = min(len(single), round(count * SINGLE_INVOICE_SHARE))
    n_repeat = min(len(repeat), count - n_single)
    n_single = min(len(single), count - n_repeat)  # top up if there are too few repeat buyers
    return set(rng.sample(repeat, n_repeat)) | set(rng.sample(single, n_single))


def to_events(path: str | os.PathLike[str], members: set[str] | None = None) -> list[Event]:
    """One `purchase` event per clean invoice of the CSV at `path`, sorted by timestamp.

    With `members`, only those members' invoices. Each item line carries its derived category.
    """
    return _events(load_source(path), members)


def to_catalog(path: str | os.PathLike[str], item_ids: set[str] | None = None) -> list[CatalogItem]:
    """One `CatalogItem` per product of the CSV at `path` (or only `item_ids`), sorted by id.

    Name = the item's most frequent description, title-cased; category = `categorize` of it;
    price = median UnitPrice of its clean rows; in_stock = True.
    """
    return _catalog(load_source(path), item_ids)


def to_catalog_and_events(
    path: str | os.PathLike[str], members: set[str] | None = None
) -> tuple[list[CatalogItem], list[Event]]:
    """`to_events(path, members)` and the catalog of the items in them, reading the CSV once."""
    data = load_source(path)
    events = _events(data, members)
    return _catalog(data, {line.item_id for event in events for line in event.items}), events


def select_members(path: str | os.PathLike[str], count: int, seed: int) -> set[str]:
    """A reproducible random sample of `count` member ids from the CSV at `path`.

    About 90% are drawn among members with two or more clean invoices (repeat buyers, whose
    history can be split in time for evaluation) and 10% among members with exactly one, so the
    sample also holds cold-ish members. The same file, count and seed give the same set.
    """
    return _select(load_source(path), count, seed)


# --------------------------------------------------------------------------- sample files


@dataclass(frozen=True)
class SampleSummary:
    """Counts of a written sample."""

    members: int
    events: int
    lines: int
    items: int
    categories: dict[str, int]  # category -> number of catalog items, most items first
    events_bytes: int
    catalog_bytes: int


def _write_jsonl_gz(path: Path, records: Iterable[bytes]) -> int:
    """Write one record per line, gzip with mtime=0 and no file name: byte-reproducible."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
        ):
            for record in records:
                gz.write(record)
                gz.write(b"\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def write_sample(
    source_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], members: int, seed: int
) -> SampleSummary:
    """Write `events.jsonl.gz` and `catalog.jsonl.gz` for a sample of `members` members.

    The events are those members' purchases (sorted by timestamp); the catalog holds only the
    items that appear in them. Both files are byte-reproducible for the same source, count and
    seed.
    """
    data = load_source(source_path)
    chosen = _select(data, members, seed)
    events = _events(data, chosen)
    item_ids = {line.item_id for event in events for line in event.items}
    catalog = _catalog(data, item_ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events_bytes = _write_jsonl_gz(out / EVENTS_FILE, (event.to_bytes() for event in events))
    catalog_bytes = _write_jsonl_gz(out / CATALOG_FILE, (item.to_bytes() for item in catalog))
    categories = Counter(item.category or OTHER_CATEGORY for item in catalog)
    return SampleSummary(
        members=len({event.member_id for event in events}),
        events=len(events),
        lines=sum(len(event.items) for event in events),
        items=len(catalog),
        categories=dict(sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))),
        events_bytes=events_bytes,
        catalog_bytes=catalog_bytes,
    )


def load_jsonl_gz(path: str | os.PathLike[str], model: type[_M]) -> list[_M]:
    """Read a gzip JSON-lines file (as written by `write_sample`) into `model` instances."""
    with gzip.open(path, "rb") as handle:
        return [model.model_validate_json(line) for line in handle if line.strip()]


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Write a sample of the Online Retail CSV and print its counts."""
    parser = argparse.ArgumentParser(
        prog="python -m services.datasets.online_retail",
        description="Convert a sample of the UCI Online Retail CSV to recofleet events.",
    )
    parser.add_argument("--source", required=True, help="path to online_retail.csv")
    parser.add_argument("--out", required=True, help="directory for events/catalog .jsonl.gz")
    parser.add_argument("--members", type=int, default=600, help="members to sample")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the sample")
    args = parser.parse_args(argv)
    summary = write_sample(args.source, args.out, args.members, args.seed)
    out = Path(args.out)
    print(f"members: {summary.members}")
    print(f"events:  {summary.events}")
    print(f"lines:   {summary.lines}")
    print(f"items:   {summary.items}")
    print("items per category:")
    for category, count in summary.categories.items():
        print(f"  {category:<15}{count:>6}  {count / max(summary.items, 1):6.1%}")
    print(f"{out / EVENTS_FILE}: {summary.events_bytes} bytes")
    print(f"{out / CATALOG_FILE}: {summary.catalog_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
