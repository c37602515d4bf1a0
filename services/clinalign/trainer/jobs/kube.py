"""The Kubernetes executor: one ``batch/v1`` Job per job on a GPU node pool, at most
``kubernetes_max_running_jobs`` at once, the rest waiting QUEUED.

The Job's pod runs the same worker as the local executor (``python -m
clinalign.trainer.jobs.worker <job-id>``, or ``torchrun``/``accelerate launch`` of it across the
pod's GPUs), which writes progress and the result to the trainer's database itself. The
executor only creates Jobs, follows them by polling their status and records the failures
the worker cannot: a Job that ended (failed, hit its deadline, was deleted) while its job
was still RUNNING. Jobs outlive a trainer restart; ``start()`` re-attaches to them.

``kubernetes`` is a blocking client, so every call goes through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from clinalign.common.config import CommonSettings
from clinalign.common.db import Database
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.jobs import store as jobs
from clinalign.trainer.jobs.executor import WORKER_MODULE, ExecutorBase

log = logging.getLogger("clinalign.trainer.jobs.kube")
KUBERNETES = "kubernetes"
NAME_PREFIX = "clinalign-job-"
JOB_ID_LABEL = "clinalign.io/job-id"
MANAGED_BY = "clinalign-trainer"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
TLS_DIR = "/etc/clinalign/tls"
# Files of a kubernetes.io/tls Secret with its CA (cert-manager's layout).
TLS_KEYS = {"tls_ca_file": "ca.crt", "tls_cert_file": "tls.crt", "tls_key_file": "tls.key"}
SERVICES = ("generation", "reward", "preference", "trainer", "monitor")
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Errors of a call that reached no answer (connection refused, timeout) or a refusal.
CLIENT_ERRORS = (ApiException, HTTPError, OSError)


def job_name(job_id: str) -> str:
    """The Job's name: DNS-1123 (lowercase alphanumerics and '-', at most 63), unique per
    job; an id that does not fit keeps a hash of itself."""
    safe = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-")
    safe = safe.removeprefix("job-")
    name = NAME_PREFIX + safe
    if len(name) <= 63 and safe == job_id.removeprefix("job-"):
        return name
    digest = hashlib.sha256(job_id.encode()).hexdigest()[:10]
    return f"{name[: 63 - 11].rstrip('-')}-{digest}"


def label_value(value: str) -> str:
    """A label value (at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63].strip("-_.")


def labels(job: jobs.Job) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "clinalign",
        "app.kubernetes.io/component": "trainer-job",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        JOB_ID_LABEL: label_value(job.id),
        "clinalign.io/job-kind": label_value(job.kind),
    }


def command(job_id: str, gpus: int, launcher: str) -> list[str]:
    """One process per GPU: torchrun or accelerate start them, and rank 0 writes the
    database; one GPU or none needs no launcher."""
    worker = ["-m", WORKER_MODULE, job_id]
    if gpus <= 1:
        return ["python", *worker]
    if launcher == "accelerate":
        return ["accelerate", "launch", "--multi_gpu", "--num_processes", str(gpus), *worker]
    return ["torchrun", "--standalone", "--nproc_per_node", str(gpus), *worker]


