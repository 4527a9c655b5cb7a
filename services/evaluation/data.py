"""Interaction data sets for offline evaluation, and the readers of the formats we support.

Three sources: the UCI Online Retail CSV (read through `services.datasets.online_retail`, so the
evaluation sees exactly the cleaning the fleet loads), the dunnhumby Complete Journey
transactions (with `products.csv` beside them for categories), and a generic CSV of
`member_id,item_id,timestamp[,type][,value][,category][,basket]` that any shop can export.
Every reader returns a `Dataset` whose interactions are sorted by time, and raises `DataError`
naming the file and line on bad input.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.events import EventType
from services.datasets import online_retail
from services.evaluation.progress import bar, counter

PURCHASE = EventType.PURCHASE.value
EVENT_TYPES = frozenset(t.value for t in EventType)
KINDS = ("online_retail", "complete_journey", "csv")

CJ_TRANSACTIONS = "transactions_sample.csv"
CJ_PRODUCTS = "products.csv"
CJ_COLUMNS = ("household_id", "basket_id", "product_id", "quantity", "transaction_timestamp")
CSV_COLUMNS = ("member_id", "item_id", "timestamp")


class DataError(ValueError):
    """A data file that cannot be read: the message names the file and, when known, the line."""


@dataclass(frozen=True, slots=True)
class Interaction:
    """One member-item event: a purchased line, a view, a rating..."""

    member_id: str
    item_id: str
    at: datetime  # tz-aware, UTC
    type: str = PURCHASE
    value: float = 1.0  # quantity for purchases, the rating for `rate`
    basket: str = ""  # order / basket id when the source has one


@dataclass
class Dataset:
    """A whole data set: interactions sorted by time, plus what is known about the items."""

    name: str
    source: str
    interactions: list[Interaction]
    categories: dict[str, str] = field(default_factory=dict)  # item -> category, may be empty
    prices: dict[str, float] = field(default_factory=dict)  # item -> typical unit price
    dropped: dict[str, int] = field(default_factory=dict)  # cleaning: reason -> rows dropped

    def describe(self) -> dict[str, Any]:
        """Counts for the report: members, items, interactions, baskets, types, time span."""
        rows = self.interactions
        return {
            "name": self.name,
            "source": self.source,
            "members": len({i.member_id for i in rows}),
            "items": len({i.item_id for i in rows}),
            "interactions": len(rows),
            "baskets": len({(i.member_id, i.basket) for i in rows if i.basket}),
            "types": dict(Counter(i.type for i in rows).most_common()),
            "first": rows[0].at.isoformat() if rows else None,
            "last": rows[-1].at.isoformat() if rows else None,
            "categorised_items": len(self.categories),
            "priced_items": len(self.prices),
            "dropped": dict(self.dropped),
        }


def by_time(interactions: Iterable[Interaction]) -> list[Interaction]:
    """Sorted by time; stable, so same-time interactions keep their file order."""
    return sorted(interactions, key=lambda i: i.at)


def parse_timestamp(text: str) -> datetime:
    """ISO 8601 (naive means UTC) or Unix seconds (int or float) -> aware UTC datetime."""
    raw = text.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"Unix seconds out of range: {raw!r}") from exc
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"not an ISO 8601 timestamp nor Unix seconds: {raw!r}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _missing_file(path: Path) -> DataError:
    return DataError(f"{path}: no such file")


# --------------------------------------------------------------------------- Online Retail


def read_online_retail(path: str | os.PathLike[str], progress: bool = False) -> Dataset:
    """The cleaned purchases of the UCI Online Retail CSV: one interaction per invoice line.

    Cleaning, line merging, UK-time-to-UTC and the category taxonomy are those of
    `services.datasets.online_retail`; basket = InvoiceNo, value = quantity, price = median
    unit price.
    """
    file = Path(path)
    if not file.is_file():
        raise _missing_file(file)
    # One opaque call of a few seconds: the bar shows that it runs and how long it took.
    with counter(f"reading {file.name}", progress, total=1) as shown:
        try:
            source = online_retail.load_source(file)
        except ValueError as exc:  # it names the file and line already
            raise DataError(str(exc)) from exc
        shown.update()
    interactions = [
        Interaction(
            invoice.member_id,
            line.item_id,
            invoice.timestamp,
            PURCHASE,
            float(line.quantity),
            invoice.invoice_no,
        )
        for invoice in source.invoices
        for line in invoice.lines
    ]
    items = {i.item_id for i in interactions}
    prices = {item: source.median_price(item) for item in items}
    return Dataset(
        name="online_retail",
        source=str(file),
        interactions=by_time(interactions),
        categories={item: source.category(item) for item in items},
        prices={item: price for item, price in prices.items() if price is not None},
    )


# --------------------------------------------------------------------------- Complete Journey


def read_complete_journey(path: str | os.PathLike[str], progress: bool = False) -> Dataset:
    """The Complete Journey transactions (the folder or its `transactions_sample.csv`).

    household_id -> member, product_id -> item, basket_id -> basket, quantity -> value;
    rows with quantity <= 0 (voided lines, no sale) are dropped. Categories come from
    `products.csv` beside the file (product_category, else department) when it is there.
    """
    file = Path(path)
    if file.is_dir():
        file = file / CJ_TRANSACTIONS
    if not file.is_file():
        raise _missing_file(file)
    interactions: list[Interaction] = []
    unit_prices: dict[str, list[float]] = {}
    dropped = 0
    for line, row in _rows(file, CJ_COLUMNS, progress):
        parsed = _cj_row(file, line, row)
        if parsed is None:
            dropped += 1
            continue
        interactions.append(parsed[0])
        if parsed[1] is not None:
            unit_prices.setdefault(parsed[0].item_id, []).append(parsed[1])
    items = {i.item_id for i in interactions}
    products = file.with_name(CJ_PRODUCTS)
    return Dataset(
        name="complete_journey",
        source=str(file),
        interactions=by_time(interactions),
        categories=_cj_categories(products, items) if products.is_file() else {},
        prices={item: round(statistics.median(v), 2) for item, v in unit_prices.items()},
        dropped={"quantity <= 0": dropped} if dropped else {},
    )


def _cj_row(file: Path, line: int, row: dict[str, str]) -> tuple[Interaction, float | None] | None:
    """One transaction row -> (interaction, unit price or None); None for a voided line."""
    quantity = _number(file, line, row, "quantity")
    if quantity <= 0:
        return None
    at = _timestamp(file, line, row, "transaction_timestamp")
    member = _required(file, line, row, "household_id")
    item = _required(file, line, row, "product_id")
    interaction = Interaction(member, item, at, PURCHASE, quantity, row["basket_id"].strip())
    sales = (row.get("sales_value") or "").strip()
    price = _number(file, line, row, "sales_value") / quantity if sales else None
    return interaction, price


def _cj_categories(products: Path, items: set[str]) -> dict[str, str]:
    """item -> product_category (department when the category is empty), for `items` only."""
    categories: dict[str, str] = {}
    for _, row in _rows(products, ("product_id", "department", "product_category"), False):
        item = row["product_id"].strip()
        if item in items:
            label = row["product_category"].strip() or row["department"].strip()
            if label:
                categories[item] = label
    return categories


# --------------------------------------------------------------------------- generic CSV


def read_interactions_csv(path: str | os.PathLike[str], progress: bool = False) -> Dataset:
    """The generic format: `member_id,item_id,timestamp` and optional columns.

    `type` is a native event type (default purchase), `value` a number (default 1.0; the rating
    for `rate`), `category` fills the item's category, `basket` groups lines of one order.
    `timestamp` is ISO 8601 (naive = UTC) or Unix seconds.
    """
    file = Path(path)
    if not file.is_file():
        raise _missing_file(file)
    interactions: list[Interaction] = []
    categories: dict[str, str] = {}
    for line, row in _rows(file, CSV_COLUMNS, progress):
        interaction = _csv_row(file, line, row)
        interactions.append(interaction)
        category = (row.get("category") or "").strip()
        if category:
            categories[interaction.item_id] = category
    return Dataset(
        name=file.stem,
        source=str(file),
        interactions=by_time(interactions),
        categories=categories,
    )


def _csv_row(file: Path, line: int, row: dict[str, str]) -> Interaction:
    kind = (row.get("type") or "").strip().lower() or PURCHASE
    if kind not in EVENT_TYPES:
        known = ", ".join(sorted(EVENT_TYPES))
        raise DataError(f"{file}:{line}: column 'type': unknown event type {kind!r} ({known})")
    has_value = bool((row.get("value") or "").strip())
    return Interaction(
        member_id=_required(file, line, row, "member_id"),
        item_id=_required(file, line, row, "item_id"),
        at=_timestamp(file, line, row, "timestamp"),
        type=kind,
        value=_number(file, line, row, "value") if has_value else 1.0,
        basket=(row.get("basket") or "").strip(),
    )


# --------------------------------------------------------------------------- shared parsing


def _rows(
    file: Path, required: tuple[str, ...], progress: bool
) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row by column name) for each data row; DataError on a missing column."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                yield from _records(file, reader, required, progress)
            except UnicodeDecodeError as exc:
                raise DataError(f"{file}:{reader.line_num + 1}: not UTF-8 text: {exc}") from None
            except csv.Error as exc:
                raise DataError(f"{file}:{reader.line_num}: {exc}") from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read: {exc.strerror}") from exc


def _records(
    file: Path, reader: Any, required: tuple[str, ...], progress: bool
) -> Iterator[tuple[int, dict[str, str]]]:
    header = [name.strip() for name in next(reader, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise DataError(f"{file}:1: missing column(s) {', '.join(missing)} (header: {header})")
    for record in bar(reader, f"reading {file.name}", progress, unit="rows"):
        if not any(cell.strip() for cell in record):
            continue  # blank lines, as spreadsheets leave at the end
        if len(record) != len(header):
            raise DataError(
                f"{file}:{reader.line_num}: {len(record)} fields, the header has {len(header)}"
            )
        yield reader.line_num, dict(zip(header, record, strict=True))


def _required(file: Path, line: int, row: dict[str, str], column: str) -> str:
    value = row[column].strip()
    if not value:
        raise DataError(f"{file}:{line}: column {column!r} is empty")
    return value


def _number(file: Path, line: int, row: dict[str, str], column: str) -> float:
    raw = row[column].strip()
    try:
        value = float(raw)
    except ValueError:
        raise DataError(f"{file}:{line}: column {column!r}: not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{file}:{line}: column {column!r}: not a finite number: {raw!r}")
    return value


def _timestamp(file: Path, line: int, row: dict[str, str], column: str) -> datetime:
    try:
        return parse_timestamp(row[column])
    except ValueError as exc:
        raise DataError(f"{file}:{line}: column {column!r}: {exc}") from None


# --------------------------------------------------------------------------- any format


def sniff(path: str | os.PathLike[str]) -> str:
    """The kind of data at `path` from its header (or, for a folder, the files in it)."""
    file = Path(path)
    if file.is_dir():
        if (file / CJ_TRANSACTIONS).is_file():
            return "complete_journey"
        raise DataError(f"{file}: a folder, but without {CJ_TRANSACTIONS}")
    if not file.is_file():
        raise _missing_file(file)
    with open(file, newline="", encoding="utf-8-sig", errors="replace") as handle:
        header = {name.strip() for name in next(csv.reader(handle), [])}
    if {"InvoiceNo", "StockCode", "CustomerID"} <= header:
        return "online_retail"
    if {"household_id", "basket_id", "product_id"} <= header:
        return "complete_journey"
    if set(CSV_COLUMNS) <= header:
        return "csv"
    raise DataError(
        f"{file}:1: unknown format: expected the Online Retail, Complete Journey or generic "
        f"header ({','.join(CSV_COLUMNS)}[,type,value,category,basket])"
    )


def read_dataset(
    path: str | os.PathLike[str], kind: str = "auto", progress: bool = False
) -> Dataset:
    """Read `path` with the reader of `kind` (one of KINDS), or the sniffed one for "auto"."""
    chosen = sniff(path) if kind == "auto" else kind
    if chosen == "online_retail":
        return read_online_retail(path, progress)
    if chosen == "complete_journey":
        return read_complete_journey(path, progress)
    if chosen == "csv":
        return read_interactions_csv(path, progress)
    raise DataError(f"unknown data format {kind!r}: auto, {', '.join(KINDS)}")
