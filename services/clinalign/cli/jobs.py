"""``clinalign jobs`` and ``clinalign models``: the TrainerService from the command line —
submit, follow, list and cancel training jobs; list, register, promote and roll back
model versions. Mounted on the main ``clinalign`` app.

Exit status: 0 on success; 1 on a gRPC error (``error: <CODE>: <details>`` on stderr) or a
FAILED job; 3 when the promotion gate refuses a version (as ``clinalign eval``); 130 when a
watched job ends CANCELLED or the watch itself is interrupted with Ctrl-C (the shell's
code for an interrupted command, so a script can tell a cancelled job from a failed one).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from clinalign.cli.train import REFUSED_EXIT, DataDir
from clinalign.common.config import CommonSettings

if TYPE_CHECKING:
    import grpc.aio
    from google.protobuf.message import Message

    from clinalign.common.v1 import common_pb2
    from clinalign.trainer.v1 import trainer_pb2 as tpb
    from clinalign.trainer.v1.trainer_pb2_grpc import TrainerServiceStub

jobs_app = typer.Typer(no_args_is_help=True, help="Training jobs on the trainer service.")
models_app = typer.Typer(
    no_args_is_help=True, help="The trainer's model registry and promotion gate."
)

CANCELLED_EXIT = 130  # a watched job ended CANCELLED, or Ctrl-C stopped the watch
# Metrics shown beside the progress bar, in this order, when a job logs them: the training
# loss (sft, reward_model, dpo), and the mean score and KL to the reference for PPO.
HEADLINE_METRICS = ("loss", "eval_loss", "score", "kl")
T = TypeVar("T")
S = TypeVar("S")  # a service stub


class JobKind(StrEnum):
    sft = "sft"
    reward_model = "reward_model"
    ppo = "ppo"
    dpo = "dpo"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Executor(StrEnum):
    local = "local"
    kubernetes = "kubernetes"


class ModelKind(StrEnum):
    policy = "policy"
    reward = "reward"


AsJson = Annotated[
    bool, typer.Option("--json", help="Print the response as protobuf JSON on one line.")
]


def _common(data_dir: Path | None) -> CommonSettings:
    return CommonSettings() if data_dir is None else CommonSettings(data_dir=data_dir)


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def service_rpc(
    data_dir: Path | None,
    service: str,
    stub: Callable[[grpc.aio.Channel], S],
    call: Callable[[S], Awaitable[T]],
) -> T:
    """Runs ``call`` with a stub of ``service`` authenticated as the local ml-engineer; a
    gRPC error becomes ``error: <CODE>: <details>`` and exit status 1."""
    import grpc.aio

    from clinalign.common.auth import Role, token_for_role
    from clinalign.common.channels import open_channel

    common = _common(data_dir)
    try:
        token = token_for_role(common.resolved_tokens_file, Role.ML_ENGINEER)
    except (FileNotFoundError, LookupError) as err:
        _fail(str(err))

    async def run() -> T:
        async with open_channel(common.target(service), common, token) as channel:
            return await call(stub(channel))

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as err:
        _fail(f"{err.code().name}: {err.details()}")


def _rpc(data_dir: Path | None, call: Callable[[TrainerServiceStub], Awaitable[T]]) -> T:
    """Runs ``call`` against the trainer (see ``service_rpc``)."""
    from clinalign.trainer.v1.trainer_pb2_grpc import TrainerServiceStub

    return service_rpc(data_dir, "trainer", TrainerServiceStub, call)


def _echo_json(message: Message) -> None:
    from google.protobuf.json_format import MessageToDict

    typer.echo(json.dumps(MessageToDict(message, preserving_proto_field_name=True)))


def _state(job: tpb.Job) -> str:
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    return tpb.JobState.Name(job.state).removeprefix("JOB_STATE_")


def _kind(job: tpb.Job) -> str:
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    return tpb.JobKind.Name(job.spec.kind).removeprefix("JOB_KIND_").lower()


def _headline(metrics: Mapping[str, float]) -> str:
    shown = [f"{k} {metrics[k]:.4g}" for k in HEADLINE_METRICS if k in metrics]
    return " · ".join(shown)


def _when(ts: Any) -> str:
    if not ts.seconds:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


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
        _echo_json(response)
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
        show = _echo_json
    elif sys.stdout.isatty():
        _watch_with_bar(job_id, data_dir)
        return
    else:
        show = _echo_line

    async def follow(stub: TrainerServiceStub) -> tpb.Job | None:
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

        async def follow(stub: TrainerServiceStub) -> tpb.Job | None:
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
        _fail(f"the watch of job {job_id} ended before the job did")
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
        _echo_json(response)
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
            _when(j.create_time),
        ]
        for j in response.jobs
    ]
    columns = ["id", "kind", "state", "step", "metrics", "model version", "name", "submitted"]
    _table("jobs", columns, rows)


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
        _echo_json(job)
        return
    spec = MessageToDict(job.spec, preserving_proto_field_name=True)
    lines = {
        "id": job.id,
        "kind": _kind(job),
        "state": _state(job),
        "step": f"{job.step}/{job.total_steps}" if job.total_steps else str(job.step),
        "submitted": _when(job.create_time),
        "started": _when(job.start_time),
        "ended": _when(job.end_time),
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


# ------------------------------------------------------------------ models


def _model_kind(kind: ModelKind) -> common_pb2.ModelKind.ValueType:
    from clinalign.common.v1 import common_pb2

    return common_pb2.ModelKind.Value("MODEL_KIND_" + kind.value.upper())


def _describe(mv: common_pb2.ModelVersion) -> str:
    from clinalign.common.v1 import common_pb2

    stage = common_pb2.ModelStage.Name(mv.stage).removeprefix("MODEL_STAGE_")
    kind = common_pb2.ModelKind.Name(mv.kind).removeprefix("MODEL_KIND_").lower()
    return f"{mv.ref.version} ({kind}, {stage})"


@models_app.command("list")
def models_list(
    kind: Annotated[ModelKind | None, typer.Option(help="Only this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Newest versions to show.")] = 20,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """List registered model versions, newest first."""
    from clinalign.common.v1 import common_pb2
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.ListModelVersionsRequest(
        kind=_model_kind(kind) if kind else common_pb2.MODEL_KIND_UNSPECIFIED, page_size=limit
    )
    response = _rpc(data_dir, lambda stub: stub.ListModelVersions(request, timeout=60))
    if as_json:
        _echo_json(response)
        return
    rows = [
        [
            v.ref.version,
            common_pb2.ModelKind.Name(v.kind).removeprefix("MODEL_KIND_").lower(),
            common_pb2.ModelStage.Name(v.stage).removeprefix("MODEL_STAGE_"),
            v.parent_version or v.base_model or "-",
            v.snapshot_hash[:12] or "-",
            v.job_id or "-",
            _when(v.create_time),
        ]
        for v in response.versions
    ]
    columns = ["version", "kind", "stage", "parent", "snapshot", "job", "registered"]
    _table("model versions", columns, rows)


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="Version, such as reward-v2.")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Print a version's manifest (lineage, config, metrics) as JSON."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.GetModelVersionRequest(version=version)
    response = _rpc(data_dir, lambda stub: stub.GetModelVersion(request, timeout=60))
    if as_json:
        _echo_json(response)
        return
    typer.echo(json.dumps(json.loads(response.manifest_json or "{}"), indent=2, sort_keys=True))


@models_app.command("register")
def models_register(
    path: Annotated[Path, typer.Argument(help="Model directory, as the trainer sees it.")],
    kind: Annotated[ModelKind, typer.Option(help="Policy or reward model.")],
    serve_if_none: Annotated[
        bool, typer.Option(help="Serve it at once if nothing of its kind is served.")
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Register an existing model directory, such as the foundation model, as a version."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.RegisterModelRequest(
        path=str(path.absolute()), kind=_model_kind(kind), serve_if_none=serve_if_none
    )
    response = _rpc(data_dir, lambda stub: stub.RegisterModel(request, timeout=600))
    if as_json:
        _echo_json(response)
        return
    typer.echo(f"registered {_describe(response.version)}")


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Serve a version if it passes the promotion gate; print each check (3 if refused)."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.PromoteModelRequest(version=version)
    response = _rpc(data_dir, lambda stub: stub.PromoteModel(request))
    if as_json:
        _echo_json(response)
    else:
        for c in response.checks:
            verdict = "pass" if c.passed else "FAIL"
            typer.echo(
                f"{verdict}  {c.name}: {c.value:.4g} (threshold {c.threshold:.4g}) — {c.message}"
            )
        outcome = "promoted" if response.promoted else "REFUSED"
        typer.echo(f"{outcome}: {_describe(response.version)}")
    if not response.promoted:
        raise typer.Exit(REFUSED_EXIT)


@models_app.command("rollback")
def models_rollback(
    kind: Annotated[ModelKind, typer.Option(help="Kind whose served version is rolled back.")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Serve the previously served version again (ActivateModel switches a service)."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.RollbackModelRequest(kind=_model_kind(kind))
    response = _rpc(data_dir, lambda stub: stub.RollbackModel(request, timeout=60))
    if as_json:
        _echo_json(response)
        return
    typer.echo(f"now serving {_describe(response.version)}")
