"""``clinalign generate`` and ``clinalign smoke``: GenerationService as an EHR client calls
it, with a prompt or a FHIR Bundle; and the one synthetic, checked call that the Helm
chart's ``helm test`` runs against a deployment. Registered on the main ``clinalign`` app.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from clinalign.cli.options import DataDir, common_settings
from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.protos import enum_name

if TYPE_CHECKING:
    import grpc.aio

    from clinalign.generation.v1 import generation_pb2 as gen_pb


class Task(StrEnum):
    patient_question = "patient-question"
    summary = "summary"
    discharge_instructions = "discharge-instructions"


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
                common_settings(data_dir),
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
    from clinalign.common.channels import Clients
    from clinalign.generation.v1 import generation_pb2 as pb

    async with Clients(common, role=Role.EHR_CLIENT) as clients:
        stub = clients.generation
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

    return enum_name(pb.FinishReason, c.finish_reason)


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

    common = common_settings(data_dir)
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
