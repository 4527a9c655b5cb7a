"""Where a GetProfile's time goes: the servicer's steps timed one by one, in process.

The same calls `ProfilesServicer.GetProfile` makes, on the same store, without gRPC, the
event loop or the thread hops (`asyncio.to_thread`) between them. Set against the gRPC
latency, the difference is what transport and scheduling cost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from bench.fleet import percentile
from bench.profiles.synthetic import Members
from services.common.clock import Clock
from services.common.grpc_server import tune_gc
from services.gen.recofleet.profiles.v1 import profiles_pb2
from services.profiles.portrait import Portraitist
from services.profiles.segmenting import Segmenter
from services.profiles.servicer import to_proto
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SqlProfileStore

STEPS = (
    "store.get",
    "store.scoring",
    "Portraitist.draw",
    "Segmenter.member_of",
    "to_proto",
    "SerializeToString",
)


def breakdown(url: str, members: int, count: int, seed: int, warmup: int = 200) -> dict[str, Any]:
    """Mean and p99 µs of each step over `count` random known members."""
    settings = ProfilesSettings()
    store = SqlProfileStore.from_url(url, settings)
    tune_gc()  # as the service does once started
    portraitist = Portraitist(settings)
    clock = Clock()
    segmenter = Segmenter(store, portraitist, clock, settings.segment_sizes_ttl_s)
    rng = random.Random(f"steps:{seed}")
    timings: dict[str, list[float]] = {step: [] for step in STEPS}

    def timed(step: str, keep: bool, call: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter_ns()
        answer = call(*args)
        if keep:
            timings[step].append((time.perf_counter_ns() - started) / 1000)
        return answer

    try:
        for n in range(warmup + count):
            keep = n >= warmup
            member_id = Members.member_id(rng.randrange(members))
            profile = timed("store.get", keep, store.get, member_id, settings.recent_items)
            if profile is None:
                continue
            scoring = timed("store.scoring", keep, store.scoring)
            portrait = timed(
                "Portraitist.draw", keep, portraitist.draw, profile, scoring, clock.now()
            )
            segments = timed("Segmenter.member_of", keep, segmenter.member_of, portrait)
            message = timed("to_proto", keep, to_proto, portrait, segments)
            answer = profiles_pb2.GetProfileResponse(profile=message)
            timed("SerializeToString", keep, answer.SerializeToString)
    finally:
        store.close()
    found: dict[str, Any] = {}
    for step, values in timings.items():
        ordered = sorted(values)
        found[step] = {
            "mean_us": sum(ordered) / len(ordered) if ordered else None,
            "p99_us": percentile(ordered, 99),
        }
    found["in all"] = {"mean_us": sum(f["mean_us"] or 0.0 for f in found.values())}
    return found
