"""Upgrading stores that an earlier release created, on SQLite and PostgreSQL: the trainer's
and the monitor's schema as release c3d959f made them (``create_all``, no Alembic; frozen in
``tests/data/schemas``), filled with rows, migrated as a service migrates them at start,
and every row found again. Also: the newest revision of every store is exactly its models
(nothing the models declare is missing from the migrations), and replicas starting together
migrate once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, create_engine, func, inspect, select, text
from sqlalchemy.orm import DeclarativeBase, Session

from clinalign.common.db import Database, sqlalchemy_url
from clinalign.common.migrations import current_revision, version_table
from clinalign.monitor import store as monitor_store
from clinalign.monitor.server import MIGRATIONS as MONITOR_MIGRATIONS
from clinalign.preference import models as preference_models
from clinalign.preference.server import MIGRATIONS as PREFERENCE_MIGRATIONS
from clinalign.trainer.jobs import store as job_store
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import MIGRATIONS as TRAINER_MIGRATIONS
from tests.conftest import reset_tables

SCHEMAS = Path(__file__).parent.parent / "data" / "schemas"
RELEASE = "c3d959f"
AT = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)
STORES = {
    "trainer": (registry.Base, TRAINER_MIGRATIONS, "model_versions"),
    "monitor": (monitor_store.Base, MONITOR_MIGRATIONS, "outputs"),
}


def _dialect(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


@pytest.fixture
def clean(database_url: str) -> Iterator[str]:
    for base, _, _ in STORES.values():
        reset_tables(database_url, base)
    yield database_url
    for base, _, _ in STORES.values():
        reset_tables(database_url, base)


def _create_previous_release(engine: Engine, service: str, dialect: str) -> None:
    ddl = (SCHEMAS / f"{service}-{RELEASE}.{dialect}.sql").read_text()
    statements = [s.strip() for s in ddl.split(";") if s.strip()]
    with engine.begin() as conn:
        for statement in statements:
            body = "\n".join(ln for ln in statement.splitlines() if not ln.startswith("--"))
            conn.execute(text(body))


def _insert(engine: Engine, table: str, rows: list[dict[str, object]]) -> None:
    columns = list(rows[0])
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({values})"), rows)


def _fill_trainer(engine: Engine) -> None:
    versions = [
        {
            "version": f"policy-v{i}",
            "name": "clinalign-policy",
            "kind": "policy",
            "seq": i,
            "stage": stage,
            "base_model": "",
            "adapter_path": "",
            "artifact_uri": f"/registry/policy-v{i}",
            "weights_hash": f"{i:064x}",
            "parent_version": f"policy-v{i - 1}" if i > 1 else "",
            "snapshot_hash": "",
            "job_id": f"job-{i}",
            "metrics_json": json.dumps({"win_rate": 0.5 + i / 100}),
            "manifest_json": "{}",
            "created_at": AT,
        }
        for i, stage in ((1, "retired"), (2, "serving"), (3, "rejected"))
    ]
    _insert(engine, "model_versions", versions)
    _insert(
        engine,
        "serving_events",
        [
            {"kind": "policy", "version": "policy-v1", "action": "initial", "at": AT},
            {"kind": "policy", "version": "policy-v2", "action": "promote", "at": AT},
        ],
    )
    _insert(
        engine,
        "gate_decisions",
        [
            {
                "kind": "policy",
                "version": v,
                "promoted": promoted,
                "checks_json": "[]",
                "principal": "ml-engineer",
                "at": AT,
            }
            for v, promoted in (("policy-v2", True), ("policy-v3", False))
        ],
    )
    _insert(
        engine,
        "jobs",
        [
            {
                "id": f"job-{i}",
                "kind": "ppo",
                "state": "succeeded",
                "executor": "local",
                "idempotency_key": None if i == 2 else f"key-{i}",
                "spec_json": "{}",
                "inputs_json": "{}",
                "step": 10,
                "total_steps": 10,
                "metrics_json": "{}",
                "failure_reason": "",
                "model_version": f"policy-v{i}",
                "report_uri": "",
                "pid": None,
                "created_at": AT,
                "started_at": AT,
                "ended_at": AT,
            }
            for i in (1, 2, 3)
        ],
    )
    _insert(
        engine,
        "job_events",
        [
            {"job_id": "job-1", "state": "running", "step": s, "metrics_json": "{}", "at": AT}
            for s in range(5)
        ],
    )


def _check_trainer(session: Session) -> None:
    rows = session.scalars(select(registry.ModelVersionRow).order_by(registry.ModelVersionRow.seq))
    assert [(r.version, r.stage) for r in rows] == [
        ("policy-v1", "retired"),
        ("policy-v2", "serving"),
        ("policy-v3", "rejected"),
    ]
    reg = registry.Registry(Path("/unused"))
    assert reg.served(session, "policy") is not None
    assert reg.serving_history(session, "policy") == ["policy-v1", "policy-v2"]
    events = session.scalars(select(registry.ServingEventRow)).all()
    assert [(e.principal, e.reason) for e in events] == [("", ""), ("", "")]  # new columns
    assert [d.promoted for d in reg.decisions(session)] == [True, False]
    assert session.scalar(select(func.count()).select_from(job_store.JobRow)) == 3
    assert session.scalar(select(func.count()).select_from(job_store.JobEventRow)) == 5
    assert session.scalar(select(func.count()).select_from(registry.CanaryRow)) == 0


def _fill_monitor(engine: Engine) -> None:
    _insert(
        engine,
        "outputs",
        [
            {
                "output_id": f"out-{i}",
                "model_version": "policy-v2",
                "prompt_template_version": "t1",
                "prompt": "Synthetic prompt.",
                "text": "Synthetic answer.",
                "latency_s": 0.25,
                "completion_tokens": 40,
                "reward_score": 0.1 * i,
                "in_baseline": i < 2,
                "created_at": AT,
                "recorded_at": AT,
            }
            for i in range(4)
        ],
    )
    _insert(
        engine,
        "flags",
        [
            {
                "id": "flag-1",
                "output_id": "out-1",
                "model_version": "policy-v2",
                "category": 1,
                "severity": 3,
                "comment": "",
                "corrected_text": "",
                "status": 2,
                "flagged_by": "clinician",
                "resolved_by": "reviewer",
                "resolution_reason": "confirmed",
                "created_at": AT,
                "resolved_at": AT,
            }
        ],
    )
    _insert(
        engine,
        "baselines",
        [{"model_version": "policy-v2", "outputs": 2, "frozen_at": AT}],
    )


def _check_monitor(session: Session) -> None:
    outputs = session.scalars(
        select(monitor_store.OutputRow).order_by(monitor_store.OutputRow.output_id)
    )
    assert [(o.output_id, o.in_baseline) for o in outputs] == [
        ("out-0", True),
        ("out-1", True),
        ("out-2", False),
        ("out-3", False),
    ]
    # 0002: outputs their caller scored count as scored; none has a cost yet.
    rows = session.scalars(select(monitor_store.OutputRow)).all()
    assert all(o.scored_at is not None and o.cost is None for o in rows)
    assert {(o.reward_model_version, o.score_attempts) for o in rows} == {("", 0)}
    # 0003: outputs recorded before it have no task, as from a reporter that does not say.
    assert {o.task for o in rows} == {""}
    indexes = {i["name"] for i in inspect(session.get_bind()).get_indexes("outputs")}
    assert "ix_outputs_task" in indexes
    # 0004: the outcomes table, empty, with its indexes.
    assert session.scalar(select(func.count()).select_from(monitor_store.OutcomeRow)) == 0
    outcome_indexes = {i["name"] for i in inspect(session.get_bind()).get_indexes("outcomes")}
    assert {"ix_outcomes_output_id", "ix_outcomes_model_version"} <= outcome_indexes
    # 0005: the cost model's first scoring time by index.
    assert "ix_outputs_cost_model_version_scored_at" in {
        i["name"] for i in inspect(session.get_bind()).get_indexes("outputs")
    }
    flag = session.get(monitor_store.FlagRow, "flag-1")
    assert flag is not None and flag.resolved_by == "reviewer"
    baseline = session.get(monitor_store.BaselineRow, "policy-v2")
    assert baseline is not None and baseline.outputs == 2


FILL = {"trainer": _fill_trainer, "monitor": _fill_monitor}
CHECK = {"trainer": _check_trainer, "monitor": _check_monitor}


@pytest.mark.parametrize("service", sorted(STORES))
def test_a_store_of_the_previous_release_upgrades_and_keeps_every_row(
    clean: str, service: str
) -> None:
    base, migrations, baseline_table = STORES[service]
    engine = create_engine(sqlalchemy_url(clean))
    _create_previous_release(engine, service, _dialect(clean))
    FILL[service](engine)
    assert current_revision(engine, version_table(service)) is None

    db = Database(clean, base, migrations, baseline_table=baseline_table)
    db.create_schema()  # what the service runs at start
    db.create_schema()  # and again at the next start: nothing to do
    try:
        head = sorted(p.name[:4] for p in (migrations / "versions").glob("0*.py"))[-1]
        assert current_revision(db.engine, version_table(service)) == head
        with db.sessions() as session:
            CHECK[service](session)
    finally:
        db.dispose()
        engine.dispose()


@pytest.mark.parametrize(
    "base,migrations,service",
    [
        (preference_models.Base, PREFERENCE_MIGRATIONS, "preference"),
        (registry.Base, TRAINER_MIGRATIONS, "trainer"),
        (monitor_store.Base, MONITOR_MIGRATIONS, "monitor"),
    ],
)
def test_the_newest_revision_is_exactly_the_models(
    database_url: str, base: type[DeclarativeBase], migrations: Path, service: str
) -> None:
    """A column or table added to a model without a migration fails here, not in a
    deployment."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    reset_tables(database_url, base)
    db = Database(database_url, base, migrations)
    db.create_schema()
    try:
        with db.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": version_table(service)}
            )
            diffs = [d for d in compare_metadata(context, base.metadata) if _ours(d, base.metadata)]
        assert diffs == [], f"{service}: the models and the migrations differ: {diffs}"
    finally:
        db.dispose()
        reset_tables(database_url, base)


