"""The Kubernetes executor against the documented contract: a stand-in, not a cluster.

No cluster runs here. ``build_job``'s output is checked against the Kubernetes OpenAPI
schemas that ``kubernetes_validate`` ships (strict, the two newest minor versions), and
the executor runs on a real SQLite jobs store against a fake ``BatchV1Api`` that answers
as the API server documents: ``V1Job`` objects, 404 for a Job that is gone, 409 for a name
that exists, 403 for what RBAC forbids. What this cannot show (a pod scheduled on a GPU
node, NCCL across its GPUs, RBAC as a real API server enforces it) needs a cluster.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio
import kubernetes_validate
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.db import Database
from clinalign.common.errors import FailedPrecondition
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.jobs.executor import Executors
from clinalign.trainer.jobs.kube import KubernetesExecutor, build_job, job_name
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import MIGRATIONS as TRAINER_MIGRATIONS
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2 as tpb
from clinalign.trainer.v1 import trainer_pb2_grpc
from tests.conftest import client as grpc_client
from tests.conftest import serving

NAMESPACE = "clinalign-jobs"
DB_URL = "postgresql://trainer:s3cret-password@db:5432/trainer"
TOKEN = "svc-token-not-to-leak"
SERIALISE = client.ApiClient().sanitize_for_serialization


def _versions() -> list[str]:
    """The two newest minor versions the installed kubernetes_validate ships schemas for."""
    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    newest = sorted(shipped, key=lambda v: tuple(int(x) for x in v.split(".")))[-2:]
    assert kubernetes_validate.utils.latest_version().startswith(newest[-1] + ".")
    return newest


VERSIONS = _versions()


def _job(job_id: str = "job-0123456789abcdef", kind: str = "reward_model") -> jobs.Job:
    return jobs.Job(id=job_id, kind=kind, state=jobs.RUNNING, executor="kubernetes", spec={})


def _settings(**extra: Any) -> TrainerSettings:
    values: dict[str, Any] = {
        "kubernetes_enabled": True,
        "kubernetes_namespace": NAMESPACE,
        "kubernetes_image": "registry.example/clinalign/trainer:1.2.3",
        "kubernetes_service_account": "clinalign-job",
        "kubernetes_secret_name": "clinalign-trainer",
        "kubernetes_model_store_claim": "clinalign-model-store",
        "kubernetes_node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "watch_poll_s": 0.01,
        "kubernetes_poll_s": 0.01,
        "cancel_grace_s": 2.5,
        **extra,
    }
    return TrainerSettings(**values)


def _common(tmp_path: Path, **extra: Any) -> CommonSettings:
    return CommonSettings(
        data_dir=tmp_path / "data",
        service_token=TOKEN,
        reward_target="clinalign-reward:50052",
        **extra,
    )


def _valid(k8s_job: client.V1Job) -> dict[str, Any]:
    data: dict[str, Any] = SERIALISE(k8s_job)
    for version in VERSIONS:
        kubernetes_validate.validate(data, version, strict=True)
    return data


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# -- build_job --------------------------------------------------------------------------


def test_one_gpu_job_is_valid_and_complete(tmp_path: Path) -> None:
    data = _valid(build_job(_job(), _settings(), _common(tmp_path)))
    meta, spec = data["metadata"], data["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]

    assert (data["apiVersion"], data["kind"]) == ("batch/v1", "Job")
    assert meta["name"] == "clinalign-job-0123456789abcdef"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "clinalign",
        "app.kubernetes.io/component": "trainer-job",
        "app.kubernetes.io/managed-by": "clinalign-trainer",
        "clinalign.io/job-id": "job-0123456789abcdef",
        "clinalign.io/job-kind": "reward_model",
    }
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert spec["backoffLimit"] == 0
    assert spec["ttlSecondsAfterFinished"] == 86400
    assert "activeDeadlineSeconds" not in spec
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "clinalign-job"
    assert pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] == 3
    assert container["image"] == "registry.example/clinalign/trainer:1.2.3"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == [
        "python",
        "-m",
        "clinalign.trainer.jobs.worker",
        "job-0123456789abcdef",
    ]
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_secrets_and_not_literals_carry_the_database_url_and_token(tmp_path: Path) -> None:
    data = _valid(build_job(_job(), _settings(database_url=DB_URL), _common(tmp_path)))
    (container,) = data["spec"]["template"]["spec"]["containers"]
    env = _env(container)

    assert env["CLINALIGN_TRAINER_DATABASE_URL"] == {
        "secretKeyRef": {"name": "clinalign-trainer", "key": "database-url", "optional": False}
    }
    assert env["CLINALIGN_SERVICE_TOKEN"] == {
        "secretKeyRef": {"name": "clinalign-trainer", "key": "service-token", "optional": False}
    }
    text = json.dumps(data)
    assert DB_URL not in text and "s3cret" not in text and TOKEN not in text
    assert env["CLINALIGN_DATA_DIR"] == "/var/lib/clinalign"
    assert env["CLINALIGN_REWARD_TARGET"] == "clinalign-reward:50052"
    assert env["CLINALIGN_LOG_LEVEL"] == "INFO"
    assert env["CLINALIGN_MAX_MESSAGE_MB"] == "64"
    assert {f"CLINALIGN_{s}_TARGET" for s in ("GENERATION", "PREFERENCE", "MONITOR")} <= set(env)
    assert "CLINALIGN_TLS_CA_FILE" not in env


def test_without_secret_or_claim_the_pod_uses_the_store_on_its_volume(tmp_path: Path) -> None:
    settings = _settings(
        kubernetes_secret_name=None,
        kubernetes_model_store_claim=None,
        kubernetes_service_account=None,
        database_url=DB_URL,
    )
    data = _valid(build_job(_job(), settings, _common(tmp_path)))
    pod = data["spec"]["template"]["spec"]
    env = _env(pod["containers"][0])

    assert "CLINALIGN_TRAINER_DATABASE_URL" not in env and "CLINALIGN_SERVICE_TOKEN" not in env
    assert DB_URL not in json.dumps(data) and TOKEN not in json.dumps(data)
    store = next(v for v in pod["volumes"] if v["name"] == "model-store")
    assert store == {"name": "model-store", "emptyDir": {}}
    assert "serviceAccountName" not in pod


def test_volumes_and_security_context(tmp_path: Path) -> None:
    common = _common(tmp_path, tls_ca_file=tmp_path / "ca.pem")
    settings = _settings(kubernetes_tls_secret_name="clinalign-tls")
    data = _valid(build_job(_job(), settings, common))
    pod = data["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}

    assert volumes["model-store"]["persistentVolumeClaim"] == {"claimName": "clinalign-model-store"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert volumes["tmp"]["emptyDir"] == {}
    assert volumes["tls"]["secret"] == {"secretName": "clinalign-tls"}
    assert mounts == {
        "/var/lib/clinalign": "model-store",
        "/dev/shm": "dshm",
        "/tmp": "tmp",
        "/etc/clinalign/tls": "tls",
    }
    assert _env(container)["CLINALIGN_TLS_CA_FILE"] == "/etc/clinalign/tls/ca.crt"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@pytest.mark.parametrize(
    ("launcher", "expected"),
    [
        ("torchrun", ["torchrun", "--standalone", "--nproc_per_node", "4"]),
        ("accelerate", ["accelerate", "launch", "--multi_gpu", "--num_processes", "4"]),
    ],
)
def test_four_gpus_start_one_process_per_gpu(
    tmp_path: Path, launcher: str, expected: list[str]
) -> None:
    settings = _settings(
        kubernetes_gpus_per_job=4, kubernetes_launcher=launcher, kubernetes_active_deadline_s=7200
    )
    data = _valid(build_job(_job(kind="ppo"), settings, _common(tmp_path)))
    (container,) = data["spec"]["template"]["spec"]["containers"]

    assert container["command"] == [
        *expected,
        "-m",
        "clinalign.trainer.jobs.worker",
        "job-0123456789abcdef",
    ]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert data["spec"]["activeDeadlineSeconds"] == 7200
    assert data["metadata"]["labels"]["clinalign.io/job-kind"] == "ppo"


def test_cpu_job_asks_for_no_gpu_and_tolerates_what_it_is_told(tmp_path: Path) -> None:
    toleration = {"key": "pool", "operator": "Equal", "value": "cpu", "effect": "NoExecute"}
    settings = _settings(
        kubernetes_gpus_per_job=0,
        kubernetes_tolerations=[{**toleration, "tolerationSeconds": 30}],
        kubernetes_node_selector={},
        kubernetes_ttl_after_finished_s=None,
    )
    data = _valid(build_job(_job(), settings, _common(tmp_path)))
    pod = data["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert container["command"][:3] == ["python", "-m", "clinalign.trainer.jobs.worker"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert pod["tolerations"] == [{**toleration, "tolerationSeconds": 30}]
    assert "nodeSelector" not in pod
    assert "ttlSecondsAfterFinished" not in data["spec"]


def test_settings_read_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLINALIGN_TRAINER_KUBERNETES_NODE_SELECTOR", '{"pool": "h100"}')
    monkeypatch.setenv(
        "CLINALIGN_TRAINER_KUBERNETES_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]'
    )
    settings = TrainerSettings()
    assert settings.kubernetes_node_selector == {"pool": "h100"}
    assert settings.kubernetes_tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert not settings.kubernetes_on and TrainerSettings(executor="kubernetes").kubernetes_on
    with pytest.raises(ValueError, match=r"toleration 0: unknown fields \['tolerationSecs'\]"):
        TrainerSettings(kubernetes_tolerations=[{"key": "gpu", "tolerationSecs": 5}])


def test_job_names_are_dns_labels() -> None:
    assert job_name("job-0123456789abcdef") == "clinalign-job-0123456789abcdef"
    long = job_name("job-" + "A_b" * 40)
    assert len(long) <= 63 and long.startswith("clinalign-job-a-b")
    assert long != job_name("job-" + "A_b" * 41)
    for name in (long, job_name("weird--ID--")):
        assert name[-1].isalnum() and name == name.lower() and len(name) <= 63


# -- the executor against a fake BatchV1Api ---------------------------------------------


def _api_error(status: int, reason: str, message: str) -> ApiException:
    body = json.dumps({"kind": "Status", "status": "Failure", "message": message})
    return ApiException(status=status, reason=reason, body=body)


class FakeBatchApi:
    """The parts of ``BatchV1Api`` the executor calls, over a dict of Jobs by name."""

    def __init__(self) -> None:
        self.jobs: dict[str, client.V1Job] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.deletes: list[dict[str, Any]] = []
        self.create_error: ApiException | None = None

    def create_namespaced_job(self, namespace: str, body: client.V1Job) -> client.V1Job:
        name = body.metadata.name
        self.calls.append(("create", namespace, name))
        if self.create_error is not None:
            raise self.create_error
        if name in self.jobs:
            raise _api_error(409, "Conflict", f'jobs.batch "{name}" already exists')
        body.status = client.V1JobStatus(active=1)
        self.jobs[name] = body
        return body

    def read_namespaced_job(self, name: str, namespace: str) -> client.V1Job:
        self.calls.append(("read", namespace, name))
        if name not in self.jobs:
            raise _api_error(404, "Not Found", f'jobs.batch "{name}" not found')
        return self.jobs[name]

    def list_namespaced_job(self, namespace: str, label_selector: str = "") -> client.V1JobList:
        self.calls.append(("list", namespace, label_selector))
        key, value = label_selector.split("=")
        items = [j for j in self.jobs.values() if (j.metadata.labels or {}).get(key) == value]
        return client.V1JobList(items=items)

    def delete_namespaced_job(self, name: str, namespace: str, **options: Any) -> client.V1Status:
        self.calls.append(("delete", namespace, name))
        self.deletes.append(options)
        if self.jobs.pop(name, None) is None:
            raise _api_error(404, "Not Found", f'jobs.batch "{name}" not found')
        return client.V1Status(status="Success")

    def end(self, job_id: str, kind: str, reason: str, message: str) -> None:
        """What the Job controller does when the pod ends."""
        cond = client.V1JobCondition(type=kind, status="True", reason=reason, message=message)
        self.jobs[job_name(job_id)].status = client.V1JobStatus(conditions=[cond])

    def created(self) -> list[str]:
        return [name for op, _, name in self.calls if op == "create"]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'trainer.db'}", registry.Base, TRAINER_MIGRATIONS)
    database.create_schema()
    yield database
    database.dispose()


def _submit(db: Database, executor: str = "kubernetes") -> str:
    with db.sessions.begin() as session:
        spec = {"kind": "JOB_KIND_REWARD_MODEL", "snapshot_id": "s1"}
        job, _ = jobs.submit(session, "reward_model", executor, spec, {}, "")
        return job.id


async def _get(db: Database, job_id: str) -> jobs.Job:
    return await db.run_sync(lambda s: jobs.get(s, job_id))


async def _until(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    for _ in range(500):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def _executor(db: Database, tmp_path: Path, fake: FakeBatchApi, **extra: Any) -> KubernetesExecutor:
    api = cast(client.BatchV1Api, fake)
    return KubernetesExecutor(db, _common(tmp_path), _settings(**extra), api=api)


async def test_submitted_job_gets_a_job_and_fails_with_the_jobs_reason(
    db: Database, tmp_path: Path
) -> None:
    fake = FakeBatchApi()
    executor = _executor(db, tmp_path, fake)
    local_id = _submit(db, "local")
    job_id = _submit(db)
    await executor.start()
    try:
        running = await _get(db, job_id)
        assert running.state == jobs.RUNNING and running.started_at is not None
        assert fake.created() == [job_name(job_id)]
        assert fake.calls[0] == ("create", NAMESPACE, job_name(job_id))
        assert executor.followed == {job_id}
        assert (await _get(db, local_id)).state == jobs.QUEUED  # not this executor's

        reads = sum(c[0] == "read" for c in fake.calls)
        for _ in range(1000):  # until the executor has polled the running Job twice more
            if sum(c[0] == "read" for c in fake.calls) >= reads + 2:
                break
            await asyncio.sleep(0.005)
        assert sum(c[0] == "read" for c in fake.calls) >= reads + 2
        assert (await _get(db, job_id)).state == jobs.RUNNING  # polls changed nothing
        fake.end(job_id, "Failed", "DeadlineExceeded", "Job was active longer than specified")

        async def failed() -> bool:
            return (await _get(db, job_id)).state == jobs.FAILED

        await _until(failed, "the job FAILED")
        job = await _get(db, job_id)
        assert job.failure_reason == (
            "the Kubernetes Job failed: DeadlineExceeded: Job was active longer than specified"
        )
        await _until(lambda: not executor.followed, "no longer followed")
    finally:
        await executor.stop()


async def test_a_result_the_worker_wrote_stands_when_the_job_completes(
    db: Database, tmp_path: Path
) -> None:
    fake = FakeBatchApi()
    executor = _executor(db, tmp_path, fake)
    ok_id, silent_id = _submit(db), _submit(db)
    await executor.start()
    try:
        await db.run_write(lambda s: jobs.transition(s, ok_id, jobs.SUCCEEDED))
        fake.end(ok_id, "Complete", "CompletionsReached", "Reached expected number of succeeded")
        fake.end(silent_id, "Complete", "CompletionsReached", "")
        await _until(lambda: not executor.followed, "both Jobs seen ending")
        assert (await _get(db, ok_id)).state == jobs.SUCCEEDED
        silent = await _get(db, silent_id)
        assert silent.state == jobs.FAILED
        assert silent.failure_reason == (
            "the Kubernetes Job completed without a result (CompletionsReached)"
        )
    finally:
        await executor.stop()


async def test_forbidden_creation_fails_the_job_and_leaves_nothing(
    db: Database, tmp_path: Path
) -> None:
    fake = FakeBatchApi()
    message = (
        'jobs.batch is forbidden: User "system:serviceaccount:clinalign:trainer" cannot '
        f'create resource "jobs" in API group "batch" in the namespace "{NAMESPACE}"'
    )
    fake.create_error = _api_error(403, "Forbidden", message)
    executor = _executor(db, tmp_path, fake)
    first, second = _submit(db), _submit(db)
    await executor.start()
    try:
        for job_id in (first, second):  # each is tried, each fails, none stays RUNNING
            job = await _get(db, job_id)
            assert job.state == jobs.FAILED
            assert job.failure_reason == (
                f"cannot create the Kubernetes Job {job_name(job_id)}: 403 Forbidden {message}"
            )
        assert fake.jobs == {} and not executor.followed
        assert [op for op, _, _ in fake.calls] == ["create", "create"]

        fake.create_error = None  # RBAC fixed: the next job runs
        third = _submit(db)
        await executor.kick()
        assert (await _get(db, third)).state == jobs.RUNNING
    finally:
        await executor.stop()


async def test_a_job_the_client_cannot_build_fails_before_it_runs(
    db: Database, tmp_path: Path
) -> None:
    fake = FakeBatchApi()
    bad = [{"key": "nvidia.com/gpu", "operator": "Exists", "tolerationSeconds": "soon"}]
    executor = _executor(db, tmp_path, fake, kubernetes_tolerations=bad)
    job_id = _submit(db)
    await executor.start()
    job = await _get(db, job_id)
    assert job.state == jobs.FAILED and job.started_at is None
    assert job.failure_reason == (
        "cannot build the Kubernetes Job: V1Toleration: tolerationSeconds: Input should be a "
        "valid integer"
    )
    assert fake.calls == [] and not executor.followed


async def test_concurrency_is_bounded_and_cancel_deletes_the_job(
    db: Database, tmp_path: Path
) -> None:
    fake = FakeBatchApi()
    executor = _executor(db, tmp_path, fake, kubernetes_max_running_jobs=1)
    first, second, third = _submit(db), _submit(db), _submit(db)
    await executor.start()
    try:
        assert fake.created() == [job_name(first)]
        assert (await _get(db, second)).state == jobs.QUEUED

        queued = await executor.cancel(third)
        assert queued.state == jobs.CANCELLED and queued.started_at is None
        assert "delete" not in [op for op, _, _ in fake.calls]  # it never had a Job

        cancelled = await executor.cancel(first)
        assert cancelled.state == jobs.CANCELLED
        assert ("delete", NAMESPACE, job_name(first)) in fake.calls
        assert fake.deletes == [{"grace_period_seconds": 3, "propagation_policy": "Foreground"}]
        assert job_name(first) not in fake.jobs
        # Its slot went to the next job.
        assert (await _get(db, second)).state == jobs.RUNNING
        assert fake.created() == [job_name(first), job_name(second)]
        with pytest.raises(FailedPrecondition, match="is cancelled; it cannot become cancelled"):
            await executor.cancel(first)
        await _until(lambda: executor.followed == {second}, "follows second")
        assert (await _get(db, first)).state == jobs.CANCELLED  # not overwritten as gone
    finally:
        await executor.stop()


async def test_restart_reattaches_to_live_jobs_and_fails_vanished_ones(
    db: Database, tmp_path: Path
) -> None:
    fake = FakeBatchApi()
    before = _executor(db, tmp_path, fake)
    live, vanished = _submit(db), _submit(db)
    await before.start()
    await before.stop()  # the trainer goes; its Jobs stay
    del fake.jobs[job_name(vanished)]  # deleted by hand while no trainer watched
    fake.calls.clear()

    after = _executor(db, tmp_path, fake)
    await after.start()
    try:
        assert (await _get(db, live)).state == jobs.RUNNING
        gone = await _get(db, vanished)
        assert gone.state == jobs.FAILED
        assert gone.failure_reason == "trainer restarted and the job's Kubernetes Job was gone"
        assert after.followed == {live}
        assert fake.calls[0] == (
            "list",
            NAMESPACE,
            "app.kubernetes.io/managed-by=clinalign-trainer",
        )
        assert fake.created() == []

        del fake.jobs[job_name(live)]  # now it vanishes while followed

        async def failed() -> bool:
            return (await _get(db, live)).state == jobs.FAILED

        await _until(failed, "the vanished Job's job FAILED")
        assert (await _get(db, live)).failure_reason == (
            f"the Kubernetes Job {job_name(live)} is gone"
        )
    finally:
        await after.stop()


async def test_an_existing_job_on_create_counts_as_created(db: Database, tmp_path: Path) -> None:
    fake = FakeBatchApi()
    job_id = _submit(db)
    # A Job of that name exists already, as when a trainer stopped right after creating it.
    row = await _get(db, job_id)
    fake.jobs[job_name(job_id)] = build_job(row, _settings(), _common(tmp_path))
    fake.jobs[job_name(job_id)].status = client.V1JobStatus(active=1)
    executor = _executor(db, tmp_path, fake)
    await executor.start()
    try:
        assert fake.created() == [job_name(job_id)]
        assert (await _get(db, job_id)).state == jobs.RUNNING
        assert executor.followed == {job_id}
        fake.end(job_id, "Failed", "BackoffLimitExceeded", "Job has reached the backoff limit")

        async def failed() -> bool:
            return (await _get(db, job_id)).state == jobs.FAILED

        await _until(failed, "the existing Job followed to its end")
    finally:
        await executor.stop()


async def test_executors_route_cancel_by_the_jobs_executor(db: Database, tmp_path: Path) -> None:
    fake = FakeBatchApi()
    kube = _executor(db, tmp_path, fake)
    await kube.start()
    job_id = _submit(db)
    routed = Executors(db, {"kubernetes": kube})
    await routed.kick()
    assert routed.runs("kubernetes") and not routed.runs("local")
    assert routed.followed == {job_id}
    assert (await routed.cancel(job_id)).state == jobs.CANCELLED
    assert ("delete", NAMESPACE, job_name(job_id)) in fake.calls
    await routed.stop()
    # A job of an executor this trainer no longer runs can still be cancelled.
    orphan = _submit(db, "kubernetes")
    assert (await Executors(db, {}).cancel(orphan)).state == jobs.CANCELLED


# -- through the servicer ---------------------------------------------------------------

Token = Callable[[Role], str]
KUBE_SPEC = tpb.JobSpec(kind=tpb.JOB_KIND_REWARD_MODEL, executor=tpb.EXECUTOR_KIND_KUBERNETES)


async def test_kubernetes_without_configuration_is_a_failed_precondition(
    common: CommonSettings, token: Token
) -> None:
    trainer = TrainerApp(common, TrainerSettings(port=0))
    async with serving(trainer, common) as running:
        async with grpc_client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.SubmitJob(tpb.SubmitJobRequest(spec=KUBE_SPEC))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (info.value.details() or "").startswith(
        "spec.executor: the kubernetes executor is not available yet on this trainer: set "
        "CLINALIGN_TRAINER_KUBERNETES_ENABLED=true"
    )


async def test_a_configured_trainer_routes_jobs_to_their_executor(
    common: CommonSettings, token: Token, tmp_path: Path
) -> None:
    model_dir = tmp_path / "model"  # the spec check looks for a config.json only
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    fake = FakeBatchApi()
    settings = TrainerSettings(
        port=0,
        kubernetes_enabled=True,
        kubernetes_namespace=NAMESPACE,
        watch_poll_s=0.01,
        kubernetes_poll_s=0.01,
    )
    trainer = TrainerApp(common, settings)
    kube = trainer.executor.by_name["kubernetes"]
    assert isinstance(kube, KubernetesExecutor)
    kube._api = cast(client.BatchV1Api, fake)
    async with serving(trainer, common) as running:
        async with grpc_client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            # The reward spec check reads the snapshot id and base model only.
            spec = tpb.JobSpec()
            spec.CopyFrom(KUBE_SPEC)
            spec.snapshot_id, spec.base_model = "snap-1", str(model_dir)
            submitted = (await stub.SubmitJob(tpb.SubmitJobRequest(spec=spec))).job
            cancelled = (await stub.CancelJob(tpb.CancelJobRequest(id=submitted.id))).job
    assert submitted.executor == tpb.EXECUTOR_KIND_KUBERNETES
    assert submitted.state == tpb.JOB_STATE_RUNNING
    assert fake.created() == [job_name(submitted.id)]
    assert cancelled.state == tpb.JOB_STATE_CANCELLED
    assert ("delete", NAMESPACE, job_name(submitted.id)) in fake.calls
