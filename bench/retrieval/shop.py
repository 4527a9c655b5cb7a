"""A synthetic shop of N items loaded into retrieval's store and trained, as a fleet would.

    python -m bench.retrieval.shop --data-dir DIR --items N --out OUT.json

A process of its own, so that its peak RSS is the load's and training's alone. It opens the
interaction store and the model store where the retrieval service looks for them
(`services.retrieval.server.open_store` / `open_models` under RECOFLEET_DATA_DIR), saves
the catalog, applies native purchase events in the consumer's batches (`apply_events`,
events as `WireEvent`, as they come off the bus) and trains with the public
`services.retrieval.training.train(store, models, settings, force=True)`, so the model
files are whatever the trainer writes today.

The purchases: item categories are bench/retrieval/synthetic.py's clusters (Zipf sizes),
item popularity log-normal within its category; each member likes one to three
categories (by their size), places a geometric number of orders (mean 2.5) of 1 + a
Poisson(2) number of lines from those categories; items no member bought are then bought
once each by a member who likes their category, so every item is in the model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.profiles import peak_rss_mib, rss_mib
from bench.retrieval.synthetic import item_factors
from services.common.events import CatalogItem, EventType, WireEvent, WireItem
from services.common.settings import FleetSettings
from services.retrieval.server import open_models, open_store
from services.retrieval.settings import RetrievalSettings
from services.retrieval.training import train

EVENTS_PER_BATCH = 2000  # about what the consumer applies at once
START = datetime(2025, 1, 1, tzinfo=UTC)
DAYS = 365


class Catalog:
    """Each item's category and price, and per category its items and their popularity."""

    def __init__(self, items: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.category = item_factors(items, seed=seed).category
        self.price = np.round(rng.lognormal(1.5, 0.8, size=items), 2) + 0.5
        weight = rng.lognormal(0.0, 1.0, size=items)
        order = np.argsort(self.category, kind="stable")
        bounds = np.searchsorted(self.category[order], np.arange(self.category.max() + 2))
        self.members_of = [order[a:b] for a, b in itertools.pairwise(bounds)]
        self.cumulative = [np.cumsum(weight[ids]) for ids in self.members_of]
        sizes = np.array([len(ids) for ids in self.members_of], dtype=np.float64)
        self.category_share = sizes / sizes.sum()

    def draw(self, rng: np.random.Generator, category: int, count: int) -> np.ndarray:
        cumulative = self.cumulative[category]
        picks = np.searchsorted(cumulative, rng.random(count) * cumulative[-1])
        return self.members_of[category][np.minimum(picks, len(cumulative) - 1)]

    def items(self) -> list[CatalogItem]:
        return [
            CatalogItem(item_id=item_id(i), category=f"c{c}", price=float(p))
            for i, (c, p) in enumerate(zip(self.category, self.price, strict=True))
        ]


def item_id(position: int) -> str:
    return f"sku-{position:07d}"


def member_id(position: int) -> str:
    return f"m-{position:07d}"


def purchase(
    catalog: Catalog, member: int, order: int, items: np.ndarray, at: datetime
) -> WireEvent:
    lines = [
        WireItem(
            item_id=item_id(int(i)),
            quantity=1,
            price=float(catalog.price[i]),
            category=f"c{catalog.category[i]}",
        )
        for i in dict.fromkeys(items.tolist())
    ]
    return WireEvent(
        event_id=f"bench-{member}-{order}",
        type=EventType.PURCHASE,
        member_id=member_id(member),
        timestamp=at,
        items=lines,
        order_id=f"o-{member}-{order}",
        revenue=round(sum(line.price or 0.0 for line in lines), 2),
        currency="EUR",
    )


def orders(catalog: Catalog, members: int, seed: int) -> Iterator[WireEvent]:
    """Every member's orders, then one order per item nobody bought."""
    rng = np.random.default_rng(seed + 1)
    bought = np.zeros(len(catalog.category), dtype=bool)
    fans: dict[int, list[int]] = {}  # the members who like each category
    end = START + timedelta(days=DAYS)
    for member in range(members):
        count = int(rng.integers(1, 4))
        liked = rng.choice(len(catalog.members_of), size=count, p=catalog.category_share)
        for category in liked:
            fans.setdefault(int(category), []).append(member)
        at = START + timedelta(days=float(rng.uniform(0, DAYS * 0.8)))
        for order in range(int(rng.geometric(0.4))):
            lines = 1 + int(rng.poisson(2.0))
            chosen = np.concatenate(
                [catalog.draw(rng, int(c), n) for c, n in _split(rng, liked, lines)]
            )
            bought[chosen] = True
            yield purchase(catalog, member, order, chosen, min(at, end))
            at += timedelta(days=float(rng.exponential(30.0)))
    for position in np.flatnonzero(~bought):
        liking = fans.get(int(catalog.category[position]))
        member = int(rng.choice(liking)) if liking else int(rng.integers(members))
        at = START + timedelta(days=float(rng.uniform(0, DAYS)))
        yield purchase(catalog, member, 10_000 + int(position), np.array([position]), at)


def _split(rng: np.random.Generator, liked: np.ndarray, lines: int) -> list[tuple[int, int]]:
    counts = rng.multinomial(lines, np.full(len(liked), 1 / len(liked)))
    return [(int(c), int(n)) for c, n in zip(liked, counts, strict=True) if n]


def load(data_dir: Path, items: int, members: int, seed: int) -> dict[str, Any]:
    fleet = FleetSettings(data_dir=data_dir, bus="local")
    settings = RetrievalSettings()
    store = open_store(fleet, settings)
    began = time.perf_counter()
    catalog = Catalog(items, seed)
    store.save_catalog(catalog.items())
    catalog_s = time.perf_counter() - began
    began = time.perf_counter()
    events = lines = applied = 0
    batch: list[WireEvent] = []
    for event in orders(catalog, members, seed):
        batch.append(event)
        if len(batch) == EVENTS_PER_BATCH:
            applied += store.apply_events(batch)
            events, lines = events + len(batch), lines + sum(len(e.items) for e in batch)
            batch = []
    if batch:
        applied += store.apply_events(batch)
        events, lines = events + len(batch), lines + sum(len(e.items) for e in batch)
    load_s = time.perf_counter() - began
    rss_loaded = rss_mib()
    steps: list[tuple[str, float]] = []
    began = time.perf_counter()
    outcome = train(
        store,
        open_models(fleet, settings),
        settings,
        force=True,
        progress=lambda step: steps.append((step, time.perf_counter() - began)),
    )
    train_s = time.perf_counter() - began
    store.close()
    return {
        "items": items,
        "members": members,
        "events": events,
        "lines": lines,
        "interactions_applied": applied,
        "catalog_s": catalog_s,
        "load_s": load_s,
        "train_s": train_s,
        "train_steps": steps,
        "version": outcome.version,
        "meta": {k: outcome.meta.get(k) for k in ("members", "items", "interactions", "factors")}
        | {"index": outcome.meta.get("index")},
        "rss_after_load_mib": rss_loaded,
        "peak_rss_mib": peak_rss_mib(),
        "store_bytes": (data_dir / "retrieval.db").stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--members", type=int, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    figures = load(args.data_dir, args.items, args.members, args.seed)
    args.out.write_text(json.dumps(figures, default=str))


if __name__ == "__main__":
    main()
