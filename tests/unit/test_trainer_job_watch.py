"""``jobs.watch``, the store-polling generator behind ``TrainerService.WatchJob``: a watch
always ends on the job's final state, even when the job ends between the two reads of a
poll (CI saw `clinalign jobs submit --watch` end on "RUNNING step 6/6": the job was read
before the events, and the end event was shown with the stale, running job)."""

from __future__ import annotations

from typing import Any

import pytest

from clinalign.common.db import Database
from clinalign.trainer.jobs import store as jobs


@pytest.fixture
def db(trainer_db: Database) -> Database:
    return trainer_db


def _running_job(db: Database) -> str:
    with db.sessions.begin() as session:
        job, _ = jobs.submit(session, "sft", "local", {"snapshot_id": "s1"}, {}, "")
        jobs.transition(session, job.id, jobs.RUNNING)
        assert jobs.record_progress(session, job.id, 1, 2, {"loss": 0.7})
        return job.id


def _finish(db: Database, job_id: str) -> None:
    with db.sessions.begin() as session:
        assert jobs.record_progress(session, job_id, 2, 2, {"loss": 0.5})
        jobs.transition(session, job_id, jobs.SUCCEEDED)


async def test_a_watch_shows_every_step_and_ends_on_the_final_state(db: Database) -> None:
    job_id = _running_job(db)
    updates = []
    async for job, metrics in jobs.watch(db, job_id, poll_s=0.01):
        updates.append((job.state, job.step, metrics))
        if len(updates) == 1:
            _finish(db, job_id)
    assert updates[0][:2] == (jobs.RUNNING, 1)
    assert updates[-1][0] == jobs.SUCCEEDED
    assert (jobs.RUNNING, 2, {"loss": 0.5}) in [(s, n, m) for s, n, m in updates]


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_job_that_ends_during_a_poll_is_still_shown_ended(
    db: Database, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The job ends while a poll reads the store: just before it reads the events (so
    they include the end) or just after (so they do not)."""
    job_id = _running_job(db)
    read_events = jobs.events_after
    polls = 0

    def racing(session: Any, jid: str, after: int) -> list[jobs.JobEvent]:
        nonlocal polls
        polls += 1
        first_poll = polls == 2  # the call after the opening update's
        if first_poll and when == "before":
            _finish(db, job_id)
        events = read_events(session, jid, after)
        if first_poll and when == "after":
            _finish(db, job_id)
        return events

    monkeypatch.setattr(jobs, "events_after", racing)
    states = [job.state async for job, _ in jobs.watch(db, job_id, poll_s=0.01)]
    assert states[-1] == jobs.SUCCEEDED, states
