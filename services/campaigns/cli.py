"""`recofleet campaigns`: list campaigns, export a channel's audience for its sender, and
replay purchases with a known uplift (services/campaigns/replay.py).

The export asks the running campaigns service (RECOFLEET_CAMPAIGNS_ADDR), which checks caps
and consent at the time of export, records the exposures and publishes one message per
member on the messages topic; this command writes the same rows as CSV.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import grpc
import httpx

from services.campaigns.campaign_store import SqlCampaignStore
from services.campaigns.exports import EXPORT_COLUMNS, export_row
from services.campaigns.replay import Behaviour, purchases, send
from services.campaigns.settings import CampaignsSettings
from services.campaigns.store import SqlCatalogStore
from services.common.csv_rows import csv_line
from services.common.pii import pii_secret
from services.common.settings import FleetSettings
from services.gen.recofleet.campaigns.v1 import campaigns_pb2, campaigns_pb2_grpc

COMMAND = "campaigns"
CHANNELS = ("email", "sms", "push", "onsite")
DEADLINE_S = 3600.0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        COMMAND,
        help="list campaigns, export a channel's audience with their offers (CSV)",
        description="Campaigns of the running fleet (docs/campaigns.md).",
    )
    actions = parser.add_subparsers(dest="campaigns_command", required=True)
    actions.add_parser("list", help="id, status, name, redemptions of every campaign")
    export = actions.add_parser(
        "export",
        help="the channel's audience with offers and coupon codes, as CSV",
        description="Caps and consent are checked now; each member exported is recorded as "
        "an exposure and published on the topic recofleet.campaign-messages for the sender "
        "(unless --preview). Members held out by the control group, capped, or whose best "
        "channel is another are left out; stderr says how many for each reason.",
    )
    export.add_argument("campaign_id")
    export.add_argument("--channel", required=True, choices=CHANNELS)
    export.add_argument("--output", "-o", type=Path, help="CSV file (default: stdout)")
    export.add_argument(
        "--preview", action="store_true", help="record no exposure and publish nothing"
    )
    replay = actions.add_parser(
        "replay",
        help="purchases by the campaign's members with a known uplift, sent to the fleet",
        description="Every member the campaign reached or held out buys with --buy-rate, the "
        "exposed ones with --lift more, and --redeem-share of those buyers use their code. "
        "Reads who was reached from the campaigns store; sends the purchases to the gateway "
        "(a key with events:write: --key or RECOFLEET_KEY).",
    )
    replay.add_argument("campaign_id")
    replay.add_argument("--buy-rate", type=_share, default=0.10)
    replay.add_argument("--lift", type=_share, default=0.10)
    replay.add_argument("--redeem-share", type=_share, default=0.7)
    replay.add_argument("--order-value", type=float, default=40.0)
    replay.add_argument("--seed", type=int, default=7)
    replay.add_argument("--url", help="the gateway (default: from the fleet settings)")
    replay.add_argument("--key", help="an access key with events:write")


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"a share from 0 to 1, not {text}")
    return value


def run(args: argparse.Namespace) -> int:
    fleet = FleetSettings()
    try:
        if args.campaigns_command == "list":
            return asyncio.run(_list(fleet.campaigns_addr))
        if args.campaigns_command == "replay":
            return _replay(fleet, args)
        if args.output is None:
            return asyncio.run(_export(fleet.campaigns_addr, args, sys.stdout))
        with args.output.open("w", encoding="utf-8", newline="") as out:
            return asyncio.run(_export(fleet.campaigns_addr, args, out))
    except grpc.aio.AioRpcError as exc:
        reason = exc.details() or exc.code().name
        where = fleet.campaigns_addr
        print(f"recofleet campaigns: {reason} (campaigns at {where})", file=sys.stderr)
        return 1


async def _list(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = campaigns_pb2_grpc.CampaignsServiceStub(channel)
        reply = await stub.ListCampaigns(campaigns_pb2.ListCampaignsRequest(), timeout=30)
    for c in reply.campaigns:
        live = "live" if c.live else c.not_live_reason
        print(f"{c.campaign_id}\t{c.status}\t{c.name}\t{c.redemptions} redeemed\t{live}")
    return 0


async def _export(address: str, args: argparse.Namespace, out: TextIO) -> int:
    request = campaigns_pb2.ExportCampaignRequest(
        campaign_id=args.campaign_id, channel=args.channel, preview=args.preview
    )
    rows, skipped = 0, dict[str, int]()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = campaigns_pb2_grpc.CampaignsServiceStub(channel)
        out.write(csv_line(EXPORT_COLUMNS))
        async for page in stub.ExportCampaign(request, timeout=DEADLINE_S):
            out.write("".join(csv_line(export_row(r)) for r in page.rows))
            rows += len(page.rows)
            for reason, n in page.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
    left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "none"
    verb = "would be exported (preview)" if args.preview else "exported"
    print(f"{rows} members {verb}; left out: {left_out}", file=sys.stderr)
    return 0


def _replay(fleet: FleetSettings, args: argparse.Namespace) -> int:
    key = args.key or os.environ.get("RECOFLEET_KEY", "")
    if not key:
        print("recofleet campaigns replay: give a key (--key or RECOFLEET_KEY)", file=sys.stderr)
        return 2
    settings = CampaignsSettings()
    url = settings.database_url or fleet.sqlite_url("campaigns")
    store = SqlCampaignStore.from_url(url, pii_secret(fleet))
    catalog = SqlCatalogStore.from_url(url)
    try:
        members = store.members_of(args.campaign_id)
        items = catalog.facts().in_stock()
    finally:
        store.close()
        catalog.close()
    if not members or not items:
        what = "no member was reached or held out" if not members else "no item is in stock"
        print(f"recofleet campaigns replay: {what}: export or offer first", file=sys.stderr)
        return 1
    behaviour = Behaviour(args.buy_rate, args.lift, args.redeem_share, args.order_value, args.seed)
    events, done = purchases(members, items, behaviour)
    gateway = args.url or f"http://{fleet.gateway_host}:{fleet.gateway_port}"
    with httpx.Client(
        base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as http:
        send(http, events)
    for group in ("treatment", "control"):
        print(
            f"{group}: {done.members[group]} members, {done.buyers[group]} bought "
            f"({done.rate(group):.3f})"
        )
    print(
        f"{len(events)} purchases sent, {done.redeemed} with the member's code; true "
        f"conversion uplift {args.lift:+.3f}"
    )
    return 0
