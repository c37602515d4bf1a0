"""A cost_model job (issue 21) through real gRPC: clinicians' error annotations in a real
preference service, a snapshot's harm records, a real worker process training the cost
model, its registration as a ``cost`` version, and the cost-model gate promoting it, then
judging a second one against it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.v1 import common_pb2
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import client, reset_tables, serving

Token = Callable[[Role], str]
CONDITIONS = ["flu", "asthma", "migraine", "eczema", "gout", "shingles", "angina", "anaemia"]
HYPER = {"epochs": "6", "learning_rate": "3e-3", "batch_size": "8", "max_length": "128"}


async def _annotated(stub: preference_pb2_grpc.PreferenceServiceStub, prompts: int) -> str:
    """Per prompt, a certain answer a clinician annotates (inappropriate certainty,
    moderate) and a hedged one they compare it with and leave clean; the snapshot's id."""
    await stub.RegisterAnnotator(
        pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id="ann-0", role="physician"))
    )
    await stub.PublishGuidelines(pb.PublishGuidelinesRequest(version="g1", text="Be careful."))
    texts = [f"Patient {i}: a rash and a fever. Is it {CONDITIONS[i % 8]}?" for i in range(prompts)]
    pids = (
        await stub.SubmitPrompts(
            pb.SubmitPromptsRequest(
                idempotency_key="cost-prompts",
                prompts=[pb.PromptInput(text=t, source=pb.PROMPT_SOURCE_CURATED) for t in texts],
            )
        )
    ).ids
    answers = [
        (pid, text)
        for pid, i in zip(pids, range(prompts), strict=True)
        for text in (
            f"This is definitely {CONDITIONS[i % 8]}, without a doubt.",
            f"It may be {CONDITIONS[i % 8]}; please see a doctor.",
        )
    ]
    rids = (
        await stub.SubmitResponses(
            pb.SubmitResponsesRequest(
                idempotency_key="cost-responses",
                responses=[
                    pb.ResponseInput(prompt_id=p, text=t, model_version="policy-v1")
                    for p, t in answers
                ],
            )
        )
    ).ids
    context = pb.LabelContext(annotator_id="ann-0", guideline_version="g1")
    certain, hedged = rids[0::2], rids[1::2]
    await stub.SubmitComparisons(
        pb.SubmitComparisonsRequest(
            idempotency_key="cost-comparisons",
            comparisons=[
                pb.Comparison(
                    context=context,
                    response_a_id=a,
                    response_b_id=b,
                    preference=pb.PREFERENCE_B,
                    strength=1.0,
                )
                for a, b in zip(certain, hedged, strict=True)
            ],
        )
    )
    await stub.SubmitErrorAnnotations(
        pb.SubmitErrorAnnotationsRequest(
            idempotency_key="cost-annotations",
            annotations=[
                pb.ErrorAnnotation(
                    context=context,
                    response_id=a,
                    category=common_pb2.ERROR_CATEGORY_INAPPROPRIATE_CERTAINTY,
                    severity=common_pb2.SEVERITY_MODERATE,
                )
                for a in certain
            ],
        )
    )
    filt = pb.SnapshotFilter(eval_fraction=0.3)
    return (await stub.CreateSnapshot(pb.CreateSnapshotRequest(filter=filt))).snapshot.id


@pytest.mark.slow
async def test_a_cost_model_job_trains_registers_and_passes_the_cost_gate(
    common: CommonSettings, token: Token, tiny_model_dir: Path, database_url: str
) -> None:
    reset_tables(database_url, registry.Base)
    preference = PreferenceApp(common, PreferenceSettings(port=0))
    async with serving(preference, common) as pref:
        async with client(pref, common, token(Role.ADMIN)) as ch:
            pstub = preference_pb2_grpc.PreferenceServiceStub(ch)
            snapshot_id = await _annotated(pstub, 48)
            snapshot = (await pstub.GetSnapshot(pb.GetSnapshotRequest(id=snapshot_id))).snapshot
        wired = common.model_copy(update={"preference_target": f"127.0.0.1:{pref.port}"})
        trainer = TrainerApp(
            wired, TrainerSettings(port=0, watch_poll_s=0.1, database_url=database_url)
        )
        async with serving(trainer, wired) as running:
            async with client(running, wired, token(Role.ML_ENGINEER)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                spec = tpb.JobSpec(
                    kind=tpb.JOB_KIND_COST_MODEL,
                    snapshot_id=snapshot_id,
                    base_model=str(tiny_model_dir),
                    hyperparameters=HYPER,
                )
                job_id = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))).job.id
                done = [u.job async for u in stub.WatchJob(tpb.WatchJobRequest(id=job_id))][-1]
                listed = await stub.ListModelVersions(
                    tpb.ListModelVersionsRequest(kind=common_pb2.MODEL_KIND_COST)
                )
                got = await stub.GetModelVersion(tpb.GetModelVersionRequest(version="cost-v1"))
                first = await stub.PromoteModel(tpb.PromoteModelRequest(version="cost-v1"))
                # a second cost model (another seed) is judged against the served one
                spec.hyperparameters["seed"] = "1"
                second_id = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))).job.id
                second = [u.job async for u in stub.WatchJob(tpb.WatchJobRequest(id=second_id))]
                judged = await stub.PromoteModel(tpb.PromoteModelRequest(version="cost-v2"))
                bad = tpb.JobSpec(
                    kind=tpb.JOB_KIND_COST_MODEL,
                    snapshot_id=snapshot_id,
                    base_model=str(tiny_model_dir),
                    hyperparameters={"positive_weight": "2"},
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.SubmitJob(tpb.SubmitJobRequest(spec=bad))

    assert snapshot.harm_records == 96
    assert done.state == tpb.JOB_STATE_SUCCEEDED, done.failure_reason
    assert done.model_version == "cost-v1"
    assert done.metrics["eval_auroc"] >= 0.9 and done.metrics["train_harmful"] > 0
    [version] = listed.versions
    assert version.ref.version == "cost-v1" and version.kind == common_pb2.MODEL_KIND_COST
    assert version.snapshot_hash == json.loads(snapshot.manifest_json)["content_hash"]
    manifest = json.loads(got.manifest_json)
    assert manifest["kind"] == "cost" and manifest["categories"]["inappropriate_certainty"]
    report = Path(done.report_uri)
    assert await asyncio.to_thread(Path(report, "loss.png").is_file)

    assert first.promoted, [c.message for c in first.checks]
    assert [c.name for c in first.checks] == ["cost_auroc_ci_low"]
    assert "above chance with confidence" in first.checks[0].message
    assert first.version.stage == common_pb2.MODEL_STAGE_SERVING
    assert second[-1].state == tpb.JOB_STATE_SUCCEEDED, second[-1].failure_reason
    assert [c.name for c in judged.checks] == ["cost_auroc_ci_low", "cost_auroc_vs_served"]
    assert "against the served cost model" in judged.checks[1].message
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spec.hyperparameters[positive_weight]" in (refused.value.details() or "")
