"""The ``clinalign`` command.

clinalign bootstrap        build the embedded foundation model
clinalign up               start all five services on loopback
clinalign status           health of every service
clinalign generate TEXT    an EHR-style Generate call
clinalign demo             bootstrap, start, and run the pipeline end to end
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from clinalign.common.config import CommonSettings

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="ClinAlign: closed-loop RLHF for clinical language models.",
)


def _common(data_dir: Path | None) -> CommonSettings:
    if data_dir is None:
        return CommonSettings()
    return CommonSettings(data_dir=data_dir)


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default: $CLINALIGN_DATA_DIR or ./.clinalign)."
    ),
]


def foundation_dir(common: CommonSettings) -> Path:
    return common.data_dir / "models" / "foundation"


@app.command()
def bootstrap(
    data_dir: DataDir = None,
    out: Annotated[Path | None, typer.Option(help="Model directory to write.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for corpus, tokenizer and model.")] = 0,
    force: Annotated[bool, typer.Option(help="Rebuild even if a model exists.")] = False,
) -> None:
    """Build the embedded foundation model offline (about 3 minutes on 2 CPU cores)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from clinalign.common.logs import quiet_library_progress
    from clinalign.foundation import bootstrap as build

    quiet_library_progress()
    target = out or foundation_dir(_common(data_dir))
    with Progress(
        TextColumn("[bold]pretraining"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task("train", total=None, loss="-")

        def report(step: int, total: int, loss: float) -> None:
            progress.update(task, completed=step, total=total, loss=f"{loss:.3f}")

        try:
            manifest = build(target, seed=seed, force=force, progress=report)
        except FileExistsError as exc:
            raise typer.BadParameter(str(exc), param_hint="--out") from exc
    typer.echo(
        f"foundation model: {target}\n"
        f"  parameters {manifest.get('parameters', '?')}, steps {manifest.get('steps', '?')}, "
        f"final loss {manifest.get('final_loss', '?')}, wall {manifest.get('wall_s', '?')} s"
    )


@app.command()
def up(
    data_dir: DataDir = None,
    no_bootstrap: Annotated[
        bool, typer.Option("--no-bootstrap", help="Fail instead of building a missing model.")
    ] = False,
) -> None:
    """Start all five services on loopback; Ctrl-C stops them all."""
    from clinalign.stack import Stack

    common = _common(data_dir)
    model = foundation_dir(common)
    if not (model / "config.json").exists():
        if no_bootstrap:
            raise typer.BadParameter(f"no foundation model at {model}; run `clinalign bootstrap`")
        typer.echo(f"no foundation model at {model}; building it first")
        bootstrap(data_dir=common.data_dir)
    stack = Stack(common, extra_env=_model_env(common))
    stop_requested = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    stack.start()
    try:
        reports = stack.wait_ready()
        _print_endpoints(stack, reports)
        typer.echo("all services up; Ctrl-C to stop")
        while not stop_requested:
            for name, proc in stack.procs.items():
                if proc.poll() is not None:
                    typer.echo(f"{name} exited with status {proc.returncode}; stopping", err=True)
                    stop_requested = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping services ...")
        codes = stack.stop()
        typer.echo("stopped: " + ", ".join(f"{k}={v}" for k, v in codes.items()))


def _model_env(common: CommonSettings) -> dict[str, str]:
    """Serve the foundation model unless the user configured another."""
    import os

    env = {}
    if "CLINALIGN_GENERATION_MODEL_PATH" not in os.environ:
        env["CLINALIGN_GENERATION_MODEL_PATH"] = str(foundation_dir(common).resolve())
    return env


def _print_endpoints(stack: Any, reports: list[Any]) -> None:
    by_name = {r.service: r for r in reports}
    typer.echo(f"{'service':<12}{'gRPC':<18}{'metrics':<28}{'status'}")
    for ep in stack.endpoints:
        r = by_name[ep.service]
        typer.echo(
            f"{ep.service:<12}{ep.target:<18}"
            f"{'http://' + ep.host + ':' + str(ep.metrics_port) + '/metrics':<28}"
            f"{r.process} (service: {r.service_status})"
        )
    typer.echo(f"tokens: {stack.common.resolved_tokens_file} (mode 0600)")
    typer.echo(f"logs:   {stack.log_dir}/")


@app.command()
def status(data_dir: DataDir = None) -> None:
    """Check every service's health over gRPC (exit status 1 if any is unreachable)."""
    from clinalign.stack import check_health, endpoints

    common = _common(data_dir)
    eps = endpoints(common)
    for ep in eps:
        ep.host, _, port = common.target(ep.service).rpartition(":")
        ep.grpc_port = int(port)
    reports = asyncio.run(check_health(eps, common))
    typer.echo(f"{'service':<12}{'target':<20}{'process':<13}{'service status'}")
    for r in reports:
        typer.echo(f"{r.service:<12}{r.target:<20}{r.process:<13}{r.service_status}")
    if any(r.process == "UNREACHABLE" for r in reports):
        raise typer.Exit(1)


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Prompt text, such as a patient's question.")],
    data_dir: DataDir = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 96,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the response as JSON.")] = False,
) -> None:
    """Call GenerationService.Generate as an EHR client would."""
    from google.protobuf.json_format import MessageToDict

    from clinalign.client import channel_for
    from clinalign.common.auth import Role
    from clinalign.generation.v1 import generation_pb2, generation_pb2_grpc

    async def call() -> generation_pb2.GenerateResponse:
        async with channel_for("generation", Role.EHR_CLIENT, _common(data_dir)) as channel:
            stub = generation_pb2_grpc.GenerationServiceStub(channel)
            return await stub.Generate(
                generation_pb2.GenerateRequest(
                    input=generation_pb2.GenerationInput(prompt=prompt),
                    sampling=generation_pb2.SamplingParams(
                        max_new_tokens=max_new_tokens, temperature=temperature
                    ),
                ),
                timeout=120,
            )

    response = asyncio.run(call())
    if as_json:
        typer.echo(json.dumps(MessageToDict(response, preserving_proto_field_name=True)))
        return
    c = response.completion
    typer.echo(c.text)
    typer.echo(
        f"\n[{c.provenance.notice}]\n"
        f"output {c.provenance.output_id} · model {c.provenance.model_name} "
        f"{c.provenance.model_version} · weights {c.provenance.weights_hash[:12]} · "
        f"{c.prompt_tokens}+{c.completion_tokens} tokens"
    )


@app.command()
def demo(
    data_dir: DataDir = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Last line: the figures as JSON.")
    ] = False,
) -> None:
    """Build the foundation model, start the stack, and run the pipeline end to end."""
    from clinalign.demo import run_demo

    report = run_demo(_common(data_dir), echo=typer.echo)
    if as_json:
        typer.echo(json.dumps(report))


