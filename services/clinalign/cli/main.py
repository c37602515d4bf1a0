"""The ``clinalign`` command.

clinalign bootstrap        build the embedded foundation model
clinalign import-model     bring your own foundation model (GGUF, Hugging Face, smollm2)
clinalign up               start all five services on loopback
clinalign status           health of every service
clinalign generate TEXT    an EHR-style Generate call (or --fhir BUNDLE.json)
clinalign smoke            one synthetic Generate, checked (the Helm chart's `helm test`)
clinalign migrate          upgrade the stores' schemas (the services do it at start)
clinalign demo             bootstrap, start, and run the pipeline end to end
clinalign snapshot export  a preference snapshot as JSONL (with its manifest)
clinalign train reward-model / clinalign eval reward-model
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from clinalign.cli.admin import audit_app, deid, migrate, tls_app, tokens_app
from clinalign.cli.generate import generate, smoke
from clinalign.cli.jobs import jobs_app
from clinalign.cli.models import import_model, models_app
from clinalign.cli.monitor import lineage, retraining_app
from clinalign.cli.options import DataDir, common_settings
from clinalign.cli.train import eval_app, snapshot_app, train_app
from clinalign.common.config import CommonSettings

if TYPE_CHECKING:
    pass

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="ClinAlign: closed-loop RLHF for clinical language models.",
)


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
    target = out or foundation_dir(common_settings(data_dir))
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
    from clinalign.cli.stack import Stack

    common = common_settings(data_dir)
    model = foundation_dir(common)
    if not (model / "config.json").exists():
        if no_bootstrap:
            raise typer.BadParameter(f"no foundation model at {model}; run `clinalign bootstrap`")
        typer.echo(f"no foundation model at {model}; building it first")
        bootstrap(data_dir=common.data_dir)
    stack = Stack(common, extra_env=model_env(common))
    stop_requested = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C raises KeyboardInterrupt even when this process inherited SIGINT ignored (as a
    # background job of a non-interactive shell does), so it always stops the stack.
    signal.signal(signal.SIGINT, signal.default_int_handler)
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


def model_env(common: CommonSettings) -> dict[str, str]:
    """Serve the foundation model unless the user configured another."""
    import os

    env = {}
    if "CLINALIGN_GENERATION_MODEL_PATH" not in os.environ:
        env["CLINALIGN_GENERATION_MODEL_PATH"] = str(foundation_dir(common).resolve())
    return env


def console_sign_in_hint() -> str:
    """How to sign in to the embedded default's console (development-only sign-in)."""
    from clinalign.console.config import DEV_USERS

    users = ", ".join(f"{user} ({role})" for user, role in DEV_USERS.items())
    return f"console sign-in (development only): {users}"


def _print_endpoints(stack: Any, reports: list[Any]) -> None:
    by_name = {r.service: r for r in reports}
    typer.echo(f"{'service':<12}{'gRPC':<18}{'metrics':<31}{'status'}")
    for ep in stack.endpoints:
        r = by_name[ep.service]
        typer.echo(
            f"{ep.service:<12}{ep.target:<18}"
            f"{'http://' + ep.host + ':' + str(ep.metrics_port) + '/metrics':<31}"
            f"{r.process} (service: {r.service_status})"
        )
    for name, url in stack.front_doors.items():
        typer.echo(f"{name:<12}{url}")
    typer.echo(console_sign_in_hint())
    typer.echo(f"tokens: {stack.common.resolved_tokens_file} (mode 0600)")
    typer.echo(f"logs:   {stack.log_dir}/")


@app.command()
def status(data_dir: DataDir = None) -> None:
    """Check every service's health over gRPC, one line per replica, with the model versions
    each generation and reward replica has loaded (exit status 1 if any is unreachable)."""
    from clinalign.cli.stack import check_health, endpoints, replicas

    common = common_settings(data_dir)
    eps = endpoints(common)
    for ep in eps:
        ep.host, _, port = common.target(ep.service).rpartition(":")
        ep.grpc_port = int(port)
    # One line per replica behind a headless Service (dns:/// targets in a deployment).
    eps = [replica for ep in eps for replica in replicas(ep)]
    reports = asyncio.run(check_health(eps, common))
    typer.echo(f"{'service':<12}{'target':<20}{'process':<13}{'service status':<16}serving")
    for r in reports:
        typer.echo(f"{r.service:<12}{r.target:<20}{r.process:<13}{r.service_status:<16}{r.serving}")
    if any(r.process == "UNREACHABLE" for r in reports):
        raise typer.Exit(1)


@app.command()
def demo(
    data_dir: DataDir = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Last line: the report's figures as one JSON object.")
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="The shortened loop the end-to-end test runs: tiny sizes, the foundation "
            "model already in the data directory, no improvement expected.",
        ),
    ] = False,
    seed: Annotated[
        int,
        typer.Option(
            help="Seeds the foundation model, every training job and the labelling panel "
            "(bench/demo_seeds.py compares seeds)."
        ),
    ] = 0,
) -> None:
    """The whole closed loop from nothing through the five services (25 to 37 minutes on
    2 CPU cores on 2026-12-07; 15 is the target): bootstrap, SFT, simulated panel labels,
    reward model, PPO, promotion, EHR traffic through the CDS Hooks gateway, overrides as
    flags, retraining; report under <data-dir>/demo/."""
    from clinalign.demo import Plan, run_demo

    plan = (Plan.quick() if quick else Plan.full()).seeded(seed)
    report = run_demo(
        common_settings(data_dir), echo=typer.echo, plan=plan, bootstrap_model=not quick
    )
    if as_json:
        typer.echo(json.dumps(report))


app.add_typer(snapshot_app, name="snapshot")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.command("import-model")(import_model)
app.add_typer(retraining_app, name="retraining")
app.command("lineage")(lineage)
app.command()(generate)
app.command()(smoke)
app.add_typer(tokens_app, name="tokens")
app.add_typer(tls_app, name="tls")
app.add_typer(audit_app, name="audit")
app.command()(deid)
app.command()(migrate)


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)