def environment(settings: TrainerSettings, common: CommonSettings) -> list[client.V1EnvVar]:
    """The variables the local executor passes, as the pod sees them; the database URL and
    the service token come from a Secret, never as literal values in the Job."""
    env = {
        "CLINALIGN_DATA_DIR": settings.kubernetes_data_dir,
        "CLINALIGN_LOG_LEVEL": common.log_level,
        "CLINALIGN_MAX_MESSAGE_MB": str(common.max_message_mb),
        "HOME": "/tmp",  # the root filesystem is read-only; caches go to the /tmp emptyDir
        "PYTHONUNBUFFERED": "1",
    }
    for service in SERVICES:
        env[f"CLINALIGN_{service.upper()}_TARGET"] = common.target(service)
    for name, key in TLS_KEYS.items():
        value = getattr(common, name)
        if value is not None:
            mounted = settings.kubernetes_tls_secret_name is not None
            env[f"CLINALIGN_{name.upper()}"] = f"{TLS_DIR}/{key}" if mounted else str(value)
    out = [client.V1EnvVar(name=k, value=v) for k, v in env.items()]
    secret = settings.kubernetes_secret_name
    if secret is not None:
        for var, key in (
            ("CLINALIGN_TRAINER_DATABASE_URL", settings.kubernetes_secret_database_url_key),
            ("CLINALIGN_SERVICE_TOKEN", settings.kubernetes_secret_service_token_key),
        ):
            ref = client.V1SecretKeySelector(name=secret, key=key, optional=False)
            out.append(
                client.V1EnvVar(name=var, value_from=client.V1EnvVarSource(secret_key_ref=ref))
            )
    return out


def _volumes(settings: TrainerSettings) -> tuple[list[client.V1Volume], list[client.V1VolumeMount]]:
    claim = settings.kubernetes_model_store_claim
    store = (
        client.V1Volume(
            name="model-store",
            persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=claim),
        )
        if claim is not None
        else client.V1Volume(name="model-store", empty_dir=client.V1EmptyDirVolumeSource())
    )
    volumes = [
        store,
        # NCCL and data loaders share memory through /dev/shm; a container's default is 64 MiB.
        client.V1Volume(
            name="dshm",
            empty_dir=client.V1EmptyDirVolumeSource(
                medium="Memory", size_limit=settings.kubernetes_shm_size
            ),
        ),
        client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource()),
    ]
    mounts = [
        client.V1VolumeMount(name="model-store", mount_path=settings.kubernetes_data_dir),
        client.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
        client.V1VolumeMount(name="tmp", mount_path="/tmp"),
    ]
    if settings.kubernetes_tls_secret_name is not None:
        volumes.append(
            client.V1Volume(
                name="tls",
                secret=client.V1SecretVolumeSource(secret_name=settings.kubernetes_tls_secret_name),
            )
        )
        mounts.append(client.V1VolumeMount(name="tls", mount_path=TLS_DIR, read_only=True))
    return volumes, mounts


def _resources(settings: TrainerSettings) -> client.V1ResourceRequirements:
    # No CPU limit (throttling slows data loading); memory limit = request, so a pod is not
    # killed for using what it asked for.
    requests = {"cpu": settings.kubernetes_cpu, "memory": settings.kubernetes_memory}
    limits = {"memory": settings.kubernetes_memory}
    if settings.kubernetes_gpus_per_job > 0:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(
            settings.kubernetes_gpus_per_job
        )
    return client.V1ResourceRequirements(requests=requests, limits=limits)


def build_job(job: jobs.Job, settings: TrainerSettings, common: CommonSettings) -> client.V1Job:
    """The batch/v1 Job that runs ``job``'s worker (pure: no API call)."""
    uid = settings.kubernetes_run_as_user
    volumes, mounts = _volumes(settings)
    container = client.V1Container(
        name="worker",
        image=settings.kubernetes_image,
        image_pull_policy=settings.kubernetes_image_pull_policy,
        command=command(job.id, settings.kubernetes_gpus_per_job, settings.kubernetes_launcher),
        env=environment(settings, common),
        resources=_resources(settings),
        volume_mounts=mounts,
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            privileged=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
    )
    pod = client.V1PodSpec(
        restart_policy="Never",
        service_account_name=settings.kubernetes_service_account,
        automount_service_account_token=False,  # the worker never calls the Kubernetes API
        # SIGTERM, then SIGKILL after the grace a cancelled local worker gets.
        termination_grace_period_seconds=int(settings.cancel_grace_s + 0.999),
        containers=[container],
        volumes=volumes,
        node_selector=dict(settings.kubernetes_node_selector) or None,
        tolerations=[client.V1Toleration(**t) for t in settings.kubernetes_tolerations] or None,
        security_context=client.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=uid,
            run_as_group=uid,
            fs_group=uid,
            fs_group_change_policy="OnRootMismatch",  # a large model store: no recursive chown
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(name=job_name(job.id), labels=labels(job)),
        spec=client.V1JobSpec(
            backoff_limit=0,  # a retry is a new job that resumes from the old one's checkpoint
            ttl_seconds_after_finished=settings.kubernetes_ttl_after_finished_s,
            active_deadline_seconds=settings.kubernetes_active_deadline_s,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels(job)), spec=pod
            ),
        ),
    )


