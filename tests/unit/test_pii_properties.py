"""Property-based: however contact data is written, in whatever field and format, no byte
of the data dir holds it in clear once ingestion and the consumers have done their work."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.bus.local_log import LocalLogBus
from services.common.consuming import BusWorker
from services.common.events import Event
from services.common.pii import PiiScrubber
from services.ingestion.domain import BadPayload, Ingestor
from services.ingestion.settings import IngestionSettings
from services.profiles.server import profile_worker
from services.profiles.settings import ProfilesSettings
from services.profiles.store import SqlProfileStore
from services.retrieval.server import interaction_worker
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import SqlInteractionStore
from tests.pii_strategies import contact_data, contact_keys, dumps, placed, spellings

SCRUB = PiiScrubber(b"property-tests-secret-0123456789")


@dataclass
class DataDir:
    path: Path
    ingestor: Ingestor
    workers: list[BusWorker]

    def ingest(self, body: bytes, fmt: str) -> None:
        # A body refused as a whole is fine: nothing of it may be stored either.
        with contextlib.suppress(BadPayload):
            self.ingestor.publish_events(body, fmt)
        for worker in self.workers:
            worker.drain()

    def holding(self, secret: str) -> list[str]:
        """The files of the data dir that hold `secret` in clear (in any letter case)."""
        needles = {secret.encode(), secret.lower().encode(), secret.upper().encode()}
        return [
            str(path.relative_to(self.path))
            for path in sorted(self.path.rglob("*"))
            if path.is_file() and any(n in path.read_bytes() for n in needles)
        ]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataDir]:
    root = tmp_path_factory.mktemp("pii-data")
    bus = LocalLogBus(root / "bus", partitions=2, fsync=False)
    profiles = SqlProfileStore.from_url(f"sqlite:///{root / 'profiles.db'}", ProfilesSettings())
    retrieval = RetrievalSettings()
    interactions = SqlInteractionStore.from_url(
        f"sqlite:///{root / 'retrieval.db'}", retrieval.event_weights
    )
    workers = [
        profile_worker(bus, profiles, ProfilesSettings()),
        interaction_worker(bus, interactions, retrieval),
    ]
    yield DataDir(root, Ingestor(bus, SCRUB, IngestionSettings()), workers)
    profiles.close()
    interactions.close()
    bus.close()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=placed(), spelling=spellings())
def test_no_byte_of_the_data_dir_holds_contact_data(
    data_dir: DataDir, case: tuple[str, Any, list[str]], spelling: random.Random
) -> None:
    fmt, body, secrets = case
    data_dir.ingest(dumps(body, spelling).encode(), fmt)

    for secret in secrets:
        assert data_dir.holding(secret) == [], f"{secret!r} stored in clear ({fmt})"


def _json_values(leaves: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(max_size=8), contact_keys(), contact_data())
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=12,
    )


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    contact_data(),
    contact_data().map(lambda found: f"x{found}y"),
    st.from_regex(r"[0-9 ().+-]{8,18}", fullmatch=True),
)


@settings(max_examples=500, deadline=None)
@given(value=_json_values(LEAVES))
def test_finds_says_exactly_when_scrub_would_change_a_value(value: Any) -> None:
    assert SCRUB.finds(value) == (SCRUB.scrub(value) != value)


@settings(max_examples=300, deadline=None)
@given(
    member=st.one_of(st.text(min_size=1, max_size=20), contact_data()),
    query=st.one_of(st.text(min_size=1, max_size=30), contact_data()),
    context=st.dictionaries(st.text(max_size=8) | contact_keys(), LEAVES, max_size=3),
)
def test_the_fast_path_check_on_an_event_never_misses_what_scrub_would_change(
    member: str, query: str, context: dict[str, Any]
) -> None:
    raw = {"type": "search", "member_id": member, "query": query, "context": context}
    try:
        event = Event.model_validate(raw)
    except ValueError:
        return
    if SCRUB.scrub(raw) != raw:
        assert SCRUB.finds(event)
