"""``clinalign lineage`` and ``clinalign retraining``: the monitor's closed loop from the
command line — walk from a production output back to the models, jobs, snapshot and flags
behind it; evaluate the retraining policy; list retraining runs. Mounted on the main
``clinalign`` app.

Calls go to the monitor (``CLINALIGN_MONITOR_TARGET``) as the local ml-engineer. Exit
status: 0 on success; 1 on a gRPC error (``error: <CODE>: <details>`` on stderr, the
details naming the field at fault) or a missing tokens file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from clinalign.cli.options import AsJson, DataDir, echo_json, rpc, table, when
from clinalign.common.protos import enum_name

if TYPE_CHECKING:
    from clinalign.monitor.v1 import monitor_pb2 as pb
    from clinalign.monitor.v1.monitor_pb2_grpc import MonitorServiceAsyncStub

retraining_app = typer.Typer(
    no_args_is_help=True, help="The monitor's retraining policy and its runs."
)
T = TypeVar("T")


def _rpc(data_dir: Path | None, call: Callable[[MonitorServiceAsyncStub], Awaitable[T]]) -> T:
    """Runs ``call`` against the monitor as the local ml-engineer (``options.rpc``)."""
    return rpc(data_dir, lambda clients: call(clients.monitor))


def lineage_tree(steps: list[pb.LineageStep]) -> object:
    """A rich Tree of lineage steps, each under the step it was reached from."""
    from rich.markup import escape
    from rich.tree import Tree

    def label(s: pb.LineageStep) -> str:
        return f"[bold]{escape(s.kind)}[/bold] {escape(s.id)}: {escape(s.summary)}"

    roots = [s for s in steps if not s.parent_id]
    tree = Tree(label(roots[0]) if roots else "lineage")
    nodes = {roots[0].id: tree} if roots else {}
    for s in steps:
        if roots and s is roots[0]:
            continue
        parent = nodes.get(s.parent_id, tree)
        nodes.setdefault(s.id, parent.add(label(s)))
    return tree


def lineage(
    output_id: Annotated[str, typer.Argument(help="Output id from a provenance.")],
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Walk from a production output back to the model, jobs, snapshot and flags behind it."""
    from rich.console import Console

    from clinalign.monitor.v1 import monitor_pb2 as pb

    reply = _rpc(data_dir, lambda stub: stub.GetLineage(pb.GetLineageRequest(output_id=output_id)))
    if as_json:
        echo_json(reply)
        return
    Console().print(lineage_tree(list(reply.steps)))


def _run_rows(runs: list[pb.RetrainingRun]) -> list[list[str]]:
    from clinalign.monitor.v1 import monitor_pb2 as pb

    rows = []
    for run in runs:
        state = enum_name(pb.RunState, run.state)
        last = run.steps[-1] if run.steps else None
        rows.append(
            [
                run.id,
                when(run.create_time),
                run.trigger,
                state,
                f"{last.name}: {last.outcome}" if last else "-",
                run.promoted_version or "-",
                run.reason or "-",
            ]
        )
    return rows


_RUN_COLUMNS = ["run", "created", "trigger", "state", "last step", "promoted", "reason"]


@retraining_app.command("evaluate")
def retraining_evaluate(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report the decision; start nothing.")
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Evaluate the retraining policy now and, unless --dry-run, start a run on a trigger."""
    from clinalign.monitor.v1 import monitor_pb2 as pb

    reply = _rpc(
        data_dir,
        lambda stub: stub.EvaluateRetraining(pb.EvaluateRetrainingRequest(dry_run=dry_run)),
    )
    if as_json:
        echo_json(reply)
        return
    if not reply.triggered:
        typer.echo("no trigger fired")
    else:
        typer.echo("triggers: " + ", ".join(reply.reasons))
        if dry_run:
            typer.echo("dry run: nothing started")
    if reply.HasField("run"):
        table("retraining run", _RUN_COLUMNS, _run_rows([reply.run]))


@retraining_app.command("list")
def retraining_list(
    page_size: Annotated[int, typer.Option(help="Runs a page, 1 to 100.")] = 20,
    page_token: Annotated[str, typer.Option(help="Token from a previous page.")] = "",
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """List retraining runs, newest first, with their last step."""
    from clinalign.monitor.v1 import monitor_pb2 as pb

    reply = _rpc(
        data_dir,
        lambda stub: stub.ListRetrainingRuns(
            pb.ListRetrainingRunsRequest(page_size=page_size, page_token=page_token)
        ),
    )
    if as_json:
        echo_json(reply)
        return
    table("retraining runs", _RUN_COLUMNS, _run_rows(list(reply.runs)))
    if reply.next_page_token:
        typer.echo(f"next page: --page-token {reply.next_page_token}")
