"""The local executor: one ``python -m clinalign.trainer.worker <job-id>`` subprocess per
job, at most ``max_running_jobs`` at once, the rest waiting QUEUED.

A worker runs in its own session (process group), so it outlives a trainer restart; on
start the executor re-attaches to RUNNING jobs whose process is still alive and fails
those whose process is gone. The job's state lives in the database, which both processes
write: the executor moves a job to RUNNING and records its pid, the worker logs progress
and the result, and whoever sees a process end without a result records the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition
from clinalign.trainer import jobs
from clinalign.trainer.config import TrainerSettings

log = logging.getLogger("clinalign.trainer.executor")
LOCAL = "local"
WORKER_MODULE = "clinalign.trainer.worker"
LOG_FILE = "worker.log"


def is_worker(pid: int, job_id: str) -> bool:
    """Whether ``pid`` is a live worker of ``job_id``: it exists, is not a zombie and (where
    /proc shows it) its command line names the job, so a reused pid does not count."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not a worker this trainer started
    proc = Path(f"/proc/{pid}")
    try:
        if job_id.encode() not in (proc / "cmdline").read_bytes():
            return False
        state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return not proc.parent.is_dir()  # no /proc on this system: trust kill(0)
    except (ProcessLookupError, IndexError):
        return False


class LocalExecutor:
    def __init__(
        self, db: Database, common: CommonSettings, settings: TrainerSettings, database_url: str
    ) -> None:
        self.db = db
        self.common = common
        self.settings = settings
        self.database_url = database_url
        self.jobs_root = (common.data_dir / "jobs").resolve()
        self._children: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def followed(self) -> frozenset[str]:
        """Ids of the jobs whose worker this executor started and has not seen exit."""
        return frozenset(self._children)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-attaches to or fails RUNNING jobs left by an earlier trainer, then starts
        QUEUED ones."""
        running = await self.db.run_sync(lambda s: jobs.in_state(s, jobs.RUNNING, LOCAL))
        for job in running:
            if job.pid is not None and is_worker(job.pid, job.id):
                log.info("re-attached", extra={"fields": {"job_id": job.id, "pid": job.pid}})
                self._spawn_task(self._follow_pid(job.id, job.pid))
            else:
                await self._fail_if_running(job.id, jobs.RESTARTED_REASON)
        await self.kick()

    async def stop(self) -> None:
        """Stops following workers; they keep running and a new trainer re-attaches."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- scheduling ------------------------------------------------------------------------

    async def kick(self) -> None:
        """Starts QUEUED jobs, oldest first, while slots are free."""
        async with self._lock:
            while True:
                running = await self.db.run_sync(lambda s: jobs.count_running(s, LOCAL))
                if running >= self.settings.max_running_jobs:
                    return
                queued = await self.db.run_sync(lambda s: jobs.in_state(s, jobs.QUEUED, LOCAL))
                if not queued:
                    return
                await self._launch(queued[0].id)

    async def _launch(self, job_id: str) -> None:
        # RUNNING before the process exists, so the worker finds its job RUNNING.
        await self.db.run_write(lambda s: jobs.transition(s, job_id, jobs.RUNNING))
        job_dir = self.jobs_root / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        try:
            with (job_dir / LOG_FILE).open("ab") as out:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    WORKER_MODULE,
                    job_id,
                    env=self._environment(),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            await self._fail_if_running(job_id, f"cannot start the worker: {exc}")
            return
        self._children[job_id] = proc
        state = await self.db.run_write(lambda s: _record_pid(s, job_id, proc.pid))
        log.info("started", extra={"fields": {"job_id": job_id, "pid": proc.pid}})
        self._spawn_task(self._follow_child(job_id, proc))
        if state != jobs.RUNNING:  # cancelled before its pid was known
            await self._terminate(job_id, proc.pid)

    def _environment(self) -> dict[str, str]:
        common = self.common
        env = dict(os.environ)
        env.update(
            {
                "CLINALIGN_DATA_DIR": str(common.data_dir.resolve()),
                "CLINALIGN_TOKENS_FILE": str(common.resolved_tokens_file.resolve()),
                "CLINALIGN_TRAINER_DATABASE_URL": self.database_url,
                "CLINALIGN_LOG_LEVEL": common.log_level,
                "CLINALIGN_MAX_MESSAGE_MB": str(common.max_message_mb),
            }
        )
        for service in ("generation", "reward", "preference", "trainer", "monitor"):
            env[f"CLINALIGN_{service.upper()}_TARGET"] = common.target(service)
        for name in ("service_token", "tls_ca_file", "tls_cert_file", "tls_key_file"):
            value = getattr(common, name)
            if value is not None:
                env[f"CLINALIGN_{name.upper()}"] = str(value)
        return env

    # -- following processes ---------------------------------------------------------------

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_child(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._children.pop(job_id, None)
        await self._fail_if_running(
            job_id, f"the worker exited with status {code} without a result"
        )
        await self.kick()

    async def _follow_pid(self, job_id: str, pid: int) -> None:
        await _wait_gone(pid, job_id, self.settings.watch_poll_s, None)
        await self._fail_if_running(job_id, "the job's process exited without a result")
        await self.kick()

    async def _fail_if_running(self, job_id: str, reason: str) -> None:
        def fail(session: Session) -> None:
            if jobs.get(session, job_id).state in (jobs.RUNNING, jobs.QUEUED):
                jobs.transition(session, job_id, jobs.FAILED, failure_reason=reason)

        await self.db.run_write(fail)

    # -- cancellation ----------------------------------------------------------------------

    async def cancel(self, job_id: str) -> jobs.Job:
        """Marks the job CANCELLED (FAILED_PRECONDITION once it has ended), then stops its
        process: SIGTERM to its process group, SIGKILL after ``cancel_grace_s``."""
        job = await self.db.run_write(lambda s: jobs.transition(s, job_id, jobs.CANCELLED))
        if job.pid is not None:
            await self._terminate(job_id, job.pid)
        await self.kick()
        return job

    async def _terminate(self, job_id: str, pid: int) -> None:
        child = self._children.get(job_id)
        if child is None and not is_worker(pid, job_id):
            return
        _signal_group(pid, signal.SIGTERM)
        grace = self.settings.cancel_grace_s
        if child is not None:
            try:
                await asyncio.wait_for(asyncio.shield(child.wait()), grace)
                return
            except TimeoutError:
                _signal_group(pid, signal.SIGKILL)
                await child.wait()
                return
        if not await _wait_gone(pid, job_id, 0.05, grace):
            _signal_group(pid, signal.SIGKILL)
            await _wait_gone(pid, job_id, 0.05, None)


async def _wait_gone(pid: int, job_id: str, poll_s: float, limit_s: float | None) -> bool:
    """Waits until a worker that is not this process's child has gone; False on timeout.
    Polling: a process one did not start offers nothing to wait on."""
    loop = asyncio.get_running_loop()
    deadline = None if limit_s is None else loop.time() + limit_s
    while True:
        if not is_worker(pid, job_id):
            return True
        if deadline is not None and loop.time() >= deadline:
            return False
        await asyncio.sleep(poll_s)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signals the worker's process group (it leads one), so helpers it forked go too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _record_pid(session: Session, job_id: str, pid: int) -> str:
    row = session.get(jobs.JobRow, job_id)
    if row is None:
        raise FailedPrecondition(f"job {job_id} vanished while starting")
    row.pid = pid
    return row.state
