"""gRPC face of merchandising: rules in and out, and every recommendation list through them.

The rules of every placement are kept in memory (`RuleBook`): a recommendation reads them
without touching the store. A change goes to the store first, then to this replica's memory
at once; the other replicas read the store again every `rules_refresh_s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn, TypeAlias, TypeVar

import grpc
from sqlalchemy.exc import SQLAlchemyError

from services.campaigns.merchandising import (
    InvalidRule,
    MerchandisingSettings,
    PromoteRule,
    Purchase,
    Request,
    Rule,
    definition,
    in_precedence,
    live_rules,
    merchandise,
    named,
    parse_rule,
)
from services.campaigns.rules import apply_rules
from services.campaigns.store import MerchandisingStore, StoredRule
from services.common.clock import Clock
from services.common.events import CatalogItem
from services.common.timestamps import timestamp as _timestamp
from services.gen.recofleet.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")
Context: TypeAlias = grpc.aio.ServicerContext
RULE_ID = re.compile(r"[0-9A-Za-z._-]{1,64}")
RULE_ID_SAYS = "1 to 64 letters, digits, '.', '_' or '-'"
CampaignItems = Callable[[str], tuple[str, list[str]] | None]
# What the reasons call a previewed rule without a name ("pinned by rule draft").
DRAFT = "draft"


@dataclass(frozen=True)
class BookedRule:
    stored: StoredRule
    rule: Rule


class RuleBook:
    """Every rule, parsed, by placement in precedence order; read again with `refresh`."""

    def __init__(self, store: MerchandisingStore) -> None:
        self._store = store
        self._rules: dict[str, BookedRule] = {}
        self._by_placement: dict[str, list[Rule]] = {}
        # Changes this replica made: a refresh that read the store before one of them
        # would undo it in memory, so it is dropped (the next one reads it).
        self._changes = 0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Read every rule again (what other replicas changed); definitions unchanged
        since the last read are not parsed again."""
        started = self._changes
        booked = {}
        for stored in self._store.rules():
            known = self._rules.get(stored.rule_id)
            if known is not None and known.stored.updated_at == stored.updated_at:
                booked[stored.rule_id] = known
                continue
            try:
                booked[stored.rule_id] = BookedRule(stored, _rule_of(stored))
            except InvalidRule as exc:
                # Written by a newer release that knows more actions: not ours to apply.
                log.warning("rule %s skipped: %s", stored.rule_id, exc)
        with self._lock:
            if self._changes == started:
                self._publish(booked)

    def put(self, stored: StoredRule, rule: Rule) -> None:
        with self._lock:
            self._changes += 1
            self._publish({**self._rules, stored.rule_id: BookedRule(stored, rule)})

    def remove(self, rule_id: str) -> None:
        with self._lock:
            self._changes += 1
            self._publish({k: v for k, v in self._rules.items() if k != rule_id})

    def placement(self, placement: str) -> list[Rule]:
        return self._by_placement.get(placement, [])

    def _publish(self, booked: dict[str, BookedRule]) -> None:
        by_placement: dict[str, list[tuple[Rule, datetime, str]]] = {}
        for rule_id, entry in booked.items():
            by_placement.setdefault(entry.rule.placement, []).append(
                (entry.rule, entry.stored.created_at, rule_id)
            )
        # Two assignments a request may see apart: either the rules before or after.
        self._rules = booked
        self._by_placement = {p: in_precedence(entries) for p, entries in by_placement.items()}


