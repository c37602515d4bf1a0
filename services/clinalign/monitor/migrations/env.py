"""Alembic environment of the monitor's store. Run by
``clinalign.common.migrations.migrate`` (the service runs it at start-up, ``clinalign
migrate`` by hand) or by Alembic:
``alembic -c services/clinalign/monitor/alembic.ini upgrade head``."""

from clinalign.common.migrations import run_env, version_table
from clinalign.monitor.store import Base

run_env(Base.metadata, version_table("monitor"))
