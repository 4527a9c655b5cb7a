"""Merchandising rules: what a merchandiser says about a placement's list, and what that does
to a request's candidates (docs/merchandising.md).

A rule is JSON validated here, once for every caller: pin an item at a position, boost or
bury items by category, tag, brand or price, keep only items that match (filter), promote
a campaign's items to a share of the slots, exclude what the member bought lately. Rules
live within their time window, and a higher priority wins where two disagree.

`merchandise` is pure: the live rules of a placement, the candidates, the catalog's facts and
the member's recent purchases in; the candidates to rank (pinned and promoted items that
retrieval did not propose included), the removals and the Arrangement ranking applies out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from services.common.events import MAX_AMOUNT, MAX_ID_LENGTH, NO_CONTROL
from services.common.timestamps import Instant
from services.gen.recofleet.campaigns.v1 import campaigns_pb2
from services.gen.recofleet.common.v1 import common_pb2

ACTIONS = ("pin", "boost", "bury", "filter", "promote", "exclude_bought")
# The source of a candidate a rule added (retrieval did not propose it).
RULE_SOURCE = "rule"
MAX_POSITION = 100
NAME_PATTERN = r"^[^\x00-\x1f\x7f]+$"


class MerchandisingSettings(BaseModel):
    """How campaigns serves merchandising rules."""

    rules_refresh_s: float = Field(
        default=0.5,
        gt=0,
        description="How often each replica reads the rules again from the store: what "
        "another replica changed takes effect here within it.",
    )
    max_rules: int = Field(
        default=1000, ge=1, description="Rules the store holds at most (every placement)."
    )
    default_limit: int = Field(
        default=10,
        ge=1,
        description="The list length a promotion's share counts against when a request "
        "does not say its limit.",
    )


def _listed(value: Any) -> Any:
    """One word or a list of them: `"garden"` and `["garden", "tools"]` both match."""
    return [value] if isinstance(value, str) else value


Name = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
ItemId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_CONTROL)]
Word = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=NO_CONTROL)]
Words = Annotated[list[Word], BeforeValidator(_listed), Field(min_length=1, max_length=100)]
Price = Annotated[float, Field(ge=0, le=MAX_AMOUNT, allow_inf_nan=False)]
Strength = Annotated[
    float,
    Field(
        gt=0,
        le=10,
        description="In rank space: 1 moves a matching item past every item no rule moves; "
        "0.5 about half the list.",
    ),
]


@dataclass(frozen=True, slots=True)
class ItemFacts:
    """What rules read of an item: the catalog's facts, or the candidate's category alone
    for an item the catalog does not know (`in_stock` None)."""

    category: str = ""
    price: float | None = None
    in_stock: bool | None = True
    brand: str = ""
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Selector:
    """Which items a rule is about: every condition given must hold (none given: every
    item). Within one condition any of its words will do."""

    categories: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    brands: frozenset[str] = frozenset()
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool = False

    def matches(self, item: ItemFacts) -> bool:
        if self.categories and item.category not in self.categories:
            return False
        if self.tags and not self.tags & item.tags:
            return False
        if self.brands and item.brand not in self.brands:
            return False
        if self.in_stock and item.in_stock is not True:
            return False
        return self._priced(item.price)

    def _priced(self, price: float | None) -> bool:
        if self.min_price is None and self.max_price is None:
            return True
        if price is None:
            return False
        return (self.min_price is None or price >= self.min_price) and (
            self.max_price is None or price <= self.max_price
        )


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    placement: Name = Field(examples=["home"])
    name: Name | None = Field(
        default=None,
        description="Shown in the reasons of the items it moves; none: the rule's id.",
        examples=["home-hero"],
    )
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Where rules disagree, the higher wins."
    )
    starts_at: Instant | None = Field(default=None, description="None: live from now.")
    ends_at: Instant | None = Field(default=None, description="None: live until deleted.")

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # A naive instant is read as UTC, as events' timestamps are. `Instant` checked the
        # range first: past it the conversion overflows, which pydantic does not report.
        if value is None:
            return None
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _window(self) -> _Rule:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at: must be after starts_at")
        return self

    def live(self, now: datetime) -> bool:
        """Whether its time window holds at `now` (start included, end excluded)."""
        started = self.starts_at is None or self.starts_at <= now
        return started and (self.ends_at is None or now < self.ends_at)

    @property
    def label(self) -> str:
        return self.name or ""


class _Selecting(_Rule):
    category: Words | None = Field(default=None, examples=["garden"])
    tag: Words | None = Field(default=None, examples=[["eco", "organic"]])
    brand: Words | None = Field(default=None, examples=["Acme"])
    min_price: Price | None = None
    max_price: Price | None = None

    @model_validator(mode="after")
    def _price_range(self) -> _Selecting:
        low, high = self.min_price, self.max_price
        if low is not None and high is not None and high < low:
            raise ValueError("max_price: must be at least min_price")
        return self

    @cached_property
    def selector(self) -> Selector:
        return self._selector()

    def _selector(self, in_stock: bool = False) -> Selector:
        return Selector(
            categories=frozenset(self.category or ()),
            tags=frozenset(self.tag or ()),
            brands=frozenset(self.brand or ()),
            min_price=self.min_price,
            max_price=self.max_price,
            in_stock=in_stock,
        )

    def _conditions(self) -> bool:
        return any(
            value is not None
            for value in (self.category, self.tag, self.brand, self.min_price, self.max_price)
        )

    def _require_conditions(self, *others: str) -> None:
        if not self._conditions():
            named = ", ".join(["category", "tag", "brand", "min_price", "max_price", *others])
            raise ValueError(f"category: give at least one of {named}")


class PinRule(_Rule):
    """Hold an item at a position of the list (1 is the first)."""

    action: Literal["pin"]
    item_id: ItemId
    position: int = Field(ge=1, le=MAX_POSITION)


class BoostRule(_Selecting):
    """Move matching items up."""

    action: Literal["boost"]
    strength: Strength = 0.5

    @model_validator(mode="after")
    def _selects(self) -> BoostRule:
        self._require_conditions()
        return self


class BuryRule(_Selecting):
    """Move matching items down."""

    action: Literal["bury"]
    strength: Strength = 0.5

    @model_validator(mode="after")
    def _selects(self) -> BuryRule:
        self._require_conditions()
        return self


class FilterRule(_Selecting):
    """Keep only matching items (pinned items stay whatever they are)."""

    action: Literal["filter"]
    in_stock: Literal[True] | None = Field(
        default=None,
        description="Keep only items the catalog knows to be in stock (unknown ones go too).",
    )

    @model_validator(mode="after")
    def _selects(self) -> FilterRule:
        if not self.in_stock:
            self._require_conditions("in_stock")
        return self

    @cached_property
    def selector(self) -> Selector:
        return self._selector(in_stock=bool(self.in_stock))


class PromoteRule(_Selecting):
    """Give a campaign's items (listed, every item that matches, or else the campaign's own
    `items` while it is live) a share of the slots."""

    action: Literal["promote"]
    campaign_id: Word
    campaign_name: Name | None = Field(
        default=None, description="Shown as 'in campaign <name>'; none: the campaign's id."
    )
    item_ids: list[ItemId] | None = Field(default=None, min_length=1, max_length=500)
    share: float = Field(gt=0, le=1, description="Of the list's slots, rounded up.")

    @model_validator(mode="after")
    def _items_or_selector(self) -> PromoteRule:
        if self.item_ids is not None and self._conditions():
            raise ValueError("item_ids: give item_ids or a selector, not both")
        return self

    @property
    def reason(self) -> str:
        return f"in campaign {self.campaign_name or self.campaign_id}"

    @property
    def the_campaigns_own(self) -> bool:
        """Whether the items are the campaign's own (`items` of its definition)."""
        return self.item_ids is None and not self._conditions()


