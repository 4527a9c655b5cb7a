"""gRPC channels and stubs to every service, opened once per gateway process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import open_channel
from services.common.settings import FleetSettings
from services.gen.recofleet.analytics.v1 import analytics_pb2_grpc
from services.gen.recofleet.campaigns.v1 import campaigns_pb2_grpc
from services.gen.recofleet.ingestion.v1 import ingestion_pb2_grpc
from services.gen.recofleet.profiles.v1 import profiles_pb2_grpc
from services.gen.recofleet.ranking.v1 import ranking_pb2_grpc
from services.gen.recofleet.retrieval.v1 import retrieval_pb2_grpc


@dataclass
class FleetClients:
    channels: dict[str, grpc.aio.Channel]
    ingestion: ingestion_pb2_grpc.IngestionServiceStub
    profiles: profiles_pb2_grpc.ProfilesServiceStub
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub
    ranking: ranking_pb2_grpc.RankingServiceStub
    campaigns: campaigns_pb2_grpc.CampaignsServiceStub
    analytics: analytics_pb2_grpc.AnalyticsServiceStub
    # Served by campaigns too (its channel): rules and the catalog they read.
    merchandising: campaigns_pb2_grpc.MerchandisingServiceStub

    @classmethod
    def connect(cls, fleet: FleetSettings) -> FleetClients:
        addresses = {
            "ingestion": fleet.ingestion_addr,
            "profiles": fleet.profiles_addr,
            "retrieval": fleet.retrieval_addr,
            "ranking": fleet.ranking_addr,
            "campaigns": fleet.campaigns_addr,
            "analytics": fleet.analytics_addr,
        }
        channels = {name: open_channel(addr) for name, addr in addresses.items()}
        return cls(
            channels=channels,
            ingestion=ingestion_pb2_grpc.IngestionServiceStub(channels["ingestion"]),
            profiles=profiles_pb2_grpc.ProfilesServiceStub(channels["profiles"]),
            retrieval=retrieval_pb2_grpc.RetrievalServiceStub(channels["retrieval"]),
            ranking=ranking_pb2_grpc.RankingServiceStub(channels["ranking"]),
            campaigns=campaigns_pb2_grpc.CampaignsServiceStub(channels["campaigns"]),
            analytics=analytics_pb2_grpc.AnalyticsServiceStub(channels["analytics"]),
            merchandising=campaigns_pb2_grpc.MerchandisingServiceStub(channels["campaigns"]),
        )

    async def health(self, timeout_s: float = 1.0) -> dict[str, str]:
        """Each service's own answer to the standard gRPC health check."""
        names = list(self.channels)
        answers = await asyncio.gather(
            *(self._check(self.channels[n], timeout_s) for n in names), return_exceptions=False
        )
        return dict(zip(names, answers, strict=True))

    @staticmethod
    async def _check(channel: grpc.aio.Channel, timeout_s: float) -> str:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
