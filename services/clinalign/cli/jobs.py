"""``clinalign jobs``: training jobs on the TrainerService from the command line — submit,
follow, list and cancel them. Mounted on the main ``clinalign`` app (``models`` holds the
registry's commands).

Exit status: 0 on success; 1 on a gRPC error (``error: <CODE>: <details>`` on stderr) or a
FAILED job; 3 when the promotion gate refuses a version (as ``clinalign eval``); 130 when a
watched job ends CANCELLED or the watch itself is interrupted with Ctrl-C (the shell's
code for an interrupted command, so a script can tell a cancelled job from a failed one).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from clinalign.cli.options import AsJson, DataDir, echo_json, fail, rpc, table, when
from clinalign.common.protos import enum_name

if TYPE_CHECKING:
    from clinalign.trainer.v1 import trainer_pb2 as tpb
    from clinalign.trainer.v1.trainer_pb2_grpc import TrainerServiceAsyncStub

jobs_app = typer.Typer(no_args_is_help=True, help="Training jobs on the trainer service.")

CANCELLED_EXIT = 130  # a watched job ended CANCELLED, or Ctrl-C stopped the watch
# Metrics shown beside the progress bar, in this order, when a job logs them: the training
# loss (sft, reward_model, dpo), and the mean score and KL to the reference for PPO.
HEADLINE_METRICS = ("loss", "eval_loss", "score", "kl")
T = TypeVar("T")


class JobKind(StrEnum):
    sft = "sft"
    reward_model = "reward_model"
    ppo = "ppo"
    dpo = "dpo"
    cost_model = "cost_model"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Executor(StrEnum):
    local = "local"
    kubernetes = "kubernetes"


def _rpc(data_dir: Path | None, call: Callable[[TrainerServiceAsyncStub], Awaitable[T]]) -> T:
    """Runs ``call`` against the trainer as the local ml-engineer (``options.rpc``)."""
    return rpc(data_dir, lambda clients: call(clients.trainer))


def _state(job: tpb.Job) -> str:
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    return enum_name(tpb.JobState, job.state, lower=False)


def _kind(job: tpb.Job) -> str:
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    return enum_name(tpb.JobKind, job.spec.kind)


def _headline(metrics: Mapping[str, float]) -> str:
    shown = [f"{k} {metrics[k]:.4g}" for k in HEADLINE_METRICS if k in metrics]
    return " · ".join(shown)


# ------------------------------------------------------------------ jobs


def _hyperparameters(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--hp")
        out[key] = value
    return out


@jobs_app.command("submit")
def jobs_submit(
    kind: Annotated[JobKind, typer.Option(help="What the job trains.")],
    snapshot: Annotated[str, typer.Option(help="Preference snapshot id or content hash.")] = "",
    prompt_set: Annotated[str, typer.Option(help="Named prompt set (ppo, sft).")] = "",
    base_model: Annotated[
        str, typer.Option(help="Registry version or model directory; default the served policy.")
    ] = "",
    reward_model: Annotated[
        str, typer.Option(help="Reward-model version PPO scores against; default the served.")
    ] = "",
    hp: Annotated[
        list[str] | None, typer.Option(help="Hyperparameter as key=value (repeatable).")
    ] = None,
    lora_rank: Annotated[
        int | None, typer.Option(help="Train a LoRA adapter of this rank (alpha 2 x rank).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    resume: Annotated[str, typer.Option(help="Resume this job from its checkpoint.")] = "",
    executor: Annotated[
        Executor | None, typer.Option(help="Where it runs; default the trainer's setting.")
    ] = None,
    key: Annotated[str, typer.Option(help="Idempotency key: a retry returns the same job.")] = "",
    name: Annotated[str, typer.Option(help="Display name shown in listings.")] = "",
    watch: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Submit a training job and print its id (with --watch, follow it as `jobs watch`)."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    spec = tpb.JobSpec(
        kind=tpb.JobKind.Value("JOB_KIND_" + kind.value.upper()),
        snapshot_id=snapshot,
        prompt_set=prompt_set,
        base_model=base_model,
        reward_model_version=reward_model,
        hyperparameters=_hyperparameters(hp or []),
        seed=seed,
        resume_job_id=resume,
        idempotency_key=key,
        display_name=name,
    )
    if lora_rank is not None:
        spec.lora.CopyFrom(tpb.LoraSettings(enabled=True, rank=lora_rank))
    if executor is not None:
        spec.executor = tpb.ExecutorKind.Value("EXECUTOR_KIND_" + executor.value.upper())
    response = _rpc(
        data_dir, lambda stub: stub.SubmitJob(tpb.SubmitJobRequest(spec=spec), timeout=60)
    )
    if as_json:
        echo_json(response)
    else:
        typer.echo(response.job.id)
        if response.replayed:
            typer.echo(f"(the job already submitted with key {key!r})", err=True)
    if watch:
        _watch(response.job.id, as_json, data_dir)


@jobs_app.command("watch")
def jobs_watch(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="One WatchJobResponse as JSON per line.")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Follow a job until it ends: exit 0 SUCCEEDED, 1 FAILED, 130 CANCELLED."""
    _watch(job_id, as_json, data_dir)