def _ours(diff: object, metadata: MetaData) -> bool:
    """Other services' tables (and their indexes) in a shared test database are not this
    store's business."""
    if isinstance(diff, tuple) and diff[0] == "remove_table":
        return diff[1].name in metadata.tables
    if isinstance(diff, tuple) and diff[0] == "remove_index":
        return diff[1].table.name in metadata.tables
    return True


def test_replicas_starting_together_migrate_once(clean: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        db = Database(clean, registry.Base, TRAINER_MIGRATIONS, baseline_table="model_versions")
        try:
            barrier.wait()
            db.create_schema()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    engine = create_engine(sqlalchemy_url(clean))
    try:
        assert "serving_canaries" in inspect(engine).get_table_names()
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT count(*) FROM {version_table('trainer')}"))
            assert rows.scalar() == 1
    finally:
        engine.dispose()


def test_clinalign_migrate_upgrades_the_stores_by_hand(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from clinalign.cli.main import app

    data = tmp_path / "data"
    data.mkdir()
    engine = create_engine(f"sqlite:///{data / 'trainer.db'}")
    _create_previous_release(engine, "trainer", "sqlite")
    _fill_trainer(engine)
    runner = CliRunner()
    result = runner.invoke(app, ["migrate", "--data-dir", str(data), "--store", "trainer"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "trainer: none -> 0002"
    with Session(engine) as session:
        _check_trainer(session)
    engine.dispose()
    refused = runner.invoke(app, ["migrate", "--data-dir", str(data), "--store", "jobs"])
    assert refused.exit_code == 2
    assert "--store 'jobs' is not one of preference, trainer, monitor" in refused.output