def ended(k8s_job: client.V1Job) -> str | None:
    """Why a Job has ended (its Complete or Failed condition), or None while it runs."""
    status = k8s_job.status
    for cond in (status.conditions if status is not None else None) or []:
        if cond.status != "True" or cond.type not in ("Complete", "Failed"):
            continue
        detail = ": ".join(x for x in (cond.reason, cond.message) if x) or "no reason given"
        if cond.type == "Complete":
            return f"the Kubernetes Job completed without a result ({detail})"
        return f"the Kubernetes Job failed: {detail}"
    return None


def describe(exc: BaseException) -> str:
    """An error as one line: an API error's status, reason and the server's message; a
    model's refusal as ``Model: field: problem``."""
    if isinstance(exc, ValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        return f"{exc.title}: {problems}"
    if not isinstance(exc, ApiException):
        return f"{type(exc).__name__}: {exc}"
    message = ""
    try:
        message = str(json.loads(exc.body or "{}").get("message", ""))
    except (ValueError, AttributeError):
        message = str(exc.body or "")
    return " ".join(x for x in (f"{exc.status} {exc.reason or ''}".strip(), message) if x)


def load_api() -> client.BatchV1Api:
    """A client from the pod's ServiceAccount, else from the kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.BatchV1Api()


def default_namespace() -> str:
    try:
        return IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class KubernetesExecutor(ExecutorBase):
    name = KUBERNETES

    def __init__(
        self,
        db: Database,
        common: CommonSettings,
        settings: TrainerSettings,
        api: client.BatchV1Api | None = None,
    ) -> None:
        super().__init__(db, settings)
        self.common = common
        self.namespace = settings.kubernetes_namespace or ""
        self._api = api
        self._followed: set[str] = set()

    @property
    def limit(self) -> int:
        return self.settings.kubernetes_max_running_jobs

    @property
    def followed(self) -> frozenset[str]:
        """Ids of the jobs whose Kubernetes Job this executor follows."""
        return frozenset(self._followed)

    @property
    def api(self) -> client.BatchV1Api:
        if self._api is None:
            raise RuntimeError("the Kubernetes executor is not started")
        return self._api

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connects, re-attaches to the Jobs of RUNNING jobs an earlier trainer left and
        fails those whose Job is gone, then starts QUEUED jobs."""
        if self._api is None:
            self._api = await asyncio.to_thread(load_api)
        if not self.namespace:
            self.namespace = await asyncio.to_thread(default_namespace)
        running = await self.db.run_sync(lambda s: jobs.in_state(s, jobs.RUNNING, KUBERNETES))
        live: set[str] | None = None
        if running:
            try:
                found = await self._call(
                    self.api.list_namespaced_job, self.namespace, label_selector=SELECTOR
                )
                live = {(j.metadata.labels or {}).get(JOB_ID_LABEL, "") for j in found.items}
            except CLIENT_ERRORS as exc:  # each follower finds out for itself
                log.warning("cannot list Jobs", extra={"fields": {"error": describe(exc)}})
        for job in running:
            if live is None or label_value(job.id) in live:
                log.info("re-attached", extra={"fields": {"job_id": job.id}})
                self._follow(job.id)
            else:
                await self._fail_if_running(
                    job.id, "trainer restarted and the job's Kubernetes Job was gone"
                )
        await self.kick()

    # -- scheduling ------------------------------------------------------------------------

    async def _launch(self, job: jobs.Job) -> None:
        name = job_name(job.id)
        try:
            body = build_job(job, self.settings, self.common)
        except ValueError as exc:  # a setting the client's models refuse
            await self._fail_if_running(job.id, f"cannot build the Kubernetes Job: {describe(exc)}")
            return
        # RUNNING before the Job exists, so the worker finds its job RUNNING.
        await self.db.run_write(lambda s: jobs.transition(s, job.id, jobs.RUNNING))
        try:
            await self._call(self.api.create_namespaced_job, self.namespace, body)
        except CLIENT_ERRORS as exc:
            if not (isinstance(exc, ApiException) and exc.status == 409):
                await self._fail_if_running(
                    job.id, f"cannot create the Kubernetes Job {name}: {describe(exc)}"
                )
                return
            # The name is the job's own: a Job an earlier attempt (or trainer) created.
            log.info("Job existed", extra={"fields": {"job_id": job.id, "name": name}})
        else:
            log.info("created", extra={"fields": {"job_id": job.id, "name": name}})
        self._follow(job.id)
        state = await self.db.run_sync(lambda s: jobs.get(s, job.id).state)
        if state != jobs.RUNNING:  # cancelled while the Job was being created
            await self._delete(job.id)

    # -- following Jobs --------------------------------------------------------------------

    def _follow(self, job_id: str) -> None:
        self._followed.add(job_id)
        self._spawn_task(self._watch(job_id))

    async def _watch(self, job_id: str) -> None:
        """Polls the Job until its job has ended; records the ends the worker cannot.
        A plain read (not ``read_namespaced_job_status``) carries the status too and needs
        only ``get`` on ``jobs``, not on the ``jobs/status`` subresource."""
        name = job_name(job_id)
        try:
            while True:
                try:
                    k8s_job = await self._call(self.api.read_namespaced_job, name, self.namespace)
                    reason = ended(k8s_job)
                except CLIENT_ERRORS as exc:
                    if not (isinstance(exc, ApiException) and exc.status == 404):
                        log.warning(
                            "cannot read the Job",
                            extra={"fields": {"job_id": job_id, "error": describe(exc)}},
                        )
                        reason = None
                    else:
                        reason = f"the Kubernetes Job {name} is gone"
                # Read after the Job: a worker writes its result before its pod ends.
                state = await self.db.run_sync(lambda s: jobs.get(s, job_id).state)
                if state != jobs.RUNNING:
                    break
                if reason is not None:
                    await self._fail_if_running(job_id, reason)
                    break
                await asyncio.sleep(self.settings.kubernetes_poll_s)
        finally:
            self._followed.discard(job_id)
        await self.kick()

    async def _fail_if_running(self, job_id: str, reason: str) -> None:
        await super()._fail_if_running(job_id, reason)
        log.info("failed", extra={"fields": {"job_id": job_id, "reason": reason}})

    # -- cancellation ----------------------------------------------------------------------

    async def cancel(self, job_id: str) -> jobs.Job:
        """Marks the job CANCELLED (FAILED_PRECONDITION once it has ended), then deletes its
        Job; its pod gets SIGTERM and ``cancel_grace_s`` before SIGKILL."""
        job = await self.db.run_write(lambda s: jobs.transition(s, job_id, jobs.CANCELLED))
        if job.started_at is not None:
            await self._delete(job_id)
        await self.kick()
        return job

    async def _delete(self, job_id: str) -> None:
        name = job_name(job_id)
        try:
            # Foreground: the Job stays visible until its pod (and its GPUs) is gone.
            await self._call(
                self.api.delete_namespaced_job,
                name,
                self.namespace,
                grace_period_seconds=int(self.settings.cancel_grace_s + 0.999),
                propagation_policy="Foreground",
            )
        except CLIENT_ERRORS as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return
            # The job is CANCELLED either way: its worker stops at its next progress log.
            log.warning(
                "cannot delete the Job",
                extra={"fields": {"job_id": job_id, "name": name, "error": describe(exc)}},
            )
