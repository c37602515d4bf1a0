"""The sft and dpo job kinds through real gRPC with real worker processes: each trains the
tiny model on a snapshot of a real preference service, succeeds, and registers a policy
version with its lineage and weights that differ from the base; bad hyperparameters are
refused at submission naming their field."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.hashing import weights_hash
from clinalign.common.v1 import common_pb2
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import client, serving
from tests.e2e.test_reward_pipeline import _populate

Token = Callable[[Role], str]
# A learning rate for the 48-wide tiny model, so a job trains in seconds, and no warm-up:
# with a handful of steps the first would have a learning rate of 0.
HYPER = {"epochs": "2", "learning_rate": "1e-3", "batch_size": "4", "warmup_ratio": "0"}


async def _with_demonstrations(stub: preference_pb2_grpc.PreferenceServiceStub) -> str:
    """Comparisons (``_populate``) plus clinician-written answers, which a snapshot
    exports as SFT records; the id of a snapshot holding both."""
    await _populate(stub, 8)
    prompts = await stub.SubmitPrompts(
        pb.SubmitPromptsRequest(
            idempotency_key="sft-prompts",
            prompts=[
                pb.PromptInput(
                    text=f"My cough has lasted {i} weeks. What should I do?",
                    source=pb.PROMPT_SOURCE_CURATED,
                )
                for i in range(2, 14)
            ],
        )
    )
    await stub.SubmitResponses(
        pb.SubmitResponsesRequest(
            idempotency_key="sft-demonstrations",
            responses=[
                pb.ResponseInput(prompt_id=p, text="See your GP; call 999 if you cough blood.")
                for p in prompts.ids
            ],
        )
    )
    created = await stub.CreateSnapshot(
        pb.CreateSnapshotRequest(filter=pb.SnapshotFilter(eval_fraction=0.3))
    )
    return created.snapshot.id


def _spec(kind: tpb.JobKind.ValueType, base: str, snapshot_id: str, **hyper: str) -> tpb.JobSpec:
    return tpb.JobSpec(
        kind=kind, snapshot_id=snapshot_id, base_model=base, hyperparameters={**HYPER, **hyper}
    )


def _check_policy(
    method: str,
    job: tpb.Job,
    registered: common_pb2.ModelVersion,
    content_hash: str,
    base_model: Path,
) -> None:
    """A registered policy with the job's lineage, its tokenizer, and new weights."""
    assert registered.kind == common_pb2.MODEL_KIND_POLICY
    assert registered.snapshot_hash == content_hash
    assert registered.job_id == job.id
    assert registered.base_model == str(base_model.resolve())
    assert registered.weights_hash != weights_hash(base_model)  # training changed them
    artefact = Path(registered.artifact_uri)
    manifest = json.loads((artefact / "clinalign_manifest.json").read_text())
    assert manifest["method"]["name"] == method
    assert (artefact / "tokenizer_config.json").is_file()


@pytest.mark.slow
async def test_sft_and_dpo_jobs_train_and_register_policies(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    preference = PreferenceApp(common, PreferenceSettings(port=0))
    async with serving(preference, common) as pref:
        async with client(pref, common, token(Role.ADMIN)) as ch:
            pstub = preference_pb2_grpc.PreferenceServiceStub(ch)
            snapshot_id = await _with_demonstrations(pstub)
            snapshot = (await pstub.GetSnapshot(pb.GetSnapshotRequest(id=snapshot_id))).snapshot
        wired = common.model_copy(update={"preference_target": f"127.0.0.1:{pref.port}"})
        trainer = TrainerApp(wired, TrainerSettings(port=0, watch_poll_s=0.1))
        async with serving(trainer, wired) as running:
            async with client(running, wired, token(Role.ML_ENGINEER)) as ch:
                stub = trainer_pb2_grpc.TrainerServiceStub(ch)
                base = str(tiny_model_dir)
                done: dict[str, tpb.Job] = {}
                for name, kind in (("sft", tpb.JOB_KIND_SFT), ("dpo", tpb.JOB_KIND_DPO)):
                    spec = _spec(kind, base, snapshot_id)
                    job_id = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))).job.id
                    updates = [u async for u in stub.WatchJob(tpb.WatchJobRequest(id=job_id))]
                    done[name] = updates[-1].job
                versions = await stub.ListModelVersions(
                    tpb.ListModelVersionsRequest(kind=common_pb2.MODEL_KIND_POLICY)
                )

    snapshot_manifest = json.loads(snapshot.manifest_json)
    content_hash = snapshot_manifest["content_hash"]
    assert snapshot_manifest["counts"]["sft_train"] > 0
    by_version = {v.ref.version: v for v in versions.versions}
    for name, job in done.items():
        assert job.state == tpb.JOB_STATE_SUCCEEDED, (name, job.failure_reason)
        assert job.metrics["train_loss_last"] < job.metrics["train_loss_first"], name
        _check_policy(name, job, by_version[job.model_version], content_hash, tiny_model_dir)
    assert [done["sft"].model_version, done["dpo"].model_version] == ["policy-v1", "policy-v2"]
    assert done["dpo"].metrics["eval_pairs"] > 0


async def test_bad_policy_hyperparameters_name_their_field(
    common: CommonSettings, token: Token, tiny_model_dir: Path
) -> None:
    base = str(tiny_model_dir)
    cases = [
        (
            _spec(tpb.JOB_KIND_SFT, base, "s1", beta="0.1"),
            r"spec.hyperparameters\[beta\]: is not a hyperparameter; known: epochs",
        ),
        (
            _spec(tpb.JOB_KIND_DPO, base, "s1", beta="-1"),
            r"spec.hyperparameters\[beta\]: must be positive, got -1.0",
        ),
        (
            _spec(tpb.JOB_KIND_DPO, base, "s1", batch_size="eight"),
            r"spec.hyperparameters\[batch_size\]: 'eight' is not a valid int",
        ),
        (_spec(tpb.JOB_KIND_SFT, base, ""), r"spec.snapshot_id: is required"),
        (_spec(tpb.JOB_KIND_DPO, "", "s1"), r"spec.base_model: is required while no policy"),
    ]
    app = TrainerApp(common, TrainerSettings(port=0))
    async with serving(app, common) as running:
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            errors = []
            for spec, _ in cases:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))
                errors.append(info.value)
    for err, (_, pattern) in zip(errors, cases, strict=True):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert re.match(pattern, err.details() or ""), err.details()
