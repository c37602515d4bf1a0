"""The local executor: one ``python -m clinalign.trainer.jobs.worker <job-id>`` subprocess per
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
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.orm import Session

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import store as jobs

log = logging.getLogger("clinalign.trainer.jobs.executor")
LOCAL = "local"
WORKER_MODULE = "clinalign.trainer.jobs.worker"
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


class ExecutorBase:
    """What every executor shares: starting ``QUEUED`` jobs of its own (``name``) oldest
    first while fewer than ``limit`` run, following them with tasks it owns, and failing
    a job whose run ended without a result."""

    name = ""

    def __init__(self, db: Database, settings: TrainerSettings) -> None:
        self.db = db
        self.settings = settings
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def limit(self) -> int:
        raise NotImplementedError

    async def _launch(self, job: jobs.Job) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Stops following; the runs go on and a new trainer re-attaches."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def kick(self) -> None:
        """Starts QUEUED jobs, oldest first, while fewer than ``limit`` run."""
        async with self._lock:
            while True:
                running = await self.db.run_sync(lambda s: jobs.count_running(s, self.name))
                if running >= self.limit:
                    return
                queued = await self.db.run_sync(lambda s: jobs.in_state(s, jobs.QUEUED, self.name))
                if not queued:
                    return
                await self._launch(queued[0])

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fail_if_running(self, job_id: str, reason: str) -> None:
        def fail(session: Session) -> None:
            if jobs.get(session, job_id).state in (jobs.RUNNING, jobs.QUEUED):
                jobs.transition(session, job_id, jobs.FAILED, failure_reason=reason)

        await self.db.run_write(fail)


class LocalExecutor(ExecutorBase):
    name = LOCAL

    def __init__(
        self, db: Database, common: CommonSettings, settings: TrainerSettings, database_url: str
    ) -> None:
        super().__init__(db, settings)
        self.common = common
        self.database_url = database_url
        self.jobs_root = (common.data_dir / "jobs").resolve()
        self._children: dict[str, asyncio.subprocess.Process] = {}

    @property
    def limit(self) -> int:
        return self.settings.max_running_jobs

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

    # -- scheduling ------------------------------------------------------------------------

    async def _launch(self, job: jobs.Job) -> None:
        job_id = job.id
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
        if self.settings.worker_threads:
            env["OMP_NUM_THREADS"] = str(self.settings.worker_threads)
        for service in ("generation", "reward", "preference", "trainer", "monitor"):
            env[f"CLINALIGN_{service.upper()}_TARGET"] = common.target(service)
        for name in ("service_token", "tls_ca_file", "tls_cert_file", "tls_key_file"):
            value = getattr(common, name)
            if value is not None:
                env[f"CLINALIGN_{name.upper()}"] = str(value)
        return env

    # -- following processes ---------------------------------------------------------------

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


class JobExecutor(Protocol):
    @property
    def followed(self) -> frozenset[str]: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def kick(self) -> None: ...
    async def cancel(self, job_id: str) -> jobs.Job: ...


class Executors:
    """The executors a trainer runs, by the name a job row carries (``local``,
    ``kubernetes``); each call goes to the executor of the job it concerns."""

    def __init__(self, db: Database, by_name: Mapping[str, JobExecutor]) -> None:
        self.db = db
        self.by_name = dict(by_name)

    def runs(self, name: str) -> bool:
        return name in self.by_name

    @property
    def followed(self) -> frozenset[str]:
        return frozenset().union(*(e.followed for e in self.by_name.values()))

    async def start(self) -> None:
        for executor in self.by_name.values():
            await executor.start()

    async def stop(self) -> None:
        for executor in self.by_name.values():
            await executor.stop()

    async def kick(self) -> None:
        for executor in self.by_name.values():
            await executor.kick()

    async def cancel(self, job_id: str) -> jobs.Job:
        job = await self.db.run_sync(lambda s: jobs.get(s, job_id))
        executor = self.by_name.get(job.executor)
        if executor is None:  # an executor this trainer no longer runs: nothing to stop here
            return await self.db.run_write(lambda s: jobs.transition(s, job_id, jobs.CANCELLED))
        return await executor.cancel(job_id)


def _record_pid(session: Session, job_id: str, pid: int) -> str:
    row = session.get(jobs.JobRow, job_id)
    if row is None:
        raise FailedPrecondition(f"job {job_id} vanished while starting")
    row.pid = pid
    return row.state
