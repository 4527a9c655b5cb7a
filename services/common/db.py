"""SQLAlchemy engines for the stores: SQLite embedded, PostgreSQL in production, same code."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Column, Connection, Dialect, Engine, Table, create_engine, event
from sqlalchemy.engine import make_url

T = TypeVar("T")


def is_embedded(engine: Engine) -> bool:
    """Whether the store is a local file (SQLite): a read then costs this process some
    microseconds of CPU, never a wait on a server."""
    return engine.dialect.name == "sqlite"


async def served(inline: bool, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` for a request handler: in place when it cannot wait on a server (an
    embedded store, CPU work), since a hop to a worker thread cost more than such a read;
    else in a worker thread, so that the event loop answers others meanwhile."""
    if inline:
        return call(*args)
    return await asyncio.to_thread(call, *args)


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
    # Deleted content is overwritten with zeros, so an erased member's rows are not left
    # readable in free pages of the file.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def scrub_freed(engine: Engine) -> None:
    """After deleting personal data: on SQLite, checkpoint and truncate the write-ahead log,
    which still holds the pages as they were before (PostgreSQL: nothing to do here)."""
    if engine.dialect.name != "sqlite":
        return
    # A reader in another thread can hold the checkpoint back (busy): readers are short,
    # so a few tries get through.
    for attempt in range(20):
        with engine.connect() as conn:
            busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        if not busy:
            return
        time.sleep(0.05 * (attempt + 1))


def unseen(conn: Connection, column: Column[str], keys: Sequence[str]) -> list[str]:
    """The keys (in order, without repeats) not yet present in `column`.

    Consumers call this inside the transaction that records the keys, and each consumer
    group has one writer, so a key reported unseen is applied exactly once.
    """
    wanted = list(dict.fromkeys(keys))
    seen: set[str] = set()
    mark = _mark(conn)
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        marks = ", ".join(mark for _ in chunk)
        sql = f"SELECT {column.name} FROM {column.table.name} WHERE {column.name} IN ({marks})"
        seen.update(key for (key,) in conn.exec_driver_sql(sql, tuple(chunk)))
    return [key for key in wanted if key not in seen]


# Keys per IN list: well under SQLite's limit of bound parameters per statement.
_CHUNK = 500
Row = tuple[Any, ...]


def insert_ignore(
    conn: Connection, table: Table, rows: Sequence[Row], columns: Sequence[str] | None = None
) -> int:
    """Insert rows (tuples in `columns` order, all columns by default), skipping those that
    would break a unique key; return how many went in."""
    return _write(conn, table, rows, columns, "DO NOTHING")


def upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Row],
    keys: Sequence[str],
    columns: Sequence[str] | None = None,
) -> None:
    """Insert rows (tuples in `columns` order), replacing the other columns of a row whose
    `keys` already exist."""
    names = _names(table, columns)
    changed = ", ".join(f"{c} = excluded.{c}" for c in names if c not in keys)
    _write(conn, table, rows, names, f"({', '.join(keys)}) DO UPDATE SET {changed}")


def _write(
    conn: Connection, table: Table, rows: Sequence[Row], columns: Sequence[str] | None, action: str
) -> int:
    # Straight to the driver: on a consumer's hot path SQLAlchemy's per-row parameter
    # handling cost more than the database's own work. Values still go through the
    # column types' bind processors (SQLite dates, JSON), so stored rows read back the same.
    if not rows:
        return 0
    names = _names(table, columns)
    mark = _mark(conn)
    sql = (
        f"INSERT INTO {table.name} ({', '.join(names)}) "
        f"VALUES ({', '.join(mark for _ in names)}) ON CONFLICT {action}"
    )
    processors = _processors(table, tuple(names), conn.dialect)
    if processors:
        rows = [_processed(row, processors) for row in rows]
    result = conn.exec_driver_sql(sql, list(rows))
    # Drivers that cannot count an executemany say -1; callers only use the count to report.
    return max(result.rowcount, 0)


def _names(table: Table, columns: Sequence[str] | None) -> list[str]:
    return list(columns) if columns is not None else [c.name for c in table.columns]


def _mark(conn: Connection) -> str:
    return "?" if conn.dialect.paramstyle == "qmark" else "%s"


Processors = tuple[tuple[int, Callable[[Any], Any]], ...]


@functools.lru_cache(maxsize=256)
def _processors(table: Table, names: tuple[str, ...], dialect: Dialect) -> Processors:
    found = []
    for index, name in enumerate(names):
        column_type = table.c[name].type.dialect_impl(dialect)
        processor = column_type.bind_processor(dialect)
        if processor is not None:
            found.append((index, processor))
    return tuple(found)


def _processed(row: Row, processors: Processors) -> Row:
    values = list(row)
    for index, processor in processors:
        if values[index] is not None:
            values[index] = processor(values[index])
    return tuple(values)
