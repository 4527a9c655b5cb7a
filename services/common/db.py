"""SQLAlchemy engines for the stores: SQLite embedded, PostgreSQL in production, same code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, create_engine, event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url


def make_engine(url: str) -> Engine:
    """Engine for a store URL (`sqlite:///path` or `postgresql+psycopg://...`)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the gRPC handlers read while the consumer thread writes; NORMAL sync is
    # durable across process crashes (only an OS crash can lose the last commits, and
    # the bus redelivers what was not committed there).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def unseen(conn: Connection, column: Column[str], keys: Sequence[str]) -> list[str]:
    """The keys (in order, without repeats) not yet present in `column`.

    Consumers call this inside the transaction that records the keys, and each consumer
    group has one writer, so a key reported unseen is applied exactly once.
    """
    wanted = list(dict.fromkeys(keys))
    seen: set[str] = set()
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        seen.update(conn.execute(select(column).where(column.in_(chunk))).scalars())
    return [key for key in wanted if key not in seen]


def insert_ignore(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows, skipping those that would break a unique key; return how many went in."""
    if not rows:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    result = conn.execute(dialect.insert(table).on_conflict_do_nothing(), list(rows))
    # Drivers that cannot count an executemany say -1; callers only use the count to report.
    return max(result.rowcount, 0)


def upsert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], keys: list[str]) -> None:
    """Insert rows, replacing the non-key columns of rows that already exist."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    changed = {c: statement.excluded[c] for c in rows[0] if c not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=changed), list(rows))


def insert_ignore_rows(conn: Connection, table: Table, rows: Sequence[tuple[str, ...]]) -> None:
    """insert_ignore for plain string rows in column order, straight to the driver.

    For the hot tables of consumers (ids seen, orders, purchases) SQLAlchemy's per-row
    parameter processing costs more than the insert itself; these rows need none of it.
    """
    if not rows:
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    columns = ", ".join(c.name for c in table.columns)
    marks = ", ".join(mark for _ in table.columns)
    conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING",
        list(rows),
    )
