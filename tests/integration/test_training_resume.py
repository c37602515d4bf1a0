"""Checkpoints and resuming: an SFT job stopped after its first checkpoint and resumed by a
second job ends with the weights and loss curve of an uninterrupted run; a resume spec is
refused unless it names a failed or cancelled job of its kind on the same snapshot; a
resumed job continues from the newest complete checkpoint along its resume chain."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition, InvalidArgument, NotFound
from clinalign.common.training import last_checkpoint
from clinalign.trainer.jobs import specs, supervised
from clinalign.trainer.jobs import store as jobs

ADVICE = "Rest, drink fluids and see your GP if it gets worse."
# 16 examples in batches of 4 for 2 epochs: 8 steps, checkpoints at steps 3 and 6. The
# interrupted run stops at step 5, so it resumes from checkpoint-3 in mid-epoch.
HYPER = {
    "epochs": 2.0,
    "learning_rate": 1e-3,
    "batch_size": 4,
    "warmup_ratio": 0.0,
    "checkpoint_steps": 3,
    "seed": 11,
}
STOP_AT = 5


class _Stopped(Exception):
    """Stands in for whatever ends a worker mid-run (a cancellation, a crash)."""


def _job_dir(jobs_dir: Path, job_id: str) -> tuple[Path, Path]:
    """(job directory, its snapshot file): SFT records as the preference service exports."""
    records = [
        {"prompt": f"I have had a cough for {i} days.", "completion": ADVICE, "split": "train"}
        for i in range(16)
    ]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    job_dir = jobs_dir / job_id
    return job_dir, specs.write_snapshot(job_dir, data, "")


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_a_resumed_sft_job_matches_an_uninterrupted_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    inputs: dict[str, Any] = {
        "base_model_dir": str(tiny_model_dir),
        "parent_version": "",
        "hyperparameters": HYPER,
        "lora": None,
    }
    steps: dict[str, list[int]] = {"full": [], "stopped": [], "resumed": []}

    def progress_of(name: str) -> Any:
        def progress(step: int, total: int, metrics: Mapping[str, float]) -> None:
            assert total == 8 and "loss" in metrics
            if name == "stopped" and step == STOP_AT:
                raise _Stopped
            steps[name].append(step)

        return progress

    full_out, full = supervised.train_sft_job(
        *_job_dir(tmp_path, "job-full"), inputs, progress_of("full")
    )
    stopped_dir, snapshot = _job_dir(tmp_path, "job-stopped")
    with pytest.raises(_Stopped):
        supervised.train_sft_job(stopped_dir, snapshot, inputs, progress_of("stopped"))
    checkpoint = last_checkpoint(stopped_dir / specs.CHECKPOINT_DIR)
    assert checkpoint is not None and checkpoint.name == "checkpoint-3"
    # Only the latest checkpoint is kept, with what resuming needs besides the weights.
    assert [p.name for p in (stopped_dir / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (checkpoint / name).is_file(), name

    resumed_inputs = {**inputs, "resume_job_id": "job-stopped", "resume_chain": ["job-stopped"]}
    resumed_out, resumed = supervised.train_sft_job(
        *_job_dir(tmp_path, "job-resumed"), resumed_inputs, progress_of("resumed")
    )

    assert steps == {"full": list(range(1, 9)), "stopped": [1, 2, 3, 4], "resumed": [4, 5, 6, 7, 8]}
    # The uninterrupted run moved the weights, and the resumed one landed where it did.
    base, want, got = _weights(tiny_model_dir), _weights(full_out), _weights(resumed_out)
    assert any(not torch.equal(base[k], want[k]) for k in want)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    # The resumed manifest's curve holds the checkpoint's steps 1-3 and its own 4-8.
    assert [s for s, _ in resumed["loss_curve"]] == list(range(1, 9))
    assert [loss for _, loss in resumed["loss_curve"]] == pytest.approx(
        [loss for _, loss in full["loss_curve"]], abs=1e-5
    )
    assert resumed["metrics"]["train_loss_first"] == full["metrics"]["train_loss_first"]
    # A trained job's checkpoints are removed; the stopped job keeps its own.
    assert not (tmp_path / "job-resumed" / "checkpoints").exists()
    assert not (tmp_path / "job-full" / "checkpoints").exists()
    assert checkpoint.is_dir()


def test_resume_continues_from_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    def checkpoint(job_id: str, step: int, complete: bool = True) -> Path:
        path = tmp_path / job_id / "checkpoints" / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if complete:
            (path / "trainer_state.json").write_text("{}")
        return path

    first = checkpoint("job-a", 50)
    checkpoint("job-a", 100, complete=False)  # stopped while the Trainer wrote it
    (tmp_path / "job-b" / "checkpoints").mkdir(parents=True)  # resumed a, failed before 150
    new_dir = tmp_path / "job-c"
    assert last_checkpoint(tmp_path / "job-a" / "checkpoints") == first
    assert last_checkpoint(tmp_path / "nowhere") is None
    assert specs.resume_checkpoint(new_dir, {"resume_chain": ["job-b", "job-a"]}) == first
    assert specs.resume_checkpoint(new_dir, {"resume_job_id": "job-a"}) == first
    assert specs.resume_checkpoint(new_dir, {}) is None
    with pytest.raises(FailedPrecondition, match="job job-b left no checkpoint; submit a new"):
        specs.resume_checkpoint(new_dir, {"resume_job_id": "job-b"})
    later = checkpoint("job-b", 150)
    assert specs.resume_checkpoint(new_dir, {"resume_chain": ["job-b", "job-a"]}) == later


@pytest.fixture
def db(trainer_db: Database) -> Database:
    return trainer_db


def _job(db: Database, kind: str, *states: str, **spec: Any) -> str:
    """A job of ``kind`` on snapshot s1, moved through ``states``."""
    with db.sessions.begin() as session:
        spec = {"kind": f"JOB_KIND_{kind.upper()}", "snapshot_id": "s1", **spec}
        inputs = {"base_model_dir": "/models/base", "hyperparameters": {"seed": 3}, "lora": None}
        job, _ = jobs.submit(session, kind, "local", spec, inputs, "")
        for state in states:
            jobs.transition(session, job.id, state)
        return job.id


def test_resume_specs_are_checked(db: Database) -> None:
    failed = _job(db, "sft", jobs.RUNNING, jobs.FAILED, hyperparameters={"epochs": "2"})
    cancelled = _job(db, "dpo", jobs.CANCELLED)
    running = _job(db, "sft", jobs.RUNNING)
    queued = _job(db, "reward_model")
    succeeded = _job(db, "sft", jobs.RUNNING, jobs.SUCCEEDED)
    cases: list[tuple[Any, dict[str, Any], type[Exception], str]] = [
        (
            supervised.check_sft_spec,
            {"resume_job_id": "job-nope"},
            NotFound,
            "spec.resume_job_id: job 'job-nope' not found",
        ),
        (
            supervised.check_sft_spec,
            {"resume_job_id": cancelled, "snapshot_id": "s1"},
            InvalidArgument,
            f"spec.resume_job_id: job {cancelled} is a dpo job; a sft job resumes a sft job",
        ),
        (
            supervised.check_sft_spec,
            {"resume_job_id": running, "snapshot_id": "s1"},
            InvalidArgument,
            f"spec.resume_job_id: job {running} is running; only a failed or cancelled job",
        ),
        (
            supervised.check_reward_model_spec,
            {"resume_job_id": queued, "snapshot_id": "s1"},
            InvalidArgument,
            f"spec.resume_job_id: job {queued} is queued; only a failed or cancelled",
        ),
        (
            supervised.check_sft_spec,
            {"resume_job_id": succeeded, "snapshot_id": "s1"},
            InvalidArgument,
            f"spec.resume_job_id: job {succeeded} is succeeded; only a failed or cancelled",
        ),
        (
            supervised.check_sft_spec,
            {"resume_job_id": failed},
            InvalidArgument,
            f"spec.snapshot_id: must be 's1', the snapshot of the resumed job {failed}",
        ),
        (
            supervised.check_sft_spec,
            {"resume_job_id": failed, "snapshot_id": "s2"},
            InvalidArgument,
            "spec.snapshot_id: must be 's1'",
        ),
        (
            supervised.check_sft_spec,
            {"resume_job_id": failed, "snapshot_id": "s1", "hyperparameters": {"epochs": "3"}},
            InvalidArgument,
            rf"spec.hyperparameters: differs from the resumed job {failed}'s; leave it empty",
        ),
        (
            supervised.check_sft_spec,
            {"resume_job_id": failed, "snapshot_id": "s1", "base_model": "/models/other"},
            InvalidArgument,
            "spec.base_model: differs from the resumed job",
        ),
    ]
    with db.sessions.begin() as session:
        for check, spec, error, message in cases:
            with pytest.raises(error, match=message):
                check(session, spec)
        # The same settings may be repeated; the inputs are the resumed job's.
        repeated = {"snapshot_id": "s1", "hyperparameters": {"epochs": "2"}}
        inputs = supervised.check_sft_spec(session, {"resume_job_id": failed, **repeated})
        dpo_inputs = supervised.check_dpo_spec(
            session, {"resume_job_id": cancelled, "snapshot_id": "s1"}
        )
    assert inputs == {
        "base_model_dir": "/models/base",
        "hyperparameters": {"seed": 3},
        "lora": None,
        "resume_job_id": failed,
        "resume_chain": [failed],
    }
    assert dpo_inputs["resume_chain"] == [cancelled]


def test_a_resumed_job_that_failed_extends_the_chain(db: Database) -> None:
    first = _job(db, "reward_model", jobs.RUNNING, jobs.FAILED)
    with db.sessions.begin() as session:
        spec = {"kind": "JOB_KIND_REWARD_MODEL", "snapshot_id": "s1", "resume_job_id": first}
        inputs = supervised.check_reward_model_spec(session, spec)
        second, _ = jobs.submit(session, "reward_model", "local", spec, inputs, "")
        jobs.transition(session, second.id, jobs.CANCELLED)
        again = supervised.check_reward_model_spec(session, {**spec, "resume_job_id": second.id})
    assert again["resume_job_id"] == second.id
    assert again["resume_chain"] == [second.id, first]