class ExcludeBoughtRule(_Rule):
    """Leave out what the member bought within the last `days` (pinned items too)."""

    action: Literal["exclude_bought"]
    days: int = Field(ge=1, le=3650)


Rule = PinRule | BoostRule | BuryRule | FilterRule | PromoteRule | ExcludeBoughtRule


class RuleDefinition(RootModel[Annotated[Rule, Field(discriminator="action")]]):
    """A rule as sent: its `action` says which fields it takes."""


class InvalidRule(ValueError):
    """A definition that is not a rule: the message names each wrong field."""


def parse_rule(definition: str | bytes | dict[str, Any]) -> Rule:
    """The rule a definition (JSON text or a decoded object) holds; InvalidRule naming each
    wrong field ("position: Input should be greater than or equal to 1")."""
    try:
        if isinstance(definition, dict):
            return RuleDefinition.model_validate(definition).root
        return RuleDefinition.model_validate_json(definition).root
    except ValidationError as exc:
        raise InvalidRule(describe(exc)) from None


def describe(error: ValidationError) -> str:
    return "; ".join(_problem(problem) for problem in error.errors())


def _problem(problem: Any) -> str:
    kind, loc = problem["type"], list(problem["loc"])
    actions = ", ".join(ACTIONS)
    if kind == "union_tag_not_found":
        return f"action: Field required (one of {actions})"
    if kind == "union_tag_invalid":
        return f"action: {problem['input'].get('action')!r} is not one of {actions}"
    if kind == "json_invalid":
        return f"body: not JSON ({problem['ctx']['error']})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "body: must be a JSON object"
    # The first location of a member's error is its action (the union's tag).
    if loc and loc[0] in ACTIONS:
        loc = loc[1:]
    message = str(problem["msg"]).removeprefix("Value error, ")
    if not loc:
        # Raised by a rule's own checks, which name their field first.
        return message
    return f"{'.'.join(str(part) for part in loc)}: {message}"


