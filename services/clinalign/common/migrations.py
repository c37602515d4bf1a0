"""Alembic for every store: one upgrade path (``migrate``) that the services run at start-up
and ``clinalign migrate`` runs by hand, and one environment (``run_env``) that each
service's ``migrations/env.py`` calls with its own tables.

Each service keeps its own version table (``alembic_version_<service>``), so services may
share one database. Upgrades run under a lock, so replicas starting together migrate once:
a PostgreSQL advisory lock held by the upgrade's transaction (PostgreSQL's DDL is
transactional, so a failed upgrade leaves the previous schema), and on SQLite an exclusive
lock on a file beside the database.

A store that an earlier release created with ``create_all`` has its tables and no version
table. Its schema is the baseline revision (``0001``), so ``migrate`` stamps it at
``0001`` before upgrading, and every later revision applies to it as to any other.
"""

from __future__ import annotations

import contextlib
import fcntl
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, engine_from_config, inspect, pool, text

from clinalign.common.db import sqlalchemy_url

BASELINE = "0001"


def version_table(service: str) -> str:
    return f"alembic_version_{service}"


@contextlib.contextmanager
def _sqlite_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database or ""
    if not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _config(script_location: Path, connection: Connection, table: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.attributes["connection"] = connection
    cfg.attributes["version_table"] = table
    return cfg


def _needs_baseline_stamp(connection: Connection, table: str, baseline_table: str) -> bool:
    """True for a store created before it had migrations: its tables, no version table."""
    names = set(inspect(connection).get_table_names())
    return table not in names and baseline_table in names


def migrate(engine: Engine, script_location: Path, table: str, *, baseline_table: str = "") -> None:
    """Upgrades a store to the newest revision of its migrations, under a lock.
    ``baseline_table`` names a table of the baseline schema: a store that has it and no
    version table was created by ``create_all`` and is stamped at the baseline first."""
    from alembic import command

    is_sqlite = engine.url.get_backend_name() == "sqlite"
    with _sqlite_lock(engine) if is_sqlite else contextlib.nullcontext():
        with engine.begin() as connection:
            if not is_sqlite:
                key = zlib.crc32(table.encode())  # one lock per service's schema
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            cfg = _config(script_location, connection, table)
            if baseline_table and _needs_baseline_stamp(connection, table, baseline_table):
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, "head")


def current_revision(engine: Engine, table: str) -> str | None:
    """The revision a store is at, or None for a store without a version table."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": table})
        return context.get_current_revision()


def run_env(metadata: MetaData, default_table: str) -> None:
    """The body of a service's ``migrations/env.py``: runs the revisions Alembic asked for
    on the connection ``migrate`` passes, or on the URL of ``alembic.ini`` when Alembic is
    run by hand."""
    from alembic import context

    config = context.config
    options: dict[str, Any] = {
        "target_metadata": metadata,
        "render_as_batch": True,  # SQLite alters tables by copying them
        "version_table": config.attributes.get("version_table", default_table),
    }
    if context.is_offline_mode():
        url = sqlalchemy_url(config.get_main_option("sqlalchemy.url") or "")
        context.configure(url=url, literal_binds=True, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    section = dict(config.get_section(config.config_ini_section) or {})
    section["sqlalchemy.url"] = sqlalchemy_url(section.get("sqlalchemy.url", ""))
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, **options)
        with context.begin_transaction():
            context.run_migrations()
