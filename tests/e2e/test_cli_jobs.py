"""`clinalign jobs` and `clinalign models` as real processes against a real trainer on
loopback: registering and listing a model, the gate's answer for a policy version, bad
specs and unknown ids as `error: <CODE>: ...`, a job followed to FAILED by `watch` (its
snapshot is not in the preference service, so its worker fails it at once), and (slow) a
reward-model job trained, watched to SUCCEEDED and put through the promotion gate."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from clinalign.common.auth import Role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.server import TrainerApp
from tests.conftest import serving
from tests.e2e.test_reward_pipeline import _cli, _populate
from tests.integration.test_trainer_jobs import HYPER

Token = Callable[[Role], str]


@asynccontextmanager
async def _trainer(common: CommonSettings, database_url: str) -> AsyncIterator[dict[str, str]]:
    """A trainer (and the preference service its workers read) on loopback; yields the
    environment a `clinalign` process needs to reach it."""
    async with serving(PreferenceApp(common, PreferenceSettings(port=0)), common) as pref:
        wired = common.model_copy(update={"preference_target": f"127.0.0.1:{pref.port}"})
        settings = TrainerSettings(port=0, watch_poll_s=0.1, database_url=database_url)
        app = TrainerApp(wired, settings)
        async with serving(app, wired) as running:
            env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"}
            yield env | {
                "CLINALIGN_DATA_DIR": str(common.data_dir),
                "CLINALIGN_TRAINER_TARGET": f"127.0.0.1:{running.port}",
                "CLINALIGN_PREFERENCE_TARGET": f"127.0.0.1:{pref.port}",
                "COLUMNS": "200",  # rich tables: job ids unfolded
            }
            for _ in range(400):  # let the workers exit before the trainer stops
                if not app.executor.followed:
                    break
                await asyncio.sleep(0.05)


def _on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Runs `clinalign` with a pseudo-terminal for stdout and stderr (the progress bar's
    path); (exit status, everything it wrote)."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "clinalign.cli", *args],
        env=env,
        stdout=follower,
        stderr=follower,
    ) as proc:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = proc.wait(timeout=60)
    os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


async def test_models_register_list_show_promote_and_rollback(
    common: CommonSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with _trainer(common, f"sqlite:///{tmp_path / 'trainer.db'}") as env:
        registered = await _cli(
            env, "models", "register", str(tiny_model_dir), "--kind", "policy", "--json"
        )
        listed = await _cli(env, "models", "list", "--kind", "policy", "--json")
        table = await _cli(env, "models", "list")
        version = json.loads(listed[1])["versions"][0]["ref"]["version"]
        shown = await _cli(env, "models", "show", version)
        promoted = await _cli(env, "models", "promote", version)
        rollback = await _cli(env, "models", "rollback", "--kind", "reward")
        bad_kind = await _cli(env, "models", "list", "--kind", "critic")

    assert registered[0] == 0, registered[2]
    assert json.loads(registered[1])["version"]["ref"]["version"] == version
    assert listed[0] == 0, listed[2]
    [entry] = json.loads(listed[1])["versions"]
    assert (entry["kind"], entry["stage"]) == ("MODEL_KIND_POLICY", "MODEL_STAGE_REGISTERED")
    assert table[0] == 0 and version in table[1] and "REGISTERED" in table[1]
    assert "\x1b[" not in table[1]  # no ANSI when stdout is a pipe
    assert shown[0] == 0, shown[2]
    assert isinstance(json.loads(shown[1]), dict)
    # A policy with no parent while none is served has nothing to be judged against.
    assert promoted[0] == 1
    assert promoted[2].startswith("error: FAILED_PRECONDITION: "), promoted
    assert "nothing to compare it with" in promoted[2]
    assert rollback[0] == 1
    assert rollback[2].startswith("error: FAILED_PRECONDITION: "), rollback[2]
    assert bad_kind[0] == 2 and "critic" in bad_kind[2]


async def test_jobs_submit_watch_list_show_and_cancel(
    common: CommonSettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    submit = ("jobs", "submit", "--kind", "reward_model", "--base-model", str(tiny_model_dir))
    async with _trainer(common, f"sqlite:///{tmp_path / 'trainer.db'}") as env:
        bad_hp = await _cli(env, *submit, "--snapshot", "s1", "--hp", "lr=1e-3")
        not_pair = await _cli(env, *submit, "--snapshot", "s1", "--hp", "epochs")
        empty = await _cli(env, "jobs", "list", "--json")
        missing = await _cli(env, "jobs", "show", "job-nope")
        watched = await _cli(
            env,
            *submit,
            "--snapshot",
            "snap-unknown",
            "--hp",
            "epochs=1",
            "--name",
            "e2e",
            "--watch",
        )
        job_id = watched[1].splitlines()[0]
        again = await _cli(env, "jobs", "watch", job_id, "--json")
        on_tty = await asyncio.to_thread(_on_a_terminal, env, "jobs", "watch", job_id)
        shown = await _cli(env, "jobs", "show", job_id, "--json")
        failed = await _cli(env, "jobs", "list", "--state", "failed", "--json")
        table = await _cli(env, "jobs", "list", "--kind", "reward_model")
        cancel = await _cli(env, "jobs", "cancel", job_id)

    assert bad_hp[0] == 1
    assert bad_hp[2].startswith(
        "error: INVALID_ARGUMENT: spec.hyperparameters[lr]: is not a hyperparameter"
    ), bad_hp[2]
    assert not_pair[0] == 2 and "'epochs' is not key=value" in not_pair[2]
    assert empty[0] == 0 and json.loads(empty[1]).get("jobs", []) == []
    assert missing[0] == 1
    assert missing[2].strip() == "error: NOT_FOUND: id: job 'job-nope' not found", missing[2]

    code, out, err = watched
    assert code == 1, out + err
    assert job_id.startswith("job"), out
    updates = out.splitlines()[1:]
    assert updates and all(line.startswith(f"{job_id} ") for line in updates), out
    assert updates[-1].startswith(f"{job_id} FAILED step 0"), out
    assert "\x1b[" not in out  # one plain line an update when stdout is not a terminal
    assert f"job {job_id} FAILED: preference service: NOT_FOUND: " in err, err

    assert again[0] == 1
    last = json.loads(again[1].splitlines()[-1])["job"]
    assert (last["id"], last["state"]) == (job_id, "JOB_STATE_FAILED")
    assert on_tty[0] == 1 and f"job {job_id} FAILED: preference service" in on_tty[1], on_tty
    assert shown[0] == 0 and json.loads(shown[1])["spec"]["display_name"] == "e2e"
    assert [j["id"] for j in json.loads(failed[1])["jobs"]] == [job_id]
    assert table[0] == 0 and job_id in table[1] and "FAILED" in table[1]
    assert cancel[0] == 1
    assert "FAILED_PRECONDITION" in cancel[2] and "cannot become cancelled" in cancel[2]


@pytest.mark.slow
async def test_a_reward_model_job_watched_to_success_then_gated(
    common: CommonSettings, token: Token, tiny_model_dir: Path, tmp_path: Path
) -> None:
    async with _trainer(common, f"sqlite:///{tmp_path / 'trainer.db'}") as env:
        target = env["CLINALIGN_PREFERENCE_TARGET"]
        async with open_channel(target, common, token(Role.ADMIN)) as ch:
            snapshot_id = await _populate(preference_pb2_grpc.PreferenceServiceStub(ch), 16)
        hyper = [arg for k, v in HYPER.items() for arg in ("--hp", f"{k}={v}")]
        watched = await _cli(
            env,
            *("jobs", "submit", "--kind", "reward_model", "--snapshot", snapshot_id),
            *("--base-model", str(tiny_model_dir), *hyper, "--watch"),
        )
        promoted = await _cli(env, "models", "promote", "reward-v1")
        listed = await _cli(env, "models", "list", "--kind", "reward", "--json")

    code, out, err = watched
    assert code == 0, out + err
    assert "SUCCEEDED: model version reward-v1" in out and "\nreport: " in out, out
    assert any(" RUNNING step " in line and " loss " in line for line in out.splitlines()), out
    # A reward model trained for seconds with nothing served: the gate's checks are
    # printed one a line, and the exit status says whether it passed (0) or not (3).
    assert promoted[0] in (0, 3), promoted
    assert "accuracy_ci_low" in promoted[1], promoted
    [version] = json.loads(listed[1])["versions"]
    stage = "MODEL_STAGE_SERVING" if promoted[0] == 0 else "MODEL_STAGE_REJECTED"
    assert version["stage"] == stage