def definition(rule: Rule) -> dict[str, Any]:
    """The whole rule as JSON-ready values, defaults filled in (what PutRule stores)."""
    return rule.model_dump(mode="json")


def named(rule: Rule, rule_id: str) -> Rule:
    """The rule with a name: its own, else its id (reasons always name a rule)."""
    return rule if rule.name else rule.model_copy(update={"name": rule_id})


# --- applying rules -------------------------------------------------------------------


class Catalog(Protocol):
    """The catalog's facts as rules read them (campaigns keeps them in memory)."""

    def facts(self, item_id: str) -> ItemFacts | None:
        """None for an item the catalog does not know."""

    def matching(self, selector: Selector, count: int, admit: Callable[[str], bool]) -> list[str]:
        """Up to `count` items in stock that match `selector` and that `admit` lets in."""


@dataclass(frozen=True, slots=True)
class Purchase:
    item_id: str
    at: datetime


@dataclass(frozen=True)
class Request:
    """What one ApplyRules asks, past the filters every list gets (rules.apply_rules)."""

    candidates: Sequence[common_pb2.Candidate]
    now: datetime
    limit: int
    recent_purchases: Sequence[Purchase] = ()
    # Excluded by the caller or bought already: never added by a rule either.
    banned: frozenset[str] = frozenset()


@dataclass
class Merchandised:
    candidates: list[common_pb2.Candidate]
    removed: list[campaigns_pb2.Removal]
    arrangement: common_pb2.Arrangement
    # The rules that changed something, by name, in precedence order.
    rules: list[str] = field(default_factory=list)


def in_precedence(rules: Iterable[tuple[Rule, datetime, str]]) -> list[Rule]:
    """(rule, created at, id) in the order rules win: the higher priority first, then the
    older rule, then the id (so that every replica agrees)."""
    ordered = sorted(rules, key=lambda entry: (-entry[0].priority, entry[1], entry[2]))
    return [rule for rule, _, _ in ordered]