class MerchandisingServicer(campaigns_pb2_grpc.MerchandisingServiceServicer):
    def __init__(
        self,
        store: MerchandisingStore,
        clock: Clock,
        settings: MerchandisingSettings,
        campaign_items: CampaignItems | None = None,
    ) -> None:
        """`campaign_items(campaign_id)`: the live campaign's name and items, None when it
        is not live (a promotion of its own items then waits for it)."""
        self._store = store
        self._clock = clock
        self._settings = settings
        self._campaign_items = campaign_items or (lambda campaign_id: None)
        self.book = RuleBook(store)
        self.book.refresh()

    async def keep_rules_fresh(self) -> None:
        """What other replicas changed reaches this one within `rules_refresh_s`."""
        while True:
            await asyncio.sleep(self._settings.rules_refresh_s)
            try:
                await asyncio.to_thread(self.book.refresh)
            except SQLAlchemyError as exc:
                log.warning("rules not refreshed from the store: %s", exc)

    async def ApplyRules(
        self, request: campaigns_pb2.ApplyRulesRequest, context: Context
    ) -> campaigns_pb2.ApplyRulesResponse:
        # In memory and a few dozen candidates: cheaper than a hop to a worker thread.
        purchased = list(request.purchased_item_ids)
        excluded = list(request.exclude_item_ids)
        filtered = apply_rules(
            request.candidates,
            purchased=purchased,
            excluded=excluded,
            out_of_stock=self._store.out_of_stock,
        )
        now = self._clock.now()
        asked = Request(
            candidates=filtered.kept,
            now=now,
            limit=request.limit or self._settings.default_limit,
            recent_purchases=[
                Purchase(p.item_id, p.at.ToDatetime(tzinfo=UTC)) for p in request.recent_purchases
            ],
            banned=frozenset(purchased) | frozenset(excluded),
        )
        try:
            drafts = _drafts(request.draft_rules_json, request.placement)
        except InvalidRule as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        # Drafts after the saved rules: of one priority, as the newest rule would come.
        saved = live_rules(self.book.placement(request.placement), now)
        rules = self._with_campaigns([*saved, *drafts])
        done = merchandise(rules, asked, self._store.facts())
        return campaigns_pb2.ApplyRulesResponse(
            candidates=done.candidates,
            removed=[
                *(
                    campaigns_pb2.Removal(item_id=r.item_id, reason=r.reason)
                    for r in filtered.removed
                ),
                *done.removed,
            ],
            arrangement=done.arrangement,
            rules=done.rules,
        )

    def _with_campaigns(self, rules: list[Rule]) -> list[Rule]:
        """Promotions of a campaign's own items with those items and the campaign's name;
        without them while the campaign is not live."""
        found: list[Rule] = []
        for rule in rules:
            if isinstance(rule, PromoteRule) and rule.the_campaigns_own:
                campaign = self._campaign_items(rule.campaign_id)
                if campaign is None or not campaign[1]:
                    continue
                name, items = campaign
                rule = rule.model_copy(
                    update={"item_ids": items, "campaign_name": rule.campaign_name or name}
                )
            found.append(rule)
        return found

    async def PutRule(
        self, request: campaigns_pb2.PutRuleRequest, context: Context
    ) -> campaigns_pb2.Rule:
        rule_id = request.rule_id or f"rule-{uuid.uuid4().hex[:12]}"
        if not RULE_ID.fullmatch(rule_id):
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"rule_id: {RULE_ID_SAYS}")
        try:
            rule = named(parse_rule(request.definition_json), rule_id)
        except InvalidRule as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        stored = await _stored(context, lambda: self._put(rule_id, rule))
        self.book.put(stored, rule)
        return self._message(stored, rule)

    def _put(self, rule_id: str, rule: Rule) -> StoredRule | str:
        """The rule stored, or why it cannot be."""
        if (
            self._store.rule(rule_id) is None
            and self._store.count_rules() >= self._settings.max_rules
        ):
            return (
                f"the store holds {self._settings.max_rules} rules already, the most it takes: "
                "delete some first"
            )
        return self._store.put_rule(rule_id, rule.placement, definition(rule))

    async def GetRule(
        self, request: campaigns_pb2.GetRuleRequest, context: Context
    ) -> campaigns_pb2.Rule:
        stored = await _read(context, lambda: self._store.rule(request.rule_id))
        if stored is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no rule '{request.rule_id}'")
        return self._message(stored)

    async def ListRules(
        self, request: campaigns_pb2.ListRulesRequest, context: Context
    ) -> campaigns_pb2.ListRulesResponse:
        found = await _read(context, lambda: self._store.rules(request.placement))
        return campaigns_pb2.ListRulesResponse(rules=self._messages(found))

    async def DeleteRule(
        self, request: campaigns_pb2.GetRuleRequest, context: Context
    ) -> campaigns_pb2.DeleteRuleResponse:
        deleted = await _read(context, lambda: self._store.delete_rule(request.rule_id))
        if not deleted:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no rule '{request.rule_id}'")
        self.book.remove(request.rule_id)
        return campaigns_pb2.DeleteRuleResponse()

    async def GetItem(
        self, request: campaigns_pb2.GetItemRequest, context: Context
    ) -> campaigns_pb2.CatalogItem:
        item = await _read(context, lambda: self._store.item(request.item_id))
        if item is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no item '{request.item_id}'")
        return item_message(item)

    def _messages(self, stored: Sequence[StoredRule]) -> list[campaigns_pb2.Rule]:
        return [self._message(entry) for entry in stored]

    def _message(self, stored: StoredRule, rule: Rule | None = None) -> campaigns_pb2.Rule:
        try:
            rule = rule or _rule_of(stored)
        except InvalidRule:
            # Written by a newer release that knows more actions: shown as stored, not live.
            text, live = json.dumps(stored.definition), False
        else:
            text, live = json.dumps(definition(rule)), rule.live(self._clock.now())
        return campaigns_pb2.Rule(
            rule_id=stored.rule_id,
            definition_json=text,
            created_at=_timestamp(stored.created_at),
            updated_at=_timestamp(stored.updated_at),
            live=live,
        )


def item_message(item: CatalogItem) -> campaigns_pb2.CatalogItem:
    message = campaigns_pb2.CatalogItem(
        item_id=item.item_id,
        name=item.name or "",
        category=item.category or "",
        in_stock=item.in_stock,
        tags=item.tags,
        brand=item.brand or "",
        attributes={name: _text(value) for name, value in item.attributes.items()},
    )
    if item.price is not None:
        message.price = item.price
    return message


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _drafts(definitions: Sequence[str], placement: str) -> list[Rule]:
    """The unsaved rules of a preview that apply to `placement`, validated as PutRule
    validates (InvalidRule), each named (DRAFT when it has no name of its own)."""
    drafts = [named(parse_rule(text), DRAFT) for text in definitions]
    return [rule for rule in drafts if rule.placement == placement]


def _rule_of(stored: StoredRule) -> Rule:
    return named(parse_rule(stored.definition), stored.rule_id)


async def _read(context: Context, call: Callable[[], T]) -> T:
    """`call()` on the store in a worker thread; UNAVAILABLE when the store cannot answer."""
    try:
        return await asyncio.to_thread(call)
    except SQLAlchemyError as exc:
        log.error("merchandising store unreachable: %s", exc)
        await _abort(context, grpc.StatusCode.UNAVAILABLE, "the rules store is unreachable; retry")


async def _stored(context: Context, call: Callable[[], StoredRule | str]) -> StoredRule:
    outcome = await _read(context, call)
    if isinstance(outcome, str):
        await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, outcome)
    return outcome


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort() raises")
