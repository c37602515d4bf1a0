"""Production outputs for review, through the monitor's use cases without gRPC: each
ListOutputs filter alone and combined, newest first, pages, the counts of open, confirmed
and dismissed flags, one output with its flags, the task recorded with each output, and
every bad input refused naming its field."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from clinalign.common.db import Database
from clinalign.common.errors import InvalidArgument, NotFound
from clinalign.common.v1 import common_pb2
from clinalign.monitor import flags, store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.convert import output_to_proto
from clinalign.monitor.outputs import Filter
from clinalign.monitor.server import MIGRATIONS as MONITOR_MIGRATIONS
from clinalign.monitor.usecases import Limits, Monitor
from clinalign.monitor.v1 import monitor_pb2 as pb
from tests.conftest import reset_tables

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
# (id, version, task, minutes after T0, statuses of its flags in the order raised)
SEED = [
    ("o1", "v1", "summary", 0, ()),
    ("o2", "v1", "free_text", 1, (flags.OPEN,)),
    ("o3", "v2", "summary", 2, (flags.CONFIRMED, flags.DISMISSED)),
    ("o4", "v2", "patient_question", 3, (flags.DISMISSED,)),
    ("o5", "v1", "", 4, (flags.OPEN, flags.CONFIRMED, flags.OPEN)),  # an older reporter
]
NEWEST_FIRST = ["o5", "o4", "o3", "o2", "o1"]
RESOLUTION = {flags.CONFIRMED: pb.RESOLUTION_CONFIRM, flags.DISMISSED: pb.RESOLUTION_DISMISS}


@pytest.fixture
def monitor(database_url: str) -> Iterator[Monitor]:
    reset_tables(database_url, store.Base)
    db = Database(database_url, store.Base, MONITOR_MIGRATIONS)
    db.create_schema()
    limits = Limits.from_settings(MonitorSettings())
    yield Monitor(db, lambda text: text.replace("Jane", "[NAME]"), limits)
    db.dispose()


def _output(oid: str, version: str, task: str, at: datetime) -> store.OutputRecord:
    return store.OutputRecord(
        oid, version, "", 0.2, 7, 0.5, at, "Jane asks about a cough", "Rest.", task=task
    )


@pytest.fixture
async def seeded(monitor: Monitor) -> dict[str, list[str]]:
    """SEED recorded and flagged; each output's flag ids, in the order raised."""
    records = [_output(o, v, t, T0 + timedelta(minutes=m)) for o, v, t, m, _ in SEED]
    assert await monitor.record_outputs(records) == (5, 0)
    raised: dict[str, list[str]] = {}
    for oid, _, _, _, statuses in SEED:
        for status in statuses:
            new = flags.NewFlag(oid, common_pb2.ERROR_CATEGORY_OMISSION, pb.SEVERITY_HIGH, "", "")
            row = await monitor.flag_output(new, "clin-a")
            if status != flags.OPEN:
                await monitor.resolve_flag(row.id, RESOLUTION[status], "checked", "clin-b")
            raised.setdefault(oid, []).append(row.id)
    return raised


async def _ids(monitor: Monitor, f: Filter, page_size: int = 0) -> list[str]:
    page = await monitor.list_outputs(f, page_size, "")
    return [s.output.output_id for s in page.outputs]


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (Filter(), NEWEST_FIRST),
        (Filter(model_version="v1"), ["o5", "o2", "o1"]),
        (Filter(model_version="v9"), []),
        (Filter(task="summary"), ["o3", "o1"]),
        (Filter(task="free_text"), ["o2"]),
        (Filter(start=_at(1), end=_at(3)), ["o3", "o2"]),  # start inclusive, end exclusive
        (Filter(start=_at(3)), ["o5", "o4"]),
        (Filter(end=_at(1)), ["o1"]),
        (Filter(flag_state=pb.FLAG_STATE_UNFLAGGED), ["o1"]),
        (Filter(flag_state=pb.FLAG_STATE_FLAGGED), ["o5", "o4", "o3", "o2"]),
        (Filter(flag_state=pb.FLAG_STATE_OPEN), ["o5", "o2"]),
        (Filter(flag_state=pb.FLAG_STATE_CONFIRMED), ["o5", "o3"]),
        (Filter(flag_state=pb.FLAG_STATE_DISMISSED), ["o4", "o3"]),
        (Filter(model_version="v1", flag_state=pb.FLAG_STATE_OPEN, start=_at(2)), ["o5"]),
        (Filter(model_version="v2", task="summary", flag_state=pb.FLAG_STATE_DISMISSED), ["o3"]),
        (Filter(task="summary", flag_state=pb.FLAG_STATE_UNFLAGGED, end=_at(5)), ["o1"]),
        (Filter(model_version="v1", task="summary", flag_state=pb.FLAG_STATE_OPEN), []),
    ],
)
async def test_each_filter_alone_and_combined_newest_first(
    monitor: Monitor, seeded: dict[str, list[str]], f: Filter, expected: list[str]
) -> None:
    assert await _ids(monitor, f) == expected


async def test_each_output_counts_its_flags_by_status(
    monitor: Monitor, seeded: dict[str, list[str]]
) -> None:
    page = await monitor.list_outputs(Filter(), 0, "")
    counts = {
        s.output.output_id: (s.open_flags, s.confirmed_flags, s.dismissed_flags)
        for s in page.outputs
    }
    assert counts == {
        "o1": (0, 0, 0),
        "o2": (1, 0, 0),
        "o3": (0, 1, 1),
        "o4": (0, 0, 1),
        "o5": (2, 1, 0),
    }
    o5 = page.outputs[0].output
    assert (o5.task, o5.prompt, o5.text) == ("", "[NAME] asks about a cough", "Rest.")
    assert page.next_page_token == ""


