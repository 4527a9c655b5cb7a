"""Fixtures shared by unit tests.

`engine` runs a store test twice: on SQLite (the embedded default) and on PostgreSQL
(production). PostgreSQL at 127.0.0.1:5432 is required: when it is unreachable the
postgresql cases fail rather than skip.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from services.common.db import make_engine

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    yield engine
    engine.dispose()


def _postgres_engine(tmp_path: Path) -> Iterator[Engine]:
    # A schema of its own per test: a clean slate, and nothing left behind afterwards.
    schema = f"test_store_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = create_engine(
            POSTGRES_URL,
            pool_pre_ping=True,
            connect_args={"options": f"-csearch_path={schema}", "connect_timeout": 5},
        )
        try:
            yield engine
        finally:
            engine.dispose()
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        admin.dispose()


ENGINES: dict[str, Callable[[Path], Iterator[Engine]]] = {
    "sqlite": _sqlite_engine,
    "postgresql": _postgres_engine,
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    yield from ENGINES[request.param](tmp_path)