audit_app = typer.Typer(no_args_is_help=True, help="The preference store's audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Preference-store database (default: CLINALIGN_PREFERENCE_DATABASE_URL"
            " or <data_dir>/preference.db)."
        ),
    ] = None,
) -> None:
    """Verify the hash chain of the audit log (exit status 1 if any entry was edited,
    deleted, reordered or cut off)."""
    from clinalign.common.db import Database, default_sqlite_url
    from clinalign.preference import audit
    from clinalign.preference.config import PreferenceSettings
    from clinalign.preference.models import Base

    common = _common(data_dir)
    url = (
        database_url
        or PreferenceSettings().database_url
        or default_sqlite_url(common.data_dir, "preference")
    )
    from sqlalchemy.exc import OperationalError, ProgrammingError

    db = Database(url, Base)
    try:
        with db.sessions() as session:
            result = audit.verify(session)
    except (OperationalError, ProgrammingError) as exc:
        typer.echo(
            f"{url}: no preference-store schema here ({type(exc).__name__}); start the "
            "preference service once to migrate it",
            err=True,
        )
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    if result.ok:
        typer.echo(f"audit log intact: {result.entries} entries")
        return
    typer.echo(f"audit log BROKEN at entry {result.first_bad_sequence}: {result.message}", err=True)
    raise typer.Exit(1)


@app.command()
def deid(
    as_json: Annotated[bool, typer.Option("--json", help="Print spans and types as JSON.")] = False,
) -> None:
    """De-identify clinical text: text on stdin, redacted text on stdout (settings:
    CLINALIGN_DEID_*)."""
    from pydantic import ValidationError

    from clinalign.common.deid import DeidSettings
    from clinalign.common.deid.cli import deid_cli

    try:
        settings = DeidSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"invalid CLINALIGN_DEID_* settings: {problems}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(deid_cli(sys.stdin.read(), as_json=as_json, settings=settings), nl=False)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
