"""The campaigns desk: definitions, offers, exports and redemptions, free of transport.

It reaches the members' portraits through `Portraits` (profiles' audience calls) and
publishes exposures and messages through `publish`; the servicer wires both to gRPC and
the bus. Campaigns and what each spent are kept in memory, re-read from the store every
`refresh_s` (other replicas' changes) and updated at once by this replica's own writes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from services.campaigns.campaign_store import CampaignStore, Spent, StoredCampaign
from services.campaigns.model import (
    Audience,
    CampaignDefinition,
    DefinitionError,
    FrequencyCap,
    Tier,
    validated,
)
from services.campaigns.offers import Draft, Member, expires_at, plan_offers, why_not_live
from services.campaigns.redemptions import redemptions_in
from services.campaigns.settings import CampaignsSettings, WelcomeOffer
from services.campaigns.templates import from_template
from services.common.bus import CAMPAIGN_MESSAGES_TOPIC, EXPOSURES_TOPIC, Message
from services.common.clock import Clock
from services.common.events import AnyEvent
from services.common.exposures import Exposure
from services.common.members import MemberCommand

log = logging.getLogger(__name__)

WELCOME_ID = "welcome"
TRANSITIONS: dict[str, tuple[set[str], str]] = {
    "activate": ({"draft", "paused"}, "active"),
    "pause": ({"active"}, "paused"),
    "end": ({"draft", "active", "paused"}, "ended"),
}


class AudienceError(ValueError):
    """Profiles refused an audience (an unknown segment, a wrong condition): its message,
    which names the audience at fault as `audience.audiences[n]...` when several were
    asked."""


# Which of the audiences asked at once profiles refused.
_REFUSED_AUDIENCE = re.compile(r"audiences\[(\d+)\]\.?\s*(.*)", re.DOTALL)


@dataclass(frozen=True)
class Matched:
    known: bool
    member: Member
    # One per audience asked, in order.
    matched: list[bool]


class Portraits(Protocol):
    """What campaigns asks profiles about members (profiles' audience calls)."""

    async def match(self, member_id: str, audiences: Sequence[Audience]) -> Matched: ...

    async def count(self, audience: Audience) -> tuple[int, dict[str, int], datetime]: ...

    def pages(self, audience: Audience, channel: str) -> AsyncIterator[list[Member]]: ...


Publish = Callable[[str, Sequence[Message]], None]


class UnknownCampaign(KeyError):
    """No campaign of that id."""


class NotAllowed(ValueError):
    """The change is not allowed from the campaign's status; the message says why."""


@dataclass(frozen=True)
class Given:
    """An offer as the member gets it."""

    exposure: Exposure
    draft: Draft
    expires_at: datetime | None

    @property
    def definition(self) -> CampaignDefinition:
        return self.draft.definition

    @property
    def tier(self) -> Tier | None:
        return self.draft.tier


@dataclass
class Offered:
    given: list[Given] = field(default_factory=list)
    withheld: dict[str, str] = field(default_factory=dict)


@dataclass
class ExportedPage:
    given: list[tuple[Given, datetime | None]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


class CampaignDesk:
    def __init__(
        self,
        store: CampaignStore,
        portraits: Portraits,
        publish: Publish,
        clock: Clock,
        settings: CampaignsSettings,
    ) -> None:
        self._store = store
        self._portraits = portraits
        self._publish = publish
        self._clock = clock
        self._settings = settings
        self._lock = threading.Lock()
        self._campaigns: dict[str, StoredCampaign] = {}
        self._spent: dict[str, Spent] = {}
        self._refused_warned: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Read campaigns and their spending again (for what other replicas changed)."""
        found = {c.campaign_id: c for c in self._store.all()}
        spent = self._store.spent()
        with self._lock:
            self._campaigns, self._spent = found, spent

    @property
    def campaigns(self) -> list[StoredCampaign]:
        return list(self._campaigns.values())

    def now(self) -> datetime:
        return self._clock.now()

    def exposure_counts(self, campaign_id: str) -> dict[tuple[str, str], int]:
        return self._store.exposure_counts(campaign_id)

    def promoted(self, campaign_id: str) -> tuple[str, list[str]] | None:
        """The campaign's name and items while it is live (for merchandising's promotions)."""
        campaign = self._campaigns.get(campaign_id)
        if campaign is None or why_not_live(campaign, self.spent(campaign_id), self.now()):
            return None
        return campaign.definition.name, list(campaign.definition.items)

    def spent(self, campaign_id: str) -> Spent:
        return self._spent.get(campaign_id, Spent())

    def get(self, campaign_id: str) -> StoredCampaign:
        found = self._store.get(campaign_id)
        if found is None:
            raise UnknownCampaign(campaign_id)
        return found

    def create(self, raw: str | dict[str, Any], template: str = "") -> StoredCampaign:
        """A new campaign from a definition (DefinitionError naming the field), or from a
        template and a body of what differs (UnknownTemplate)."""
        if template:
            body = raw if isinstance(raw, dict) else _json_object(raw)
            definition = from_template(template, body)
        else:
            definition = validated(raw)
        return self._create(f"c-{secrets.token_hex(6)}", definition)

    def _create(self, campaign_id: str, definition: CampaignDefinition) -> StoredCampaign:
        self._store.create(campaign_id, definition, self._clock.now())
        return self._remember(self.get(campaign_id))

    def replace(self, campaign_id: str, raw: str | dict[str, Any]) -> StoredCampaign:
        definition = validated(raw)
        found = self._store.replace(campaign_id, definition, self._clock.now())
        if found is None:
            raise UnknownCampaign(campaign_id)
        return self._remember(found)

    def change(self, campaign_id: str, action: str) -> StoredCampaign:
        if action not in TRANSITIONS:
            raise NotAllowed(f"action: one of {', '.join(TRANSITIONS)}")
        current = self.get(campaign_id)
        allowed, status = TRANSITIONS[action]
        if current.status not in allowed:
            raise NotAllowed(f"cannot {action} a campaign that is {current.status}")
        changed = current.definition.model_copy(update={"status": status})
        found = self._store.replace(campaign_id, changed, self._clock.now())
        assert found is not None
        return self._remember(found)

    def delete(self, campaign_id: str) -> None:
        if not self._store.delete(campaign_id):
            raise UnknownCampaign(campaign_id)
        with self._lock:
            self._campaigns.pop(campaign_id, None)

    def _remember(self, campaign: StoredCampaign) -> StoredCampaign:
        with self._lock:
            self._campaigns = {**self._campaigns, campaign.campaign_id: campaign}
        return campaign

    def seed_welcome(self, welcome: WelcomeOffer) -> None:
        """The settings' welcome offer as the campaign `welcome`: its terms follow the
        settings at every start; its status stays what the marketer made it."""
        existing = self._store.get(WELCOME_ID)
        if not welcome.enabled:
            if existing is not None and existing.status == "active":
                self.change(WELCOME_ID, "pause")
            return
        definition = from_template("welcome", welcome.body())
        if existing is None:
            self._create(WELCOME_ID, definition)
            return
        kept = definition.model_copy(update={"status": existing.status})
        if kept != existing.definition:
            self.replace(WELCOME_ID, kept.model_dump(mode="json"))

    async def offers(self, member_id: str, channel: str, preview: bool = False) -> Offered:
        """The member's offers on `channel` (every channel when empty), best first; each
        one given is recorded as an exposure unless `preview`."""
        now = self._clock.now()
        live = [c for c in self.campaigns if c.status == "active"]
        if not live:
            return Offered()
        live, found, refused = await self._matched(member_id, live)
        if found is None:
            return Offered(withheld=refused)
        matched = {
            c.campaign_id: hit or (not found.known and c.definition.audience.new_visitors)
            for c, hit in zip(live, found.matched, strict=True)
        }
        responses = await asyncio.to_thread(self._store.responses, member_id)
        plan = plan_offers(live, matched, found.member, channel, now, self._spent, responses)
        offered = Offered(withheld=refused | dict(plan.withheld))
        by_channel: dict[str, list[Draft]] = {}
        for draft in plan.drafts:
            by_channel.setdefault(draft.channel, []).append(draft)
        for wanted, drafts in by_channel.items():
            given = await asyncio.to_thread(self._expose, member_id, wanted, drafts, now, preview)
            offered.given.extend(given[0])
            offered.withheld.update(given[1])
        offered.given.sort(key=lambda g: g.draft.rank())
        return offered

    async def _matched(
        self, member_id: str, live: list[StoredCampaign]
    ) -> tuple[list[StoredCampaign], Matched | None, dict[str, str]]:
        """The live campaigns whose audience profiles could answer, its answer (None when
        it could answer none), and why the others are withheld. Profiles refuses the whole
        call for one audience it cannot read (a segment deleted since the campaign was
        saved): without this, one such campaign emptied every member's offers."""
        refused: dict[str, str] = {}
        while live:
            try:
                audiences = [c.definition.audience for c in live]
                return live, await self._portraits.match(member_id, audiences), refused
            except AudienceError as exc:
                found = _REFUSED_AUDIENCE.search(str(exc))
                if found is None or int(found.group(1)) >= len(live):
                    raise
                campaign = live[int(found.group(1))]
                refused[campaign.campaign_id] = f"audience refused: {found.group(2)}"
                self._warn_once(campaign.campaign_id, found.group(2))
                live = [c for c in live if c is not campaign]
        return live, None, refused

    def _warn_once(self, campaign_id: str, reason: str) -> None:
        if campaign_id not in self._refused_warned:
            self._refused_warned.add(campaign_id)
            log.warning("campaign %s withheld from every member: its %s", campaign_id, reason)

    def _expose(
        self, member_id: str, channel: str, drafts: list[Draft], now: datetime, preview: bool
    ) -> tuple[list[Given], dict[str, str]]:
        planned = [d.planned() for d in drafts]
        cap = self._global_cap(channel)
        recorded, refused = self._store.expose(member_id, channel, planned, cap, now, preview)
        if recorded and not preview:
            self._publish(EXPOSURES_TOPIC, [e.to_message() for e in recorded])
        drafts_by = {d.campaign.campaign_id: d for d in drafts}
        given = [
            Given(e, drafts_by[e.campaign_id], expires_at(drafts_by[e.campaign_id].definition, now))
            for e in recorded
            if e.group == "treatment"
        ]
        return given, refused

    def _global_cap(self, channel: str) -> FrequencyCap | None:
        return self._settings.global_caps.get(channel)  # type: ignore[call-overload]

    async def audience(self, campaign_id: str) -> tuple[int, dict[str, int], datetime]:
        campaign = self.get(campaign_id)
        members, by_channel, as_of = await self._portraits.count(campaign.definition.audience)
        channels = campaign.definition.channels
        return members, {c: n for c, n in by_channel.items() if c in channels}, as_of

    async def export(
        self, campaign_id: str, channel: str, preview: bool = False
    ) -> AsyncIterator[ExportedPage]:
        """The channel's audience with their offers, page by page; exposures recorded and
        one message per member published unless `preview`."""
        campaign = self.get(campaign_id)
        if channel not in campaign.definition.channels:
            channels = ", ".join(campaign.definition.channels)
            raise NotAllowed(f"channel: the campaign is on {channels}, not {channel}")
        async for members in self._portraits.pages(campaign.definition.audience, channel):
            yield await asyncio.to_thread(self._export_page, campaign, channel, members, preview)

    def _export_page(
        self, campaign: StoredCampaign, channel: str, members: list[Member], preview: bool
    ) -> ExportedPage:
        page = ExportedPage()
        now = self._clock.now()
        messages = []
        for member in members:
            given, skipped = self._export_one(campaign, channel, member, now, preview)
            if given is None:
                page.skipped[skipped] = page.skipped.get(skipped, 0) + 1
                continue
            send_after = campaign.definition.schedule.quiet_until(channel, now)
            page.given.append((given, send_after))
            messages.append(_message(given, channel, send_after))
        if messages and not preview:
            self._publish(CAMPAIGN_MESSAGES_TOPIC, messages)
        return page

    def _export_one(
        self, campaign: StoredCampaign, channel: str, member: Member, now: datetime, preview: bool
    ) -> tuple[Given | None, str]:
        responses = (
            self._store.responses(member.member_id)
            if campaign.definition.channel_choice == "best"
            else {}
        )
        plan = plan_offers(
            [campaign],
            {campaign.campaign_id: True},
            member,
            channel,
            now,
            self._spent,
            responses,
            mind_quiet_hours=False,
        )
        if not plan.drafts:
            return None, _skip_reason(plan.withheld.get(campaign.campaign_id, ""))
        given, _ = self._expose(member.member_id, channel, plan.drafts, now, preview)
        if given:
            return given[0], ""
        held_out = plan.drafts[0].group == "control"
        return None, "held out" if held_out else "capped"

    def apply_events(self, events: Sequence[AnyEvent]) -> int:
        """Record the redemptions the purchases among `events` make; how many were new."""
        found = redemptions_in(
            events, self._campaigns, self._store.campaign_of_code, self._store.offered_tier
        )
        added = self._store.redeem(found)
        if added:
            spent = self._store.spent()
            with self._lock:
                self._spent = spent
        return added

    def apply_commands(self, commands: Sequence[MemberCommand]) -> None:
        self._store.apply_commands(commands)


def _skip_reason(withheld: str) -> str:
    if "best channel" in withheld or "no consented channel" in withheld:
        return "best channel is another"
    if "tier" in withheld:
        return "below every tier"
    if "consent" in withheld:
        return "no consent"
    return "not live" if withheld else "other"


def _message(given: Given, channel: str, send_after: datetime | None) -> Message:
    definition, tier = given.definition, given.tier
    body = {
        "message_id": given.exposure.exposure_id,
        "campaign_id": given.exposure.campaign_id,
        "campaign_name": definition.name,
        "member_id": given.exposure.member_id,
        "channel": channel,
        "coupon_code": given.exposure.coupon_code,
        "title": definition.title(tier),
        "description": definition.description_for(tier),
        "tier": given.exposure.tier,
        "expires_at": given.expires_at.isoformat() if given.expires_at else None,
        "send_after": send_after.isoformat() if send_after else None,
    }
    return Message(given.exposure.member_id, json.dumps(body, separators=(",", ":")).encode())


def _json_object(raw: str) -> dict[str, Any]:
    try:
        found = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"campaign: not JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(found, dict):
        raise DefinitionError("campaign: a JSON object")
    return found
