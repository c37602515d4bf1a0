"""Alembic environment of the trainer's store (the model registry and the jobs). Run by
``clinalign.common.migrations.migrate`` (the service runs it at start-up, ``clinalign
migrate`` by hand) or by Alembic:
``alembic -c services/clinalign/trainer/alembic.ini upgrade head``."""

from clinalign.common.migrations import run_env, version_table
from clinalign.trainer.jobs import store  # noqa: F401  (its tables join the registry's)
from clinalign.trainer.registry.versions import Base

run_env(Base.metadata, version_table("trainer"))
