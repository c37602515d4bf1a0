"""Conversions between the trainer's domain types (jobs, model versions, gate decisions)
and its protobuf messages; no validation (the use cases', ``usecases``)."""

from __future__ import annotations

from google.protobuf import json_format

from clinalign.common.protos import KIND_TO_PROTO, STAGE_TO_PROTO, timestamp
from clinalign.common.v1 import common_pb2
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.registry.gate import Decision
from clinalign.trainer.registry.versions import (
    GateDecision,
    ModelVersion,
    ServingChange,
    ServingState,
)
from clinalign.trainer.v1 import trainer_pb2

KIND_TO_PROTO_JOB = {
    "sft": trainer_pb2.JOB_KIND_SFT,
    "reward_model": trainer_pb2.JOB_KIND_REWARD_MODEL,
    "ppo": trainer_pb2.JOB_KIND_PPO,
    "dpo": trainer_pb2.JOB_KIND_DPO,
    "cost_model": trainer_pb2.JOB_KIND_COST_MODEL,
}
KIND_FROM_PROTO_JOB: dict[int, str] = {v: k for k, v in KIND_TO_PROTO_JOB.items()}
STATE_TO_PROTO = {
    jobs.QUEUED: trainer_pb2.JOB_STATE_QUEUED,
    jobs.RUNNING: trainer_pb2.JOB_STATE_RUNNING,
    jobs.SUCCEEDED: trainer_pb2.JOB_STATE_SUCCEEDED,
    jobs.FAILED: trainer_pb2.JOB_STATE_FAILED,
    jobs.CANCELLED: trainer_pb2.JOB_STATE_CANCELLED,
}
STATE_FROM_PROTO: dict[int, str] = {v: k for k, v in STATE_TO_PROTO.items()}
EXECUTOR_TO_PROTO = {
    "local": trainer_pb2.EXECUTOR_KIND_LOCAL,
    "kubernetes": trainer_pb2.EXECUTOR_KIND_KUBERNETES,
}
EXECUTOR_FROM_PROTO: dict[int, str] = {v: k for k, v in EXECUTOR_TO_PROTO.items()}


def job_to_proto(job: jobs.Job) -> trainer_pb2.Job:
    out = trainer_pb2.Job(
        id=job.id,
        spec=json_format.ParseDict(job.spec, trainer_pb2.JobSpec()),
        state=STATE_TO_PROTO[job.state],
        step=job.step,
        total_steps=job.total_steps,
        metrics=job.metrics,
        failure_reason=job.failure_reason,
        model_version=job.model_version,
        report_uri=job.report_uri,
        executor=EXECUTOR_TO_PROTO[job.executor],
        create_time=timestamp(job.created_at),
    )
    if job.started_at is not None:
        out.start_time.CopyFrom(timestamp(job.started_at))
    if job.ended_at is not None:
        out.end_time.CopyFrom(timestamp(job.ended_at))
    return out


def version_to_proto(mv: ModelVersion) -> common_pb2.ModelVersion:
    return common_pb2.ModelVersion(
        ref=common_pb2.ModelRef(name=mv.name, version=mv.version),
        kind=KIND_TO_PROTO[mv.kind],
        stage=STAGE_TO_PROTO[mv.stage],
        base_model=mv.base_model,
        adapter_path=mv.adapter_path,
        artifact_uri=mv.artifact_uri,
        weights_hash=mv.weights_hash,
        parent_version=mv.parent_version,
        snapshot_hash=mv.snapshot_hash,
        job_id=mv.job_id,
        metrics=mv.metrics,
        create_time=timestamp(mv.created_at),
    )


def gate_checks_to_proto(decision: Decision) -> list[trainer_pb2.GateCheck]:
    return [
        trainer_pb2.GateCheck(
            name=c.name, value=c.value, threshold=c.threshold, passed=c.passed, message=c.message
        )
        for c in decision.checks
    ]


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def gate_decision_to_proto(decision: GateDecision) -> trainer_pb2.GateDecision:
    """A recorded decision; its checks are stored as JSON, whose keys older rows (and the
    tests' stand-ins) may lack: a missing figure reads 0, a missing text ""."""
    return trainer_pb2.GateDecision(
        promoted=decision.promoted,
        checks=[
            trainer_pb2.GateCheck(
                name=str(c.get("name", "")),
                value=_float(c.get("value")),
                threshold=_float(c.get("threshold")),
                passed=bool(c.get("passed", False)),
                message=str(c.get("message", "")),
            )
            for c in decision.checks
        ],
        principal=decision.principal,
        decide_time=timestamp(decision.at),
    )


def serving_state_to_proto(state: ServingState) -> trainer_pb2.ServingState:
    out = trainer_pb2.ServingState(
        kind=KIND_TO_PROTO[state.kind],
        canary_share=state.canary_share,
        revision=state.revision,
    )
    if state.stable is not None:
        out.stable.CopyFrom(version_to_proto(state.stable))
    if state.canary is not None:
        out.canary.CopyFrom(version_to_proto(state.canary))
    return out


def serving_change_to_proto(change: ServingChange) -> trainer_pb2.ServingChange:
    return trainer_pb2.ServingChange(
        revision=change.revision,
        kind=KIND_TO_PROTO[change.kind],
        version=change.version,
        action=change.action,
        principal=change.principal,
        reason=change.reason,
        time=timestamp(change.at),
    )
