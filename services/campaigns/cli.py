"""`recofleet campaigns`: list campaigns and export a channel's audience for its sender.

The export asks the running campaigns service (RECOFLEET_CAMPAIGNS_ADDR), which checks caps
and consent at the time of export, records the exposures and publishes one message per
member on the messages topic; this command writes the same rows as CSV.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, TextIO

import grpc

from services.campaigns.exports import EXPORT_COLUMNS, export_row
from services.common.csv_rows import csv_line
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


def run(args: argparse.Namespace) -> int:
    fleet = FleetSettings()
    try:
        if args.campaigns_command == "list":
            return asyncio.run(_list(fleet.campaigns_addr))
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
