"""Schema migrations: each service's tables come from its Alembic revisions, applied at start.

Every store calls `upgrade(engine, service)` in its constructor. The revisions of a service
live in `services/<service>/migrations/versions/`; the database remembers the newest one
applied in a version table of its own (`alembic_version_<service>`), so a service pointed at
another's database never takes that one's revisions for its own. (Each service still needs
a database, or a PostgreSQL schema, of its own: several have a table of the same name, such
as its copy of the catalog.) Three cases:

- an empty database: every revision runs;
- a database the previous release made (its tables, no version table): the service's
  baseline revision (that release's schema) is stamped, then the newer ones run;
- an up-to-date one: nothing runs.

On PostgreSQL a transaction-scoped advisory lock makes replicas that start together migrate
one after the other: the later ones find the work done. docs/migrations.md tells how to add
a revision; `python -m services.common.migrations --help` lists the helpers.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, create_engine, inspect, text

from services.common.db import make_engine

SERVICES = ("analytics", "campaigns", "gateway", "profiles", "ranking", "retrieval")
# The first revision of every service: the schema of the release before migrations.
BASELINE = "0001_baseline"
_SERVICES_DIR = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


class OutdatedSchema(RuntimeError):
    """The database was made by a release older than the baseline: it cannot be upgraded."""


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


def upgrade(engine: Engine, service: str) -> None:
    """Bring the service's tables in `engine` to the newest revision."""
    with engine.begin() as conn:
        upgrade_connection(conn, service)


def upgrade_connection(conn: Connection, service: str) -> None:
    """`upgrade` inside the caller's transaction (committed by the caller)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(service)})
    found = current(conn, service)
    if found == head(service):
        return
    if found is not None and found not in revisions(service):
        # A newer release migrated it (a rolling update, or one rolled back): its revisions
        # add to the schema, so this release's replicas go on with what they know.
        log.warning(
            "the %s tables are at revision %s, newer than this release knows (%s): "
            "leaving them as they are",
            service,
            found,
            head(service),
        )
        return
    config = alembic_config(service, conn)
    if _made_by_previous_release(conn, service):
        command.stamp(config, BASELINE)
    command.upgrade(config, "head")


def current(conn: Connection, service: str) -> str | None:
    """The newest revision applied to the service's tables, None before the first."""
    context = MigrationContext.configure(conn, opts={"version_table": version_table(service)})
    return context.get_current_revision()


def head(service: str) -> str:
    """The service's newest revision."""
    return revisions(service)[-1]


@functools.cache
def revisions(service: str) -> tuple[str, ...]:
    """The service's revisions, from the baseline to the head: one line (a fork is an
    error)."""
    script = ScriptDirectory.from_config(alembic_config(service))
    heads = script.get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the {service} migrations have {len(heads)} heads: {heads}")
    return tuple(revision.revision for revision in script.walk_revisions())[::-1]


def alembic_config(service: str, conn: Connection | None = None) -> Config:
    """The Alembic configuration of a service's migrations, without any alembic.ini; the
    revisions run on `conn` (see run_env)."""
    if service not in SERVICES:
        raise ValueError(f"no migrations for {service!r}: one of {', '.join(SERVICES)}")
    config = Config()
    location = str(_SERVICES_DIR / service / "migrations")
    config.set_main_option("script_location", location.replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    # A new revision's file is named by its id alone ("0003_segments.py").
    config.set_main_option("file_template", "%%(rev)s")
    config.attributes["connection"] = conn
    config.attributes["version_table"] = version_table(service)
    return config


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's env.py: run the revisions on the connection the caller
    handed over in the config (no URL, no alembic.ini)."""
    from alembic import context

    conn = context.config.attributes.get("connection")
    if conn is None:
        raise RuntimeError("run migrations through services.common.migrations, not alembic")
    context.configure(
        connection=conn,
        target_metadata=target_metadata,
        version_table=context.config.attributes["version_table"],
        # Autogenerated changes as batch operations: SQLite alters most columns only by
        # copying the table, which batch mode does (and PostgreSQL runs them as ALTERs).
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _lock_key(service: str) -> int:
    return zlib.crc32(f"recofleet.migrations.{service}".encode())


def _made_by_previous_release(conn: Connection, service: str) -> bool:
    """Whether the service's tables are all there without a version table: the previous
    release made them. With some of them only, the baseline creates the missing ones.
    OutdatedSchema when one lacks a column of the baseline's."""
    found = inspect(conn)
    if found.has_table(version_table(service)):
        return False
    baseline = _baseline_columns(service)
    present = [table for table in baseline if found.has_table(table)]
    for table in present:
        have = {c["name"] for c in found.get_columns(table)}
        missing = [column for column in baseline[table] if column not in have]
        if missing:
            raise OutdatedSchema(
                f"the {service} store ({conn.engine.url.render_as_string(hide_password=True)}) "
                f"was made by a recofleet older than the schema migrations start from: table "
                f"{table} lacks {', '.join(missing)}. Recreate the data dir (rm -rf var, or a "
                "new RECOFLEET_DATA_DIR) or the database, and load again."
            )
    return len(present) == len(baseline)


@functools.cache
def _baseline_columns(service: str) -> dict[str, tuple[str, ...]]:
    """Table -> column names of the service's baseline, read off a scratch SQLite."""
    engine = create_engine("sqlite://")
    try:
        with _quiet(), engine.begin() as conn:
            command.upgrade(alembic_config(service, conn), BASELINE)
            found = inspect(conn)
            return {
                table: tuple(c["name"] for c in found.get_columns(table))
                for table in found.get_table_names()
                if table != version_table(service)
            }
    finally:
        engine.dispose()


@contextmanager
def _quiet() -> Iterator[None]:
    # Alembic logs each revision it runs: at start that tells what changed, but not for
    # the scratch database.
    logger = logging.getLogger("alembic")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def new_revision(service: str, message: str) -> Path:
    """Write the service's next revision, autogenerated: the store's tables compared with a
    scratch SQLite database at the current head. Review it before committing."""
    words = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")
    number = int(head(service).split("_", 1)[0]) + 1
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(service, conn), "head")
            written = command.revision(
                alembic_config(service, conn),
                message=message,
                autogenerate=True,
                rev_id=f"{number:04d}_{words}"[:64],
            )
    finally:
        engine.dispose()
    revisions.cache_clear()
    scripts = written if isinstance(written, list) else [written]
    return Path(scripts[0].path) if scripts and scripts[0] else Path()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.migrations", description=__doc__.splitlines()[0]
    )
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("heads", help="print every service's newest revision")
    run = actions.add_parser("upgrade", help="upgrade one service's database now")
    run.add_argument("service", choices=SERVICES)
    run.add_argument("url", help="SQLAlchemy URL of the service's database")
    new = actions.add_parser("revision", help="write a service's next revision (autogenerated)")
    new.add_argument("service", choices=SERVICES)
    new.add_argument("message", help='what it changes, e.g. "segments"')
    args = parser.parse_args(argv)
    if args.action == "heads":
        for service in SERVICES:
            print(f"{service}: {head(service)}")
    elif args.action == "upgrade":
        engine = make_engine(args.url)
        try:
            upgrade(engine, args.service)
            with engine.connect() as conn:
                print(f"{args.service}: {current(conn, args.service)}")
        finally:
            engine.dispose()
    else:
        print(new_revision(args.service, args.message))


if __name__ == "__main__":
    main()
