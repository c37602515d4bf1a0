"""The monitor's use cases called directly, without gRPC: each validates its input (the
error names the field), and resolving a flag enqueues its feedback in the same transaction."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.common.v1 import common_pb2
from clinalign.monitor import flags, store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MIGRATIONS as MONITOR_MIGRATIONS
from clinalign.monitor.usecases import Limits, Monitor
from clinalign.monitor.v1 import monitor_pb2 as pb
from tests.conftest import reset_tables

LIMITS = Limits.from_settings(MonitorSettings(max_batch=3, max_comment_chars=20))


@pytest.fixture
def monitor(database_url: str) -> Iterator[Monitor]:
    reset_tables(database_url, store.Base)
    db = Database(database_url, store.Base, MONITOR_MIGRATIONS)
    db.create_schema()
    yield Monitor(db, lambda text: text.replace("Jane", "[NAME]"), LIMITS)
    db.dispose()


def _output(output_id: str = "out-1", **kw: object) -> store.OutputRecord:
    fields: dict[str, object] = {
        "output_id": output_id,
        "model_version": "policy-v1",
        "prompt_template_version": "",
        "latency_s": 0.1,
        "completion_tokens": 5,
        "reward_score": 0.5,
        "created_at": datetime.now(UTC),
        "prompt": "Jane asks about a synthetic cough",
        "text": "Rest and fluids.",
    }
    fields.update(kw)
    return store.OutputRecord(**fields)  # type: ignore[arg-type]


def _flag(**kw: object) -> flags.NewFlag:
    fields: dict[str, object] = {
        "output_id": "out-1",
        "category": common_pb2.ERROR_CATEGORY_FACTUAL_ERROR,
        "severity": pb.SEVERITY_HIGH,
        "comment": "",
        "corrected_text": "",
    }
    fields.update(kw)
    return flags.NewFlag(**fields)  # type: ignore[arg-type]


async def test_record_outputs_validates_each_output_and_writes_nothing_on_a_bad_one(
    monitor: Monitor,
) -> None:
    with pytest.raises(InvalidArgument, match="at least one output") as info:
        await monitor.record_outputs([])
    assert info.value.field == "outputs"
    with pytest.raises(InvalidArgument, match="at most 3 per call"):
        await monitor.record_outputs([_output(f"o{i}") for i in range(4)])
    with pytest.raises(InvalidArgument, match="must not be negative") as info:
        await monitor.record_outputs([_output("a"), _output("b", latency_s=-1.0)])
    assert info.value.field == "outputs[1].latency_s"
    with pytest.raises(InvalidArgument) as info:
        await monitor.record_outputs([_output("x" * 65)])
    assert info.value.field == "outputs[0].output_id"
    assert await monitor.record_outputs([_output("a"), _output("b")]) == (2, 0)
    assert await monitor.record_outputs([_output("a")]) == (0, 1)  # ids are idempotent


async def test_flags_are_validated_de_identified_and_resolved_with_their_feedback(
    monitor: Monitor,
) -> None:
    await monitor.record_outputs([_output()])
    with pytest.raises(InvalidArgument, match="is required: one of the ErrorCategory"):
        await monitor.flag_output(_flag(category=0), "clin-a")
    with pytest.raises(InvalidArgument, match="is longer than 20 characters") as info:
        await monitor.flag_output(_flag(comment="c" * 21), "clin-a")
    assert info.value.field == "comment"
    row = await monitor.flag_output(_flag(corrected_text="Jane should rest."), "clin-a")
    assert row.corrected_text == "[NAME] should rest." and row.flagged_by == "clin-a"

    with pytest.raises(InvalidArgument, match="is required when dismissing") as info:
        await monitor.resolve_flag(row.id, pb.RESOLUTION_DISMISS, "  ", "clin-b")
    assert info.value.field == "reason"
    with pytest.raises(InvalidArgument, match="RESOLUTION_CONFIRM or RESOLUTION_DISMISS"):
        await monitor.resolve_flag(row.id, pb.RESOLUTION_UNSPECIFIED, "", "clin-b")
    resolved, delivery = await monitor.resolve_flag(row.id, pb.RESOLUTION_CONFIRM, "", "clin-b")
    assert resolved.status == flags.CONFIRMED and resolved.resolved_by == "clin-b"
    assert delivery is not None  # enqueued in the resolving transaction

    page = await monitor.list_flags(flags.Filter(status=flags.CONFIRMED), 10, "")
    assert [f.id for f in page.flags] == [row.id] and row.id in page.feedback
    with pytest.raises(InvalidArgument, match="is not a Severity value") as info:
        await monitor.list_flags(flags.Filter(min_severity=99), 10, "")
    assert info.value.field == "min_severity"


async def test_stats_lineage_and_retraining_refuse_what_they_cannot_answer(
    monitor: Monitor,
) -> None:
    now = datetime.now(UTC)
    with pytest.raises(InvalidArgument, match="must be before end_time"):
        await monitor.stats("", now, now - timedelta(hours=1))
    with pytest.raises(InvalidArgument, match="is at most 64 characters"):
        await monitor.lineage("x" * 65)
    with pytest.raises(FailedPrecondition, match="no peers"):
        await monitor.lineage("out-1")  # this Monitor was built without peers
    with pytest.raises(FailedPrecondition, match="no retraining policy"):
        await monitor.evaluate_retraining(dry_run=True)
    assert await monitor.list_runs(10, "") == ([], "")


async def test_replay_cases_default_to_critical_and_count_erased_prompts(
    monitor: Monitor,
) -> None:
    await monitor.record_outputs([_output("out-1"), _output("out-2"), _output("out-3")])
    for oid, severity in (("out-1", pb.SEVERITY_CRITICAL), ("out-2", pb.SEVERITY_CRITICAL)):
        row = await monitor.flag_output(_flag(output_id=oid, severity=severity), "clin-a")
        await monitor.resolve_flag(row.id, pb.RESOLUTION_CONFIRM, "", "clin-b")
    high = await monitor.flag_output(_flag(output_id="out-3"), "clin-a")
    await monitor.resolve_flag(high.id, pb.RESOLUTION_CONFIRM, "", "clin-b")

    def erase(s: Session) -> None:  # what retention does to a baseline output
        s.execute(
            update(store.OutputRow)
            .where(store.OutputRow.output_id == "out-2")
            .values(prompt=None, text=None)
        )

    await monitor.db.run_write(erase)
    page = await monitor.replay_cases(pb.SEVERITY_UNSPECIFIED, 0, "")
    assert [c.prompt for c in page.cases] == ["[NAME] asks about a synthetic cough"]
    assert page.purged == 1 and page.next_page_token == ""
    page = await monitor.replay_cases(pb.SEVERITY_HIGH, 0, "")
    assert [c.severity for c in page.cases] == [pb.SEVERITY_CRITICAL, pb.SEVERITY_HIGH]
    with pytest.raises(InvalidArgument, match="is not a Severity value") as info:
        await monitor.replay_cases(-1, 0, "")
    assert info.value.field == "min_severity"
    with pytest.raises(InvalidArgument, match="between 0 and 500") as info:
        await monitor.replay_cases(0, 501, "")
    assert info.value.field == "page_size"
