"""Alembic environment of the preference store. Run by ``clinalign.common.db.migrate``
(the service runs it at start-up) or by hand:
``alembic -c services/clinalign/preference/alembic.ini upgrade head``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from clinalign.common.db import sqlalchemy_url
from clinalign.preference.models import Base

config = context.config
OPTIONS = {
    "target_metadata": Base.metadata,
    "render_as_batch": True,  # SQLite alters tables by copying them
    # Each service keeps its own version table, so services may share one database.
    "version_table": config.attributes.get("version_table", "alembic_version_preference"),
}


def run_offline() -> None:
    url = sqlalchemy_url(config.get_main_option("sqlalchemy.url") or "")
    context.configure(url=url, literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    section = dict(config.get_section(config.config_ini_section) or {})
    section["sqlalchemy.url"] = sqlalchemy_url(section.get("sqlalchemy.url", ""))
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, **OPTIONS)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