async def test_pages_walk_the_listing_once_in_order(
    monitor: Monitor, seeded: dict[str, list[str]]
) -> None:
    seen: list[list[str]] = []
    token = ""
    while True:
        page = await monitor.list_outputs(Filter(), 2, token)
        seen.append([s.output.output_id for s in page.outputs])
        token = page.next_page_token
        if not token:
            break
    assert seen == [["o5", "o4"], ["o3", "o2"], ["o1"]]
    flagged = await monitor.list_outputs(Filter(flag_state=pb.FLAG_STATE_FLAGGED), 2, "")
    rest = await monitor.list_outputs(
        Filter(flag_state=pb.FLAG_STATE_FLAGGED), 2, flagged.next_page_token
    )
    assert [s.output.output_id for s in flagged.outputs + rest.outputs] == ["o5", "o4", "o3", "o2"]
    # A full last page has a token; the page after it is empty and has none.
    end = await monitor.list_outputs(
        Filter(flag_state=pb.FLAG_STATE_FLAGGED), 2, rest.next_page_token
    )
    assert rest.next_page_token and (end.outputs, end.next_page_token) == ([], "")


async def test_outputs_generated_at_the_same_time_come_by_id_descending(monitor: Monitor) -> None:
    await monitor.record_outputs([_output(o, "v1", "summary", T0) for o in ("b", "a", "c")])
    assert await _ids(monitor, Filter()) == ["c", "b", "a"]


async def test_get_output_returns_its_counts_and_every_flag_oldest_first(
    monitor: Monitor, seeded: dict[str, list[str]]
) -> None:
    detail = await monitor.get_output("o5")
    assert detail.summary.output.output_id == "o5"
    s = detail.summary
    assert (s.open_flags, s.confirmed_flags, s.dismissed_flags) == (2, 1, 0)
    assert [f.id for f in detail.flags] == seeded["o5"]
    assert [f.status for f in detail.flags] == [flags.OPEN, flags.CONFIRMED, flags.OPEN]
    assert set(detail.feedback) == {seeded["o5"][1]}  # the confirmed one's delivery
    bare = await monitor.get_output("o1")
    assert (bare.flags, bare.feedback) == ([], {})
    with pytest.raises(NotFound, match=r"^output_id: output 'nope' not found$"):
        await monitor.get_output("nope")


async def test_erased_text_comes_back_empty(monitor: Monitor, seeded: dict[str, list[str]]) -> None:
    def erase(s: Session) -> None:  # what retention does to a baseline output
        s.execute(
            update(store.OutputRow)
            .where(store.OutputRow.output_id == "o3")
            .values(prompt=None, text=None)
        )

    await monitor.db.run_write(erase)
    detail = await monitor.get_output("o3")
    out = output_to_proto(detail.summary.output)
    assert (out.prompt, out.text, out.task, out.model_version) == ("", "", "summary", "v2")
    assert out.reward_score == 0.5 and out.create_time.ToDatetime(UTC) == _at(2)


@pytest.mark.parametrize(
    ("call", "field", "message"),
    [
        (lambda m: m.list_outputs(Filter(), 101, ""), "page_size", "between 0 and 100"),
        (lambda m: m.list_outputs(Filter(), -1, ""), "page_size", "between 0 and 100"),
        (lambda m: m.list_outputs(Filter(), 0, "garbage"), "page_token", "not a token"),
        (
            lambda m: m.list_outputs(Filter(start=_at(2), end=_at(1)), 0, ""),
            "start_time",
            "must be before end_time",
        ),
        (
            lambda m: m.list_outputs(Filter(start=_at(1), end=_at(1)), 0, ""),
            "start_time",
            "must be before end_time",
        ),
        (
            lambda m: m.list_outputs(Filter(flag_state=99), 0, ""),
            "flag_state",
            "99 is not a FlagState value",
        ),
        (lambda m: m.list_outputs(Filter(task="Summary"), 0, ""), "task", "a-z, 0-9"),
        (lambda m: m.list_outputs(Filter(task="x" * 65), 0, ""), "task", "at most 64"),
        (
            lambda m: m.list_outputs(Filter(model_version="v" * 65), 0, ""),
            "model_version",
            "at most 64",
        ),
        (lambda m: m.get_output(""), "output_id", "is required"),
        (lambda m: m.get_output("o" * 65), "output_id", "at most 64"),
    ],
)
async def test_bad_requests_name_their_field(
    monitor: Monitor, call: object, field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        await call(monitor)  # type: ignore[operator]
    assert info.value.field == field


async def test_the_task_is_recorded_validated_and_nothing_written_on_a_bad_one(
    monitor: Monitor,
) -> None:
    for i, bad in enumerate(("Summary", "free text", "t" * 65, "summary\n")):
        good = _output("ok", "v1", "summary", T0)
        with pytest.raises(InvalidArgument, match="at most 64 characters of a-z") as info:
            await monitor.record_outputs([good, _output(f"bad-{i}", "v1", bad, T0)])
        assert info.value.field == "outputs[1].task"

    def count(s: Session) -> int:
        return int(s.scalar(select(func.count()).select_from(store.OutputRow)) or 0)

    assert await monitor.db.run_sync(count) == 0
    tasks = ("t" * 64, "discharge_instructions", "free_text", "a-1")
    await monitor.record_outputs([_output(t[:8], "v1", t, T0) for t in tasks])
    for task in tasks:
        assert await _ids(monitor, Filter(task=task)) == [task[:8]]
