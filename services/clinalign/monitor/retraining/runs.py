"""Retraining runs as the monitor's database records them: a run, its trigger keys, its
steps (each recorded once when it ends) and its end. Idempotency is held here, by the
database: at most one RUNNING run, and each trigger key starts at most one run."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from clinalign.monitor import store
from clinalign.monitor.feedback import DELIVERED
from clinalign.monitor.retraining.triggers import Trigger
from clinalign.monitor.store import FeedbackRow, RunRow, RunStepRow, RunTriggerRow
from clinalign.monitor.v1 import monitor_pb2 as pb

log = logging.getLogger("clinalign.monitor.retraining")

RUNNING = pb.RUN_STATE_RUNNING
PROMOTED = pb.RUN_STATE_PROMOTED
REFUSED = pb.RUN_STATE_REFUSED
FAILED = pb.RUN_STATE_FAILED
STATE_NAMES: dict[int, str] = {
    RUNNING: "running",
    PROMOTED: "promoted",
    REFUSED: "refused",
    FAILED: "failed",
}


@dataclass(frozen=True)
class StepView:
    name: str
    ref: str
    outcome: str
    at: datetime


@dataclass(frozen=True)
class RunView:
    id: str
    trigger: str
    state: int
    steps: list[StepView]
    promoted_version: str
    created_at: datetime
    snapshot_id: str = ""
    snapshot_hash: str = ""
    served_policy: str = ""
    reward_version: str = ""
    policy_version: str = ""
    reason: str = ""

    def step(self, name: str) -> StepView | None:
        return next((s for s in self.steps if s.name == name), None)


def last_run_pairs(session: Session) -> int:
    row = session.scalar(select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc()))
    return row.pairs if row else 0


def view(session: Session, run: RunRow) -> RunView:
    steps = session.scalars(
        select(RunStepRow).where(RunStepRow.run_id == run.id).order_by(RunStepRow.seq)
    )
    return RunView(
        id=run.id,
        trigger=run.trigger,
        state=run.state,
        steps=[StepView(s.name, s.ref, s.outcome, store.utc(s.at)) for s in steps],
        promoted_version=run.promoted_version,
        created_at=store.utc(run.created_at),
        snapshot_id=run.snapshot_id,
        snapshot_hash=run.snapshot_hash,
        served_policy=run.served_policy,
        reward_version=run.reward_version,
        policy_version=run.policy_version,
        reason=run.reason,
    )


def get_run(session: Session, run_id: str) -> RunView | None:
    row = session.get(RunRow, run_id)
    return view(session, row) if row else None


def running_run(session: Session) -> RunView | None:
    row = session.scalar(select(RunRow).where(RunRow.state == RUNNING))
    return view(session, row) if row else None


def list_runs(session: Session, limit: int, offset: int) -> list[RunView]:
    rows = session.scalars(
        select(RunRow)
        .order_by(RunRow.created_at.desc(), RunRow.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [view(session, r) for r in rows]


@dataclass(frozen=True)
class Cut:
    """The snapshot an evaluation cut, and when (flags delivered before it are in it)."""

    snapshot_id: str
    snapshot_hash: str
    pairs: int
    at: datetime


def start_run(
    session: Session, fired: list[Trigger], cut: Cut, served_policy: str
) -> tuple[RunView, bool]:
    """(the run, whether it is new): the RUNNING run if there is one; else the run of the
    first fired key when every fired key started one; else a new RUNNING run holding the
    unused keys, with its snapshot step and the delivered flags its snapshot includes."""
    running = running_run(session)
    if running is not None:
        return running, False
    keys = [t.key for t in fired]
    used = dict(
        session.execute(
            select(RunTriggerRow.key, RunTriggerRow.run_id).where(RunTriggerRow.key.in_(keys))
        ).all()
    )
    fresh = [t for t in fired if t.key not in used]
    if not fresh:
        found = get_run(session, used[keys[0]])
        assert found is not None
        return found, False
    now = datetime.now(UTC)
    run = RunRow(
        id=f"run_{uuid.uuid4().hex}",
        trigger=", ".join(t.reason for t in fresh),
        state=RUNNING,
        running="1",
        snapshot_id=cut.snapshot_id,
        snapshot_hash=cut.snapshot_hash,
        pairs=cut.pairs,
        served_policy=served_policy,
        created_at=now,
    )
    session.add(run)
    session.flush()  # a second RUNNING run fails here, and run_write retries
    session.add_all(RunTriggerRow(key=t.key, run_id=run.id) for t in fresh)
    included = session.execute(
        update(FeedbackRow)
        .where(
            FeedbackRow.state == DELIVERED,
            FeedbackRow.run_id.is_(None),
            FeedbackRow.delivered_at <= cut.at,
        )
        .values(run_id=run.id)
        .execution_options(synchronize_session=False)
    )
    flags = int(getattr(included, "rowcount", 0) or 0)
    record_step(
        session,
        run.id,
        "snapshot",
        cut.snapshot_id,
        f"{cut.pairs} pairs, {flags} new flags, hash {cut.snapshot_hash[:16]}",
    )
    session.flush()
    return view(session, run), True


def record_step(session: Session, run_id: str, name: str, ref: str, outcome: str) -> None:
    """Records a finished step once; a step already recorded is left as it is."""
    exists = session.scalar(
        select(RunStepRow.id).where(RunStepRow.run_id == run_id, RunStepRow.name == name)
    )
    if exists is not None:
        return
    seq = session.scalar(select(func.count()).where(RunStepRow.run_id == run_id)) or 0
    session.add(
        RunStepRow(
            run_id=run_id,
            seq=seq + 1,
            name=name,
            ref=ref[:128],
            outcome=outcome[:2000],
            at=datetime.now(UTC),
        )
    )
    session.flush()


def set_versions(session: Session, run_id: str, **versions: str) -> None:
    row = session.get(RunRow, run_id)
    if row is not None:
        for name, value in versions.items():
            setattr(row, name, value)


def finish(session: Session, run_id: str, state: int, reason: str = "", promoted: str = "") -> bool:
    """Ends a RUNNING run; False if it had ended already."""
    row = session.get(RunRow, run_id)
    if row is None or row.state != RUNNING:
        return False
    row.state, row.running, row.reason = state, None, reason[:2000]
    row.promoted_version = promoted
    row.ended_at = datetime.now(UTC)
    return True


# ------------------------------------------------------------------------ the run itself
