"""Alembic environment of the preference store. Run by ``clinalign.common.migrations.migrate``
(the service runs it at start-up, ``clinalign migrate`` by hand) or by Alembic:
``alembic -c services/clinalign/preference/alembic.ini upgrade head``."""

from clinalign.common.migrations import run_env, version_table
from clinalign.preference.models import Base

run_env(Base.metadata, version_table("preference"))