def _watch(job_id: str, as_json: bool, data_dir: Path | None) -> None:
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    show: Callable[[tpb.WatchJobResponse], None]
    if as_json:
        show = echo_json
    elif sys.stdout.isatty():
        _watch_with_bar(job_id, data_dir)
        return
    else:
        show = _echo_line

    async def follow(stub: TrainerServiceAsyncStub) -> tpb.Job | None:
        last = None
        async for update in stub.WatchJob(tpb.WatchJobRequest(id=job_id)):
            show(update)
            last = update.job
        return last

    _finish(job_id, _interruptible(job_id, lambda: _rpc(data_dir, follow)), as_json)


def _echo_line(update: tpb.WatchJobResponse) -> None:
    job = update.job
    total = f"/{job.total_steps}" if job.total_steps else ""
    metrics = _headline(update.step_metrics or job.metrics)
    typer.echo(f"{job.id} {_state(job)} step {job.step}{total} {metrics}".rstrip())


def _watch_with_bar(job_id: str, data_dir: Path | None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from clinalign.trainer.v1 import trainer_pb2 as tpb

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(job_id, total=None)

        async def follow(stub: TrainerServiceAsyncStub) -> tpb.Job | None:
            last = None
            metrics: dict[str, float] = {}
            async for update in stub.WatchJob(tpb.WatchJobRequest(id=job_id)):
                last = update.job
                metrics = dict(update.step_metrics) or metrics or dict(last.metrics)
                description = f"{job_id} {_state(last)} {_headline(metrics)}".rstrip()
                progress.update(
                    task,
                    description=description,
                    completed=last.step,
                    total=last.total_steps or None,
                )
            return last

        last = _interruptible(job_id, lambda: _rpc(data_dir, follow))
    _finish(job_id, last)


def _interruptible(job_id: str, watch: Callable[[], T]) -> T:
    try:
        return watch()
    except KeyboardInterrupt:
        typer.echo(
            f"stopped watching; job {job_id} goes on (`clinalign jobs cancel {job_id}` stops it)",
            err=True,
        )
        raise typer.Exit(CANCELLED_EXIT) from None


def _finish(job_id: str, job: tpb.Job | None, as_json: bool = False) -> None:
    """The exit status of a watch from the job's last state; the summary goes to stderr
    under --json, so that stdout stays JSON lines."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    if job is None or job.state not in (
        tpb.JOB_STATE_SUCCEEDED,
        tpb.JOB_STATE_FAILED,
        tpb.JOB_STATE_CANCELLED,
    ):
        fail(f"the watch of job {job_id} ended before the job did")
    if job.state == tpb.JOB_STATE_SUCCEEDED:
        typer.echo(f"job {job.id} SUCCEEDED: model version {job.model_version}", err=as_json)
        typer.echo(f"report: {job.report_uri}", err=as_json)
        return
    if job.state == tpb.JOB_STATE_FAILED:
        typer.echo(f"job {job.id} FAILED: {job.failure_reason}", err=True)
        raise typer.Exit(1)
    typer.echo(f"job {job.id} CANCELLED", err=True)
    raise typer.Exit(CANCELLED_EXIT)


@jobs_app.command("list")
def jobs_list(
    state: Annotated[
        list[JobState] | None, typer.Option(help="Only jobs in this state (repeatable).")
    ] = None,
    kind: Annotated[
        list[JobKind] | None, typer.Option(help="Only jobs of this kind (repeatable).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Newest jobs to show.")] = 20,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """List jobs, newest first."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.ListJobsRequest(
        states=[tpb.JobState.Value("JOB_STATE_" + s.value.upper()) for s in state or []],
        kinds=[tpb.JobKind.Value("JOB_KIND_" + k.value.upper()) for k in kind or []],
        page_size=limit,
    )
    response = _rpc(data_dir, lambda stub: stub.ListJobs(request, timeout=60))
    if as_json:
        echo_json(response)
        return
    rows = [
        [
            j.id,
            _kind(j),
            _state(j),
            f"{j.step}/{j.total_steps}" if j.total_steps else str(j.step),
            _headline(j.metrics),
            j.model_version or "-",
            j.spec.display_name or "-",
            when(j.create_time),
        ]
        for j in response.jobs
    ]
    columns = ["id", "kind", "state", "step", "metrics", "model version", "name", "submitted"]
    table("jobs", columns, rows)


@jobs_app.command("show")
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Show one job: its spec, state, step, metrics and outcome."""
    from google.protobuf.json_format import MessageToDict

    from clinalign.trainer.v1 import trainer_pb2 as tpb

    job = _rpc(data_dir, lambda stub: stub.GetJob(tpb.GetJobRequest(id=job_id), timeout=60)).job
    if as_json:
        echo_json(job)
        return
    spec = MessageToDict(job.spec, preserving_proto_field_name=True)
    lines = {
        "id": job.id,
        "kind": _kind(job),
        "state": _state(job),
        "step": f"{job.step}/{job.total_steps}" if job.total_steps else str(job.step),
        "submitted": when(job.create_time),
        "started": when(job.start_time),
        "ended": when(job.end_time),
        "model version": job.model_version,
        "report": job.report_uri,
        "failure": job.failure_reason,
        "spec": json.dumps(spec, sort_keys=True),
        "metrics": json.dumps(dict(job.metrics), sort_keys=True),
    }
    for label, value in lines.items():
        if value:
            typer.echo(f"{label + ':':<15}{value}")


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    data_dir: DataDir = None,
) -> None:
    """Cancel a queued or running job (SIGTERM, then SIGKILL after the grace period)."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.CancelJobRequest(id=job_id)
    job = _rpc(data_dir, lambda stub: stub.CancelJob(request, timeout=60)).job
    typer.echo(f"job {job.id} {_state(job)}")
