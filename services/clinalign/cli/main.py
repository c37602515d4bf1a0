"""The ``clinalign`` command.

clinalign bootstrap        build the embedded foundation model
clinalign up               start all five services on loopback
clinalign status           health of every service
clinalign generate TEXT    an EHR-style Generate call (or --fhir BUNDLE.json)
clinalign smoke            one synthetic Generate, checked (the Helm chart's `helm test`)
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
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from clinalign.cli.jobs import jobs_app, models_app
from clinalign.cli.monitor import lineage, retraining_app
from clinalign.cli.train import eval_app, snapshot_app, train_app
from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings

if TYPE_CHECKING:
    import grpc.aio

    from clinalign.generation.v1 import generation_pb2 as gen_pb

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
    from clinalign.cli.stack import Stack

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
    from clinalign.cli.stack import check_health, endpoints

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


class Task(StrEnum):
    patient_question = "patient-question"
    summary = "summary"
    discharge_instructions = "discharge-instructions"


@app.command()
def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="Prompt text, such as a patient's question.")
    ] = None,
    fhir: Annotated[
        Path | None,
        typer.Option(help="FHIR R4 Bundle (JSON file) to render with a clinical template."),
    ] = None,
    task: Annotated[Task, typer.Option(help="Template for --fhir.")] = Task.patient_question,
    question: Annotated[str, typer.Option(help="The patient's question (--fhir).")] = "",
    template_version: Annotated[str, typer.Option(help="Template version; default current.")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate at most.")] = 96,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding.")] = 0.0,
    top_p: Annotated[float | None, typer.Option(help="Nucleus mass in (0, 1].")] = None,
    top_k: Annotated[int | None, typer.Option(help="Top-k cut-off; 0 disables it.")] = None,
    stop: Annotated[list[str] | None, typer.Option(help="Stop sequence (repeatable).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None,
    stream: Annotated[bool, typer.Option(help="Print tokens as they arrive.")] = False,
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the response as JSON.")] = False,
) -> None:
    """Call GenerationService as an EHR client would, with a prompt or a FHIR Bundle."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from clinalign.generation.v1 import generation_pb2 as pb

    if (prompt is None) == (fhir is None):
        raise typer.BadParameter("give either a PROMPT or --fhir BUNDLE.json")
    if fhir is not None:
        source = pb.GenerationInput(
            fhir=pb.FhirContext(
                bundle_json=fhir.read_text(encoding="utf-8"),
                task=pb.ClinicalTask.Value("CLINICAL_TASK_" + task.name.upper()),
                question=question,
                template_version=template_version,
            )
        )
    else:
        source = pb.GenerationInput(prompt=prompt or "")
    sampling = pb.SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        stop=stop or [],
        seed=seed,
    )

    def echo_delta(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    try:
        c = asyncio.run(
            _generate(
                _common(data_dir),
                source,
                sampling,
                deadline_s=120,
                stream=stream,
                on_delta=None if as_json else echo_delta,
            )
        )
    except grpc.aio.AioRpcError as err:
        typer.echo(f"error: {_rpc_error(err)}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(MessageToDict(c, preserving_proto_field_name=True)))
        return
    typer.echo("" if stream else c.text)
    p = c.provenance
    template = f" · template {p.prompt_template_version}" if p.prompt_template_version else ""
    typer.echo(
        f"\n[{p.notice}]\n"
        f"output {p.output_id} · model {p.model_name} {p.model_version} · "
        f"weights {p.weights_hash[:12]}{template} · "
        f"{c.prompt_tokens}+{c.completion_tokens} tokens · "
        f"{_finish_reason(c)}"
    )


async def _generate(
    common: CommonSettings,
    source: gen_pb.GenerationInput,
    sampling: gen_pb.SamplingParams,
    *,
    deadline_s: float,
    stream: bool = False,
    on_delta: Callable[[str], None] | None = None,
) -> gen_pb.Completion:
    """One Generate (or GenerateStream) call as an EHR client, with the `ehr-client` token of
    the tokens file, under a gRPC deadline; the completion, or grpc.aio.AioRpcError."""
    from clinalign.cli.client import channel_for
    from clinalign.common.auth import Role
    from clinalign.generation.v1 import generation_pb2 as pb
    from clinalign.generation.v1 import generation_pb2_grpc

    async with channel_for("generation", Role.EHR_CLIENT, common) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        if not stream:
            request = pb.GenerateRequest(input=source, sampling=sampling)
            return (await stub.Generate(request, timeout=deadline_s)).completion
        request_s = pb.GenerateStreamRequest(input=source, sampling=sampling)
        async for message in stub.GenerateStream(request_s, timeout=deadline_s):
            if message.HasField("completion"):
                return message.completion
            if on_delta is not None:
                on_delta(message.text_delta)
        raise RuntimeError("the stream ended without a completion")


def _rpc_error(err: grpc.aio.AioRpcError) -> str:
    return f"{err.code().name}: {err.details()}"


def _finish_reason(c: gen_pb.Completion) -> str:
    from clinalign.generation.v1 import generation_pb2 as pb

    return pb.FinishReason.Name(c.finish_reason).removeprefix("FINISH_REASON_").lower()


# Synthetic and free of patient data: it is sent to production deployments by `helm test`.
SMOKE_PROMPT = (
    "Synthetic smoke-check question, no patient data: what is a typical resting heart rate "
    "for a healthy adult?"
)
SMOKE_PROVENANCE = ("output_id", "model_name", "model_version", "weights_hash", "notice")


def smoke_problems(c: gen_pb.Completion) -> list[str]:
    """The fields a healthy completion has but ``c`` lacks: text or a finish reason, and a
    full provenance."""
    missing = [] if c.text or c.finish_reason else ["text or finish_reason"]
    missing += [f"provenance.{f}" for f in SMOKE_PROVENANCE if not getattr(c.provenance, f)]
    return missing


@app.command()
def smoke(
    deadline: Annotated[
        float, typer.Option(min=0.1, help="Seconds the Generate call may take, connecting too.")
    ] = 60.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate at most.")] = 16,
    data_dir: DataDir = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the check's results as one JSON object.")
    ] = False,
) -> None:
    """Check the generation service end to end: one Generate with a fixed synthetic prompt
    (no patient data) as an EHR client, greedy. Exit status 0 only if the completion has text
    or a finish reason and full provenance (output_id, model_name, model_version,
    weights_hash, notice); 1 otherwise, naming what is missing or the gRPC status. Target,
    token and TLS from CLINALIGN_GENERATION_TARGET, CLINALIGN_TOKENS_FILE (an `ehr-client`
    token) and CLINALIGN_TLS_CA_FILE. The Helm chart's `helm test` pod runs it."""
    import grpc

    from clinalign.generation.v1 import generation_pb2 as pb

    common = _common(data_dir)
    result: dict[str, Any] = {"target": common.generation_target, "ok": False}
    source = pb.GenerationInput(prompt=SMOKE_PROMPT)
    sampling = pb.SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    started = time.perf_counter()
    try:
        c = asyncio.run(_generate(common, source, sampling, deadline_s=deadline))
    except grpc.aio.AioRpcError as err:
        result["error"] = {"code": err.code().name, "details": err.details()}
        _smoke_exit(result, f"Generate failed: {_rpc_error(err)}", as_json)
    except (OSError, LookupError, ValueError) as exc:  # tokens file, CA bundle
        result["error"] = {"code": "CLIENT_SETUP", "details": str(exc)}
        _smoke_exit(result, str(exc), as_json)
    p = c.provenance
    missing = smoke_problems(c)
    result |= {
        "ok": not missing,
        "missing": missing,
        "latency_s": round(time.perf_counter() - started, 3),
        "finish_reason": _finish_reason(c),
        "completion_tokens": c.completion_tokens,
        "text_chars": len(c.text),
        "provenance": {f: getattr(p, f) for f in SMOKE_PROVENANCE},
    }
    if missing:
        _smoke_exit(result, "the completion lacks " + ", ".join(missing), as_json)
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(
        f"smoke ok: {result['target']} · model {p.model_name} {p.model_version} · "
        f"weights {p.weights_hash[:12]} · output {p.output_id} · "
        f"{c.completion_tokens} tokens, {result['finish_reason']} · {result['latency_s']} s"
    )


def _smoke_exit(result: dict[str, Any], message: str, as_json: bool) -> NoReturn:
    if as_json:
        typer.echo(json.dumps(result))
    typer.echo(f"smoke FAILED ({result['target']}): {message}", err=True)
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
) -> None:
    """The whole closed loop from nothing through the five services (about 15 minutes on
    2 CPU cores): bootstrap, SFT, simulated panel labels, reward model, PPO, promotion,
    EHR traffic, flags, retraining; report under <data-dir>/demo/."""
    from clinalign.demo import Plan, run_demo

    plan = Plan.quick() if quick else Plan.full()
    report = run_demo(_common(data_dir), echo=typer.echo, plan=plan, bootstrap_model=not quick)
    if as_json:
        typer.echo(json.dumps(report))


app.add_typer(snapshot_app, name="snapshot")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.add_typer(retraining_app, name="retraining")
app.command("lineage")(lineage)

tokens_app = typer.Typer(no_args_is_help=True, help="Bearer-token files (roles and tokens).")
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("new")
def tokens_new(
    path: Annotated[Path, typer.Argument(help="Tokens file to write (mode 0600).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a fresh tokens file with one principal per role, for a Kubernetes Secret or
    CLINALIGN_TOKENS_FILE; prints the principals and roles, never the tokens."""
    from clinalign.common.auth import generate_tokens

    if path.exists() and not force:
        typer.echo(f"error: {path} exists; pass --force to replace its tokens", err=True)
        raise typer.Exit(1)
    for entry in generate_tokens(path):
        typer.echo(f"{entry.principal}\t{entry.role.value}")


@tokens_app.command("show")
def tokens_show(
    path: Annotated[Path, typer.Argument(help="Tokens file.")],
    role: Annotated[Role, typer.Option(help="Print the first token of this role.")],
) -> None:
    """Print one role's token (for `kubectl create secret ... --from-literal`)."""
    from clinalign.common.auth import token_for_role

    try:
        typer.echo(token_for_role(path, role))
    except (FileNotFoundError, LookupError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


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