def live_rules(rules: Iterable[Rule], now: datetime) -> list[Rule]:
    return [rule for rule in rules if rule.live(now)]


def merchandise(rules: Sequence[Rule], request: Request, catalog: Catalog) -> Merchandised:
    """Apply a placement's live rules to a request: the higher priority wins, and of one
    priority the rule that comes first (`in_precedence` puts the older first).

    Order of work: what the member bought lately goes (exclude_bought, pinned items too);
    then filters keep only what matches (pinned items stay); pinned items retrieval did not
    propose are added; pins take their positions (a taken one: the next free); boosts and
    buries weigh every other item; promotions gather their items, adding what the catalog
    has in stock when too few were proposed.
    """
    # Stable: rules of one priority keep the caller's order (the older first, in_precedence).
    work = _Work(sorted(rules, key=lambda r: -r.priority), request, catalog)
    work.remove_and_filter()
    work.add_pins()
    work.adjust()
    work.promote()
    return work.result()


class _Work:
    def __init__(self, rules: Sequence[Rule], request: Request, catalog: Catalog) -> None:
        self.request = request
        self.catalog = catalog
        self.filters = [r for r in rules if isinstance(r, FilterRule)]
        self.adjusting = [r for r in rules if isinstance(r, BoostRule | BuryRule)]
        self.promotions = [r for r in rules if isinstance(r, PromoteRule)]
        self.bought = _recently_bought(rules, request.recent_purchases, request.now)
        self.kept: list[common_pb2.Candidate] = []
        self.kept_ids: set[str] = set()
        self.removed: list[campaigns_pb2.Removal] = []
        self.arrangement = common_pb2.Arrangement()
        self.applied: list[str] = []
        # Each item's facts once per request: filters, boosts and promotions all ask.
        self._known: dict[str, ItemFacts] = {}
        proposed = {c.item_id for c in request.candidates}
        self.pins = [
            pin
            for pin in _first_pin_per_item(rules)
            if pin.item_id not in self.bought
            and (pin.item_id in proposed or self._addable(pin.item_id))
        ]
        self.pinned = {pin.item_id for pin in self.pins}

    def facts(self, item_id: str, category: str = "") -> ItemFacts:
        known = self._known.get(item_id)
        if known is None:
            found = self.catalog.facts(item_id)
            known = found if found is not None else ItemFacts(category=category, in_stock=None)
            self._known[item_id] = known
        return known

    def remove_and_filter(self) -> None:
        # Most placements have no filter: then an item's facts are not even looked up.
        filtering = bool(self.filters)
        for candidate in self.request.candidates:
            rule = self.bought.get(candidate.item_id)
            if rule is None and filtering and candidate.item_id not in self.pinned:
                rule = self._failed_filter(self.facts(candidate.item_id, candidate.category))
            if rule is not None:
                self.removed.append(
                    campaigns_pb2.Removal(item_id=candidate.item_id, reason=f"rule:{rule}")
                )
                self._applied(rule)
            else:
                self._keep(candidate)

    def _failed_filter(self, item: ItemFacts) -> str | None:
        return next((r.label for r in self.filters if not r.selector.matches(item)), None)

    def add_pins(self) -> None:
        taken: set[int] = set()
        for pin in self.pins:
            if pin.item_id not in self.kept_ids:
                self._keep(self._added(pin.item_id))
            position = pin.position
            while position in taken:
                position += 1
            taken.add(position)
            self.arrangement.pins.append(
                common_pb2.Pin(item_id=pin.item_id, position=position, rule=pin.label)
            )
            self._applied(pin.label)

    def adjust(self) -> None:
        if not self.adjusting:
            return
        for candidate in self.kept:
            if candidate.item_id in self.pinned:
                continue  # a pin's position holds whatever weighs on it
            item = self.facts(candidate.item_id, candidate.category)
            for rule in self.adjusting:
                if rule.selector.matches(item):
                    weight = rule.strength if isinstance(rule, BoostRule) else -rule.strength
                    self.arrangement.adjustments.append(
                        common_pb2.Adjustment(
                            item_id=candidate.item_id, weight=weight, rule=rule.label
                        )
                    )
                    self._applied(rule.label)

    def promote(self) -> None:
        limit = self.request.limit
        for rule in self.promotions:
            members = [c.item_id for c in self.kept if self._in_campaign(rule, c)]
            wanted = share_of(rule.share, limit) - len(members)
            for item_id in self._more_of(rule, wanted):
                self._keep(self._added(item_id))
                members.append(item_id)
            if not members:
                continue
            self.arrangement.promotions.append(
                common_pb2.Promotion(
                    rule=rule.label,
                    campaign_id=rule.campaign_id,
                    item_ids=members,
                    share=rule.share,
                    reason=rule.reason,
                )
            )
            self._applied(rule.label)

    def _in_campaign(self, rule: PromoteRule, candidate: common_pb2.Candidate) -> bool:
        if rule.item_ids is not None:
            return candidate.item_id in rule.item_ids
        return rule.selector.matches(self.facts(candidate.item_id, candidate.category))

    def _more_of(self, rule: PromoteRule, wanted: int) -> list[str]:
        """Up to `wanted` more of the campaign's items, from the catalog, that may be shown."""
        if wanted <= 0:
            return []
        if rule.item_ids is not None:
            listed = dict.fromkeys(rule.item_ids)
            return [i for i in listed if self._promotable(i)][:wanted]
        return self.catalog.matching(rule.selector, wanted, self._promotable)

    def _promotable(self, item_id: str) -> bool:
        if not self._addable(item_id) or item_id in self.bought:
            return False
        return self._failed_filter(self.facts(item_id)) is None

    def _addable(self, item_id: str) -> bool:
        """Whether a rule may add the item: not listed yet, not ruled out by the caller or
        the member's purchases, known to the catalog and in stock."""
        if item_id in self.kept_ids or item_id in self.request.banned:
            return False
        found = self.catalog.facts(item_id)
        return found is not None and found.in_stock is True

    def _added(self, item_id: str) -> common_pb2.Candidate:
        return common_pb2.Candidate(
            item_id=item_id, category=self.facts(item_id).category, source=RULE_SOURCE
        )

    def _keep(self, candidate: common_pb2.Candidate) -> None:
        self.kept.append(candidate)
        self.kept_ids.add(candidate.item_id)

    def _applied(self, rule: str) -> None:
        if rule not in self.applied:
            self.applied.append(rule)

    def result(self) -> Merchandised:
        return Merchandised(self.kept, self.removed, self.arrangement, self.applied)


def share_of(share: float, limit: int) -> int:
    """Slots a share of `limit` takes, rounded up: 0.07 of 100 is 7 slots, though
    0.07 * 100 is a hair above 7 in floating point."""
    return math.ceil(round(share * limit, 9))


def _first_pin_per_item(rules: Sequence[Rule]) -> list[PinRule]:
    """The winning pin of each item (rules come in precedence order)."""
    pins: dict[str, PinRule] = {}
    for rule in rules:
        if isinstance(rule, PinRule):
            pins.setdefault(rule.item_id, rule)
    return list(pins.values())


def _recently_bought(
    rules: Sequence[Rule], purchases: Sequence[Purchase], now: datetime
) -> dict[str, str]:
    """Item -> the exclude_bought rule (the winning one) that rules it out."""
    bought: dict[str, str] = {}
    for rule in rules:
        if isinstance(rule, ExcludeBoughtRule):
            since = now - timedelta(days=rule.days)
            for purchase in purchases:
                if purchase.at >= since:
                    bought.setdefault(purchase.item_id, rule.label)
    return bought
