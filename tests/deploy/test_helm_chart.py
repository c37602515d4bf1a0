"""The Helm chart (helm/clinalign), rendered offline with the real Helm engine for the value
combinations in tests.helm_support.COMBOS: Kubernetes schemas (strict, the two newest minor
versions kubernetes-validate ships), lint, values schema, security, network topology against
the calls the code makes, GPU scheduling, autoscaling, monitoring assets, TLS and storage; and
the clinician console and the CDS Hooks gateway (HTTP front doors beside the five services) in
combinations of their own."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.fernet import Fernet
from helm_python.chart import lint
from helm_python.errors import HelmError

from clinalign.cdshooks.config import CdsHooksSettings
from clinalign.common.config import CommonSettings
from clinalign.console.config import ConsoleSettings
from tests.helm_support import (
    CHART,
    COMBOS,
    CRD_KINDS,
    FULLNAME,
    NAMESPACE,
    ROOT,
    SERVICES,
    chart,
    component,
    env_of,
    main_container,
    named,
    notes,
    of_kind,
    pod_labels,
    pod_spec,
    render,
    render_raw,
    selects,
    strip,
    workloads,
)

KUBE_VERSIONS = ("1.36.0", "1.37.0")
# The front doors' own combinations, beside tests.helm_support.COMBOS (which other suites share).
CONSOLE_COMBOS: dict[str, dict[str, Any]] = {
    "console-ingress": {
        "oidc": {"issuer": "https://idp.example.org/realms/hospital", "audience": "clinalign"},
        "console": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"},
                "hosts": ["console.example.org", "clinalign.example.org"],
                "tls": {"secretName": "console-example-org"},
            }
        },
    },
    "console-existing-secrets": {
        "auth": {"existingSecret": "clinalign-tokens"},
        "tls": {"existingSecret": "clinalign-tls"},
        "console": {
            "publicUrl": "https://console.hospital.example/clinalign",
            "oidc": {"clientId": "ca-console", "existingSecret": "clinalign-console-oidc"},
            "session": {"existingSecret": "clinalign-console-session"},
        },
    },
    "console-disabled": {"console": {"enabled": False}},
    # The CDS Hooks gateway (off by default), with cert-manager and ServiceMonitors to check
    # that both name it.
    "cds-hooks": {
        "cdsHooks": {
            "enabled": True,
            "signingKey": {"existingSecret": "clinalign-cds-hooks-signing"},
            "trustedIssuers": {"https://ehr.example.org": "https://ehr.example.org/jwks.json"},
            "allowedOrigins": ["https://ehr.example.org"],
            "settings": {"MAX_NEW_TOKENS": "512"},
            "ingress": {"enabled": True, "className": "nginx", "hosts": ["cds.example.org"]},
            "smartClients": {
                "https://ehr.example.org/fhir": {
                    "issuer": "https://ehr.example.org",
                    "client_id": "clinalign",
                }
            },
            "smartKey": {"existingSecret": "clinalign-cds-hooks-smart"},
        },
        "tls": {"certManager": {"enabled": True, "issuerRef": {"name": "ca"}}},
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {"ehr": {"cidrs": ["10.30.0.0/16"]}},
    },
}
ALL = sorted(COMBOS)
EVERY = ALL + sorted(CONSOLE_COMBOS)
# Combinations with the Kubernetes executor (it needs PostgreSQL; the default is local).
KUBE_EXECUTOR = {
    c for c, v in COMBOS.items() if v.get("trainer", {}).get("executor") == "kubernetes"
}
GPU = "nvidia.com/gpu"


def _full_name(service: str) -> str:
    return f"clinalign.{service}.v1.{service.title()}Service"


def _parse(raw: dict[str, str]) -> list[dict[str, Any]]:
    """The objects of a rendering, as tests.helm_support.render gives them."""
    docs = []
    for path, text in sorted(raw.items()):
        if path.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("metadata", {}).setdefault("annotations", {})
                    docs.append(doc | {"_template": path})
    return docs


@functools.cache
def _console_combo(combo: str) -> str:
    return json.dumps(_parse(render_raw(CONSOLE_COMBOS[combo])))


def docs_of(combo: str) -> list[dict[str, Any]]:
    """The objects of a combination of COMBOS or CONSOLE_COMBOS (fresh copies)."""
    return render(combo) if combo in COMBOS else json.loads(_console_combo(combo))


# -- lint, metadata, values schema ----------------------------------------------------------


def test_lint_is_clean() -> None:
    for kube in (None, "v1.36.0", "v1.37.0"):
        report = lint(CHART, strict=True, kube_version=kube)
        assert report["errors"] == [], report
        assert report["messages"] == [], report  # not even the icon INFO: Chart.yaml has one


def test_chart_metadata_follows_the_project() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M)
    assert version is not None
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == version.group(1)
    assert meta["kubeVersion"].startswith(">=")
    assert meta["icon"]


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        assert sub.get("description"), f"{path} has no description in values.schema.json"
        assert "type" in sub, f"{path} has no type in values.schema.json"
        if sub.get("type") == "object" and "properties" in sub:
            assert sub.get("additionalProperties") is False, f"{path} accepts unknown keys"
            paths |= _schema_paths(sub, path)
    return paths


def _value_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.add(path)
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in sub:
            paths |= _value_paths(value, sub, path)
    return paths


def test_schema_covers_every_value_and_every_value_is_commented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert _value_paths(values, schema) == _schema_paths(schema)
    # Every value's key line in values.yaml follows its comment.
    commented = set()
    stack: list[tuple[int, str]] = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        path = ".".join(key for _, key in stack)
        if lines[i - 1].lstrip().startswith("#"):
            commented.add(path)
    # requests/limits are described in their resources value's comment.
    documented = {p for p in _schema_paths(schema) if not re.search(r"resources\.\w+$", p)}
    assert documented <= commented


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"generation": {"replicaz": 2}}, "replicaz"),  # a typo'd key
        ({"reward": {"replicas": "two"}}, "replicas"),  # a wrong type
        ({"generation": {"backend": {"mode": "triton"}}}, "mode"),  # not in the enum
        ({"gpu": {"enabled": "yes"}}, "enabled"),
        ({"trainer": {"jobs": {"gpusPerJob": -1}}}, "gpusPerJob"),  # below the minimum
        ({"config": {"logLevel": "TRACE"}}, "logLevel"),
        ({"generation": {"image": {"digest": "latest"}}}, "digest"),
        ({"console": {"replicas": "two"}}, "replicas"),
        ({"console": {"ingress": {"hosts": ["https://console.example.org"]}}}, "hosts"),
        ({"console": {"publicUrl": "console.example.org"}}, "publicUrl"),
        ({"console": {"session": {"key": "abc"}}}, "key"),  # secrets only from Secrets
        ({"cdsHooks": {"signingKey": {"privateJwk": "{}"}}}, "privateJwk"),
        ({"cdsHooks": {"trustedIssuers": {"https://ehr": "http://ehr/jwks"}}}, "trustedIssuers"),
        (
            {"cdsHooks": {"smartClients": {"http://ehr/fhir": {"issuer": "i", "client_id": "c"}}}},
            "smartClients",
        ),
        ({"cdsHooks": {"smartClients": {"https://ehr/fhir": {"issuer": "i"}}}}, "client_id"),
        ({"cdsHooks": {"smartClients": {"https://ehr/fhir": {"client_id": "c"}}}}, "issuer"),
    ],
)
def test_schema_rejects_bad_values_naming_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(HelmError, match=field):
        chart().validate_schema(values)
    with pytest.raises(HelmError, match=field):
        render_raw(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "database": {"external": {"existingSecret": "db"}},
                "trainer": {"executor": "kubernetes"},
            },
            "trainer.jobs.existingSecret is required",
        ),
        (
            {"trainer": {"executor": "kubernetes"}},
            "trainer.executor=kubernetes needs PostgreSQL (database.external.existingSecret or "
            "postgresql.enabled)",
        ),
        ({"keda": {"enabled": True}}, "keda.prometheusServerAddress is required"),
        ({"oidc": {"issuer": "https://idp.example.org"}}, "oidc.audience is required"),
        ({"preference": {"replicas": 2}}, "preference.replicas must be 1: its SQLite store"),
        ({"trainer": {"replicas": 2}}, "trainer.replicas must be 1"),
        ({"generation": {"backend": {"mode": "external"}}}, "backend.external.url is required"),
        (
            {"console": {"ingress": {"enabled": True}}},
            "console.ingress.hosts needs at least one host",
        ),
        (
            {"cdsHooks": {"enabled": True}},
            "cdsHooks.enabled needs cdsHooks.signingKey.existingSecret",
        ),
        (
            {
                "cdsHooks": {
                    "enabled": True,
                    "signingKey": {"existingSecret": "k"},
                    "ingress": {"enabled": True},
                }
            },
            "cdsHooks.ingress.hosts needs at least one host",
        ),
        (
            {
                "cdsHooks": {
                    "enabled": True,
                    "signingKey": {"existingSecret": "k"},
                    "smartClients": {"https://ehr/fhir": {"issuer": "i", "client_id": "c"}},
                }
            },
            "cdsHooks.smartClients needs cdsHooks.smartKey.existingSecret",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_reason(values: dict[str, Any], message: str) -> None:
    with pytest.raises(HelmError, match=re.escape(message)):
        render_raw(values)


# -- Kubernetes schemas ---------------------------------------------------------------------


@pytest.mark.parametrize("combo", EVERY)
def test_built_in_objects_validate_strictly(combo: str) -> None:
    docs = docs_of(combo)
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip(doc), version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{doc['kind']}/{doc['metadata']['name']} ({doc['_template']})"
                pytest.fail(f"{name} invalid for {version}: {exc.message} at {list(exc.path)}")


def test_custom_resources_have_their_essential_structure() -> None:
    docs = render("observability") + render("keda") + render("tls-cert-manager")
    monitors = of_kind(docs, "ServiceMonitor")
    assert len(monitors) == len(SERVICES) + 1  # and the console's
    services = {s["metadata"]["name"]: s for s in of_kind(render("observability"), "Service")}
    for sm in monitors:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        (endpoint,) = sm["spec"]["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        target = services[sm["metadata"]["name"]]
        assert sm["spec"]["selector"]["matchLabels"].items() <= target["metadata"]["labels"].items()
        assert "metrics" in {p["name"] for p in target["spec"]["ports"]}
    (rule,) = of_kind(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] and all(g["rules"] for g in rule["spec"]["groups"])
    scaled = of_kind(docs, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {
        f"{FULLNAME}-generation",
        f"{FULLNAME}-reward",
    }
    for so in scaled:
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        assert set(trigger["metadata"]) >= {"serverAddress", "query", "threshold"}
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    (cert,) = of_kind(docs, "Certificate")
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["secretName"] == f"{FULLNAME}-tls"
    assert cert["spec"]["issuerRef"] == {"name": "ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert {"server auth", "client auth"} <= set(cert["spec"]["usages"])


# -- security -------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", EVERY)
def test_every_workload_is_locked_down(combo: str) -> None:
    docs = docs_of(combo)
    seen = set()
    for workload in workloads(docs):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        seen.add(workload["kind"])
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        assert psc["runAsUser"] == psc["runAsGroup"] == psc["fsGroup"] == 10001, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        kube_api = name == f"{FULLNAME}-trainer" and combo in KUBE_EXECUTOR
        assert spec["automountServiceAccountToken"] is kube_api, name
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc.get("privileged") is not True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{name}: /tmp must be writable (read-only root)"
    assert "Pod" in seen  # the helm test hook
    if combo == "postgresql":
        assert "StatefulSet" in seen
    for sa in of_kind(docs, "ServiceAccount"):
        kube_api = sa["metadata"]["name"] == f"{FULLNAME}-trainer" and combo in KUBE_EXECUTOR
        assert sa["automountServiceAccountToken"] is kube_api, sa["metadata"]["name"]


def test_each_service_has_its_own_service_account() -> None:
    docs = render("default")
    for service in (*SERVICES, "console"):
        spec = pod_spec(component(docs, "Deployment", service))
        assert spec["serviceAccountName"] == f"{FULLNAME}-{service}"
        component(docs, "ServiceAccount", service)


_TOKENISH = re.compile(r"\b[A-Za-z0-9_\-]{32,}\b")


@pytest.mark.parametrize("combo", ["default", "postgresql"])
def test_no_secret_values_outside_secrets(combo: str) -> None:
    docs = render(combo)
    secrets = of_kind(docs, "Secret")
    assert secrets and all("stringData" not in s for s in secrets)
    values = set()
    for secret in secrets:
        for raw in secret["data"].values():
            text = base64.b64decode(raw).decode()
            values.add(text)
            if text.startswith("{"):
                parsed = json.loads(text)
                values |= {t.get("token") or t["sha256"] for t in parsed.get("tokens", [])}
                values |= set(parsed.get("keys", {}).values())  # the audit keys
    assert any(len(v) >= 32 for v in values)
    for doc in docs:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(strip(doc))
        for value in values:
            assert value not in text, f"a Secret value leaks into {doc['kind']}"
    for workload in workloads(docs):
        for container in pod_spec(workload)["containers"]:
            for name, value in env_of(container).items():
                if isinstance(value, str) and not name.endswith("_TARGET"):  # service names
                    assert not _TOKENISH.search(value), f"{name} looks like a credential"
                    assert "@" not in value or not value.startswith("postgres"), name
    for cm in of_kind(docs, "ConfigMap"):
        for key, text in cm["data"].items():
            assert "Bearer " not in text and "password" not in text.lower(), key


def test_generated_tokens_every_role_and_one_credential_per_service() -> None:
    secret = named(render("default"), "Secret", f"{FULLNAME}-credentials")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    tokens = json.loads(data["tokens.json"])["tokens"]
    assert {t["role"] for t in tokens} == {
        "service",
        "ehr-client",
        "clinician",
        "clinical-lead",
        "ml-engineer",
        "admin",
    }
    services = {t["principal"]: t["token"] for t in tokens if t["role"] == "service"}
    assert set(services) == {f"svc-{s}" for s in (*SERVICES, "trainer-job", "console")}
    for principal, token in services.items():
        assert data[f"token-{principal.removeprefix('svc-')}"] == token
    # The verification file: every principal's digest, no token.
    verify = json.loads(data["verify.json"])["tokens"]
    assert {(e["principal"], e["sha256"]) for e in verify} == {
        (t["principal"], hashlib.sha256(t["token"].encode()).hexdigest()) for t in tokens
    }
    assert not any(t["token"] in data["verify.json"] for t in tokens)
    (smoke,) = json.loads(data["smoke-tokens.json"])["tokens"]
    assert smoke["role"] == "ehr-client"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Re-used from the cluster on upgrade (lookup), generated only on first install.
    source = (CHART / "templates/secrets.yaml").read_text()
    assert "lookup" in source and "randAlphaNum" in source


@pytest.mark.parametrize(
    "combo", ["default", "dev-cpu-jobs", "tls-secret", "console-existing-secrets", "cds-hooks"]
)
def test_each_pod_mounts_only_its_own_credential(combo: str) -> None:
    """No pod holds a person's token (admin, ml-engineer, clinician) nor another service's:
    it mounts the verification file and reads its own token. The console verifies no bearer
    token, so it mounts no auth file at all."""
    docs = docs_of(combo)
    for workload in workloads(docs):
        spec = pod_spec(workload)
        for volume in spec.get("volumes", []):
            items = volume.get("secret", {}).get("items", [])
            keys = {i["key"] for i in items}
            assert "tokens.json" not in keys, f"{workload['metadata']['name']} mounts every token"
        for container in spec["containers"]:
            refs = [
                e["valueFrom"]["secretKeyRef"]["key"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            tokens = [r for r in refs if r.startswith("token-")]
            component = workload["metadata"]["labels"]["app.kubernetes.io/component"]
            assert tokens in ([], [f"token-{component}"]), (component, tokens)
    for service in (*SERVICES, "console"):
        env = main_container(docs, service)["env"]
        (ref,) = [e for e in env if e["name"] == "CLINALIGN_SERVICE_TOKEN"]
        assert ref["valueFrom"]["secretKeyRef"]["key"] == f"token-{service}"
    console = pod_spec(named(docs, "Deployment", f"{FULLNAME}-console"))
    secrets = {v["name"]: v["secret"]["secretName"] for v in console["volumes"] if "secret" in v}
    assert "auth" not in secrets
    assert "CLINALIGN_TOKENS_FILE" not in env_of(main_container(docs, "console"))
    (smoke,) = of_kind(docs, "Pod")
    (auth,) = [v for v in smoke["spec"]["volumes"] if v["name"] == "auth"]
    assert [i["key"] for i in auth["secret"]["items"]] == ["smoke-tokens.json"]


def test_existing_secrets_replace_generated_ones() -> None:
    docs = render("external-db")
    # All but the console's session key, which console.session.existingSecret replaces.
    assert [s["metadata"]["name"] for s in of_kind(docs, "Secret")] == [
        f"{FULLNAME}-console-session"
    ]
    assert of_kind(docs_of("console-existing-secrets"), "Secret") == []
    env = env_of(main_container(docs, "preference"))
    assert env["CLINALIGN_SERVICE_TOKEN"]["secretKeyRef"]["name"] == "clinalign-tokens"
    assert env["CLINALIGN_PREFERENCE_DATABASE_URL"]["secretKeyRef"] == {
        "name": "clinalign-db",
        "key": "preference-database-url",
    }
    trainer = env_of(main_container(docs, "trainer"))
    assert trainer["CLINALIGN_TRAINER_KUBERNETES_SECRET_NAME"] == "clinalign-trainer-job"


def _kube_executor_verbs() -> set[str]:
    """The verbs the trainer's Kubernetes executor needs, read from its API calls."""
    source = (ROOT / "services/clinalign/trainer/jobs/kube.py").read_text()
    calls = set(re.findall(r"self\.api\.(\w+)", source))
    verb = {"create": "create", "read": "get", "list": "list", "delete": "delete", "patch": "patch"}
    verbs = set()
    for call in calls:
        action, _, resource = call.partition("_namespaced_")
        assert resource == "job", f"the executor calls {call}: the Role must cover it"
        verbs.add(verb[action])
    return verbs


def test_trainer_role_grants_exactly_what_the_executor_calls() -> None:
    docs = render("postgresql")
    (role,) = of_kind(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["create", "get", "list", "delete"],
        }
    ]
    assert set(role["rules"][0]["verbs"]) == _kube_executor_verbs()
    (binding,) = of_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-trainer", "namespace": NAMESPACE}
    ]
    assert of_kind(render("local-executor"), "Role") == []
    assert of_kind(render("default"), "Role") == []  # the default runs jobs in the trainer


def test_trainer_job_settings_match_the_chart() -> None:
    docs = render("postgresql")
    env = env_of(main_container(docs, "trainer"))
    assert env["CLINALIGN_TRAINER_EXECUTOR"] == "kubernetes"
    assert env["CLINALIGN_TRAINER_KUBERNETES_NAMESPACE"] == NAMESPACE
    assert env["CLINALIGN_TRAINER_KUBERNETES_MODEL_STORE_CLAIM"] == f"{FULLNAME}-data"
    assert env["CLINALIGN_TRAINER_KUBERNETES_DATA_DIR"] == env["CLINALIGN_DATA_DIR"]
    job_sa = component(docs, "ServiceAccount", "trainer-job")
    assert env["CLINALIGN_TRAINER_KUBERNETES_SERVICE_ACCOUNT"] == job_sa["metadata"]["name"]
    assert job_sa["automountServiceAccountToken"] is False
    secret = named(docs, "Secret", f"{FULLNAME}-credentials")
    assert env["CLINALIGN_TRAINER_KUBERNETES_SECRET_NAME"] == secret["metadata"]["name"]
    for key in ("DATABASE_URL", "SERVICE_TOKEN"):
        assert env[f"CLINALIGN_TRAINER_KUBERNETES_SECRET_{key}_KEY"] in secret["data"]
    # The executor copies the trainer's peer targets into the job pods.
    for service in SERVICES:
        port = main_container(docs, service)["ports"][0]["containerPort"]
        assert env[f"CLINALIGN_{service.upper()}_TARGET"] == _target(service, port)


# -- network topology -----------------------------------------------------------------------

# Who calls whom, from the code (each service reaches its peers through common.channels.Clients):
# generation/server.py (clients.monitor RecordOutputs, resolve_version on the trainer),
# reward/server.py (resolve_version), trainer/jobs/worker.py (clients.preference) and
# trainer/jobs/ppo_job.py (clients.reward, local jobs and job pods alike), trainer/server.py
# (clients.monitor: the gate replays confirmed flags), the monitor's peers (preference,
# trainer, reward, generation); the console's pages (console.backend.call(session, "<peer>",
# ...): labelling on preference, outputs and flags on monitor, the serving state on trainer).
CALLS = {
    ("generation", "monitor"),
    ("generation", "trainer"),
    ("reward", "trainer"),
    ("trainer", "preference"),
    ("trainer", "reward"),
    ("trainer", "monitor"),
    ("trainer-job", "preference"),
    ("trainer-job", "reward"),
    ("monitor", "preference"),
    ("monitor", "trainer"),
    ("monitor", "reward"),
    ("monitor", "generation"),
    ("smoke-test", "generation"),
    ("console", "preference"),
    ("console", "monitor"),
    ("console", "trainer"),
    ("cds-hooks", "generation"),
    ("cds-hooks", "monitor"),
    ("cds-hooks", "trainer"),
}


def test_the_call_table_matches_the_code() -> None:
    found = set()
    pattern = re.compile(
        r"\b(generation|reward|preference|trainer|monitor)_target\b"
        r"|(?:peers|clients)\.(generation|reward|preference|trainer|monitor)\b"
        r"|\b(resolve_version)\b"  # common.registry_client: the trainer's registry
    )
    for service in SERVICES:
        for path in (ROOT / "services/clinalign" / service).rglob("*.py"):
            for match in pattern.finditer(path.read_text()):
                peer = match.group(1) or match.group(2) or (match.group(3) and "trainer")
                if peer != service:
                    found.add((service, peer))
    # The console names its peer in each Backend.call; every call must, to be counted.
    console_call = re.compile(r"\bcall\(\s*session\b")
    console_peer = re.compile(r'\bcall\(\s*session\s*,\s*"(\w+)"')
    for path in (ROOT / "services/clinalign/console").rglob("*.py"):
        text = path.read_text()
        peers = console_peer.findall(text)
        assert len(peers) == len(console_call.findall(text)), f"{path.name}: a peer not named"
        found |= {("console", peer) for peer in peers}
    # The CDS Hooks gateway calls through its Clients (backend.py: self.clients.<peer>).
    for path in (ROOT / "services/clinalign/cdshooks").rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            found.add(("cds-hooks", match.group(1) or match.group(2) or "trainer"))
    assert found == {c for c in CALLS if c[0] in (*SERVICES, "console", "cds-hooks")}


def _groups(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod groups: component -> (labels, container ports); job pods from
    clinalign.trainer.jobs.kube."""
    groups = {}
    for workload in workloads(docs):
        labels = pod_labels(workload)
        ports = {
            p["containerPort"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])
        }
        groups[labels["app.kubernetes.io/component"]] = {"labels": labels, "ports": ports}
    if any(d["kind"] == "Role" for d in docs):
        from clinalign.trainer.jobs import kube  # the labels the executor really sets

        class _Job:
            id, kind = "job-1", "ppo"

        groups["trainer-job"] = {"labels": kube.labels(_Job()), "ports": set()}  # type: ignore[arg-type]
    return groups


def _rules(policy: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    return list(policy["spec"].get(direction) or [])


def _policies_for(docs: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in of_kind(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]


def _allowed(docs: list[dict[str, Any]], src: str, dst: str, port: int) -> bool:
    """Both src's egress and dst's ingress allow src -> dst:port (pod-selector peers)."""
    groups = _groups(docs)
    src_labels, dst_labels = groups[src]["labels"], groups[dst]["labels"]

    def ok(policies: list[dict[str, Any]], direction: str, key: str, other: dict[str, str]) -> bool:
        for policy in policies:
            for rule in _rules(policy, direction):
                ports = {p["port"] for p in rule.get("ports", [])}
                peers = rule.get(key)
                matches = peers is None or any(
                    "podSelector" in peer
                    and "namespaceSelector" not in peer
                    and selects(peer["podSelector"], other)
                    for peer in peers
                )
                if matches and (not ports or port in ports):
                    return True
        return False

    return ok(_policies_for(docs, src_labels), "egress", "to", dst_labels) and ok(
        _policies_for(docs, dst_labels), "ingress", "from", src_labels
    )


@pytest.mark.parametrize("combo", ["default", "tgi", "postgresql", "external-db", "cds-hooks"])
def test_network_policies_allow_exactly_the_calls_in_the_code(combo: str) -> None:
    docs = docs_of(combo)
    groups = _groups(docs)
    expected = set(CALLS)
    if combo == "tgi":
        expected.add(("generation", "inference"))
    if combo == "postgresql":
        expected |= {(s, "postgresql") for s in ("preference", "trainer", "monitor", "trainer-job")}
    for src in groups:
        for dst, target in groups.items():
            if src == dst:
                continue
            listening = target["ports"] or {0}
            allowed = any(_allowed(docs, src, dst, port) for port in listening)
            assert allowed == ((src, dst) in expected), f"{src} -> {dst}: allowed={allowed}"


@pytest.mark.parametrize("combo", [*ALL, "cds-hooks"])
def test_every_opened_port_is_one_a_selected_pod_listens_on(combo: str) -> None:
    docs = docs_of(combo)
    groups = _groups(docs)
    policies = of_kind(docs, "NetworkPolicy")
    # A default deny covers every pod of the release.
    assert any(
        p["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in p["spec"]
        for p in policies
    )
    for policy in policies:
        selected = [
            g for g in groups.values() if selects(policy["spec"]["podSelector"], g["labels"])
        ]
        assert selected, f"{policy['metadata']['name']} selects no pod"
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        for rule in _rules(policy, "ingress"):
            for port in rule["ports"]:
                assert all(port["port"] in g["ports"] for g in selected), (
                    f"{policy['metadata']['name']} opens {port['port']} nobody listens on"
                )
        for rule in _rules(policy, "egress"):
            for peer in rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    targets = [
                        g for g in groups.values() if selects(peer["podSelector"], g["labels"])
                    ]
                    assert targets, f"{policy['metadata']['name']}: egress to no pod"
                    for port in rule["ports"]:
                        assert all(port["port"] in g["ports"] for g in targets)


def test_network_policy_egress_to_outside_the_cluster() -> None:
    def egress(combo: str, comp: str) -> list[dict[str, Any]]:
        return _rules(component(render(combo), "NetworkPolicy", comp), "egress")

    def ports(rules: list[dict[str, Any]]) -> set[int]:
        return {p["port"] for r in rules for p in r["ports"]}

    assert 53 in ports(egress("default", "preference"))
    assert {443, 6443} <= ports(egress("postgresql", "trainer"))
    assert not {443, 6443} & ports(egress("default", "trainer"))  # local executor
    db = [r for r in egress("external-db", "trainer-job") if r["ports"][0]["port"] == 5432]
    assert db and db[0]["to"] == [{"ipBlock": {"cidr": "10.0.5.0/24"}}]
    assert 5432 not in ports(egress("external-db", "generation"))
    assert 4317 in ports(egress("observability", "monitor"))
    assert 4317 not in ports(egress("default", "monitor"))
    remote = [r for r in egress("external-backend", "generation") if r["ports"][0]["port"] == 8000]
    assert remote and remote[0]["to"] == [{"ipBlock": {"cidr": "10.20.0.0/16"}}]


def test_metrics_ports_admit_prometheus() -> None:
    docs = render("default")
    for service in (*SERVICES, "console"):
        port = main_container(docs, service)["ports"][1]["containerPort"]
        rules = _rules(component(docs, "NetworkPolicy", service), "ingress")
        assert any(
            r["ports"] == [{"port": port, "protocol": "TCP"}]
            and "namespaceSelector" in r["from"][0]
            for r in rules
        ), service


# -- GPU scheduling, probes, autoscaling ----------------------------------------------------


@pytest.mark.parametrize(
    ("combo", "on_gpus"),
    [
        ("default", ("generation", "reward", "trainer")),  # jobs run in the trainer pod
        ("postgresql", ("generation", "reward")),  # jobs run in job pods on the GPU pool
    ],
)
def test_gpu_pool_by_default(combo: str, on_gpus: tuple[str, ...]) -> None:
    docs = render(combo)
    for service in SERVICES:
        container = main_container(docs, service)
        tolerations = pod_spec(component(docs, "Deployment", service)).get("tolerations", [])
        if service in on_gpus:
            assert container["resources"]["requests"][GPU] == 1, service
            assert container["resources"]["limits"][GPU] == 1, service
            assert container["image"].endswith(":0.1.0-cuda"), service
            assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in tolerations
        else:
            assert GPU not in container["resources"].get("requests", {}), service
            assert tolerations == [], service
            assert not container["image"].endswith("-cuda"), service
    if combo == "default":
        return
    env = env_of(main_container(docs, "trainer"))
    assert env["CLINALIGN_TRAINER_KUBERNETES_GPUS_PER_JOB"] == "1"
    assert env["CLINALIGN_TRAINER_KUBERNETES_IMAGE"] == "docker.io/clinalign/trainer:0.1.0-cuda"
    assert json.loads(env["CLINALIGN_TRAINER_KUBERNETES_TOLERATIONS"])[0]["key"] == GPU


@pytest.mark.parametrize("combo", ["dev-cpu", "dev-cpu-jobs"])
def test_gpu_disabled_for_dev_clusters(combo: str) -> None:
    docs = render(combo)
    for workload in workloads(docs):
        spec = pod_spec(workload)
        assert "tolerations" not in spec, workload["metadata"]["name"]
        for container in spec["containers"]:
            assert GPU not in json.dumps(container.get("resources", {}))
            assert not container["image"].endswith("-cuda")
    if combo == "dev-cpu":
        return
    env = env_of(main_container(docs, "trainer"))
    assert env["CLINALIGN_TRAINER_KUBERNETES_GPUS_PER_JOB"] == "0"
    assert json.loads(env["CLINALIGN_TRAINER_KUBERNETES_TOLERATIONS"]) == []
    assert not env["CLINALIGN_TRAINER_KUBERNETES_IMAGE"].endswith("-cuda")


def test_grpc_probes() -> None:
    docs = render("plaintext")  # with TLS (the default) the probes run the chart's script
    for service in SERVICES:
        container = main_container(docs, service)
        port = container["ports"][0]["containerPort"]
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": ""}
        assert container["startupProbe"]["grpc"] == {"port": port, "service": ""}
        readiness = "" if service == "reward" else _full_name(service)
        assert container["readinessProbe"]["grpc"] == {"port": port, "service": readiness}
    # Model loading: the startup probe allows 10 minutes on generation and reward.
    for service in ("generation", "reward"):
        startup = main_container(docs, service)["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    # A reward model configured at start: readiness follows the model.
    loaded = render_raw(
        {"reward": {"modelPath": "/var/lib/clinalign/models/rm"}, "tls": {"enabled": False}}
    )
    assert f'service: "{_full_name("reward")}"' in "".join(loaded.values())


def test_autoscaling_hpa_or_keda_never_both() -> None:
    exported = "".join(p.read_text() for p in (ROOT / "services/clinalign").rglob("metrics.py"))
    for combo in ALL:
        docs = render(combo)
        hpas, scaled = of_kind(docs, "HorizontalPodAutoscaler"), of_kind(docs, "ScaledObject")
        assert len(hpas) + len(scaled) == 2, combo
        assert not (hpas and scaled), combo
        targets = {d["spec"]["scaleTargetRef"]["name"] for d in hpas + scaled}
        assert targets == {f"{FULLNAME}-generation", f"{FULLNAME}-reward"}
        for target in targets:
            assert "replicas" not in named(docs, "Deployment", target)["spec"]
        for so in scaled:
            metric = re.match(r"sum\((\w+)\{", so["spec"]["triggers"][0]["metadata"]["query"])
            assert metric and f'"{metric.group(1)}"' in exported  # a gauge the service exports
    for hpa in of_kind(render("default"), "HorizontalPodAutoscaler"):
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_disruption_budgets() -> None:
    docs = render("default")
    for service in (*SERVICES, "console"):
        pdb = component(docs, "PodDisruptionBudget", service)
        labels = pod_labels(component(docs, "Deployment", service))
        assert selects(pdb["spec"]["selector"], labels)


# -- generation backends, storage ---------------------------------------------------------


@pytest.mark.parametrize(("combo", "api"), [("tgi", "tgi"), ("vllm", "openai")])
def test_remote_backend_in_the_chart(combo: str, api: str) -> None:
    docs = render(combo)
    env = env_of(main_container(docs, "generation"))
    assert env["CLINALIGN_GENERATION_BACKEND"] == "remote"
    assert env["CLINALIGN_GENERATION_REMOTE_API"] == api
    service = component(docs, "Service", "inference")
    (port,) = service["spec"]["ports"]
    assert env["CLINALIGN_GENERATION_REMOTE_URL"] == f"http://{FULLNAME}-inference:{port['port']}"
    server = pod_spec(component(docs, "Deployment", "inference"))["containers"][0]
    assert server["ports"][0]["containerPort"] == port["port"]
    assert server["resources"]["limits"][GPU] == 1
    assert "args" in server and any(
        "/var/lib/clinalign/models/foundation" in a for a in server["args"]
    )
    if api == "openai":
        assert env["CLINALIGN_GENERATION_REMOTE_MODEL"] == "clinalign-policy"
    # The generation pod itself needs no GPU when the server generates.
    assert GPU not in json.dumps(main_container(docs, "generation")["resources"])


def test_external_backend() -> None:
    env = env_of(main_container(render("external-backend"), "generation"))
    assert env["CLINALIGN_GENERATION_REMOTE_URL"] == "http://vllm.inference:8000"
    assert env["CLINALIGN_GENERATION_REMOTE_API"] == "openai"
    assert of_kind(render("external-backend"), "Deployment") != []
    assert "inference" not in {
        d["metadata"]["labels"]["app.kubernetes.io/component"]
        for d in of_kind(render("external-backend"), "Deployment")
    }


def _mounts(docs: list[dict[str, Any]], service: str) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in main_container(docs, service)["volumeMounts"]}


def test_storage_modes() -> None:
    # SQLite (default): every store on the data volume.
    docs = render("default")
    (pvc,) = of_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for service in SERVICES:
        assert _mounts(docs, service)["data"] == "/var/lib/clinalign"
        assert f"CLINALIGN_{service.upper()}_DATABASE_URL" not in env_of(
            main_container(docs, service)
        )
    # External PostgreSQL: only the model users mount the volume.
    docs = render("external-db")
    for service in ("preference", "monitor"):
        assert "data" not in _mounts(docs, service)
    for service in ("generation", "reward", "trainer"):
        assert "data" in _mounts(docs, service)
    # In-cluster PostgreSQL: the URLs come from the chart's credentials Secret.
    docs = render("postgresql")
    component(docs, "StatefulSet", "postgresql")
    secret = named(docs, "Secret", f"{FULLNAME}-credentials")
    url = base64.b64decode(secret["data"]["trainer-database-url"]).decode()
    assert url.startswith("postgresql://clinalign:") and f"@{FULLNAME}-postgresql:5432/" in url
    ref = env_of(main_container(docs, "monitor"))["CLINALIGN_MONITOR_DATABASE_URL"]
    assert ref["secretKeyRef"] == {
        "name": secret["metadata"]["name"],
        "key": "monitor-database-url",
    }
    # An existing claim replaces the created one.
    raw = render_raw({"persistence": {"existingClaim": "models"}})
    assert "kind: PersistentVolumeClaim" not in "".join(raw.values())
    assert "claimName: models" in "".join(raw.values())


@pytest.mark.parametrize("combo", ["default", "external-db"])
def test_serving_pods_mount_the_registry_read_only_and_spool_locally(combo: str) -> None:
    """Only the trainer (and its job pods) write the registry; generation's outbox toward
    the monitor is on a pod-local volume, never the shared one."""
    docs = render(combo)
    for service in ("generation", "reward", "trainer"):
        (data,) = [m for m in main_container(docs, service)["volumeMounts"] if m["name"] == "data"]
        assert data.get("readOnly", False) is (service != "trainer"), service
    generation = component(docs, "Deployment", "generation")
    (spool,) = [
        v for v in generation["spec"]["template"]["spec"]["volumes"] if v["name"] == "spool"
    ]
    assert "emptyDir" in spool
    env = env_of(main_container(docs, "generation"))
    assert env["CLINALIGN_GENERATION_MONITOR_SPOOL_PATH"].startswith(
        _mounts(docs, "generation")["spool"] + "/"
    )
    assert env["CLINALIGN_GENERATION_FOLLOW_REGISTRY"] == "true"
    assert env_of(main_container(docs, "reward"))["CLINALIGN_REWARD_FOLLOW_REGISTRY"] == "true"


# -- TLS, tests, monitoring assets ----------------------------------------------------------


@pytest.mark.parametrize("combo", ["default", "tls-secret", "tls-cert-manager"])
def test_tls(combo: str) -> None:
    docs = render(combo)
    secret = "clinalign-tls" if combo == "tls-secret" else f"{FULLNAME}-tls"
    for service in SERVICES:
        container = main_container(docs, service)
        env = env_of(container)
        assert env["CLINALIGN_TLS_CERT_FILE"] == "/etc/clinalign/tls/tls.crt"
        assert env["CLINALIGN_TLS_KEY_FILE"] == "/etc/clinalign/tls/tls.key"
        assert env["CLINALIGN_TLS_CA_FILE"] == "/etc/clinalign/tls/ca.crt"
        assert "CLINALIGN_TLS_CLIENT_CA_FILE" in env  # mutual TLS by default
        assert env["CLINALIGN_PROBE_TLS_NAME"] == f"{FULLNAME}-{service}"
        # kubelet's gRPC probe has no TLS: the probes run the chart's script.
        assert container["readinessProbe"]["exec"]["command"][:2] == [
            "python",
            "/etc/clinalign/probe/grpc_health.py",
        ]
        volumes = {
            v["name"]: v for v in pod_spec(component(docs, "Deployment", service))["volumes"]
        }
        assert volumes["tls"]["secret"]["secretName"] == secret
    trainer = env_of(main_container(docs, "trainer"))
    if combo in KUBE_EXECUTOR:  # the job pods mount the same certificate
        assert trainer["CLINALIGN_TRAINER_KUBERNETES_TLS_SECRET_NAME"] == secret
    (smoke,) = of_kind(docs, "Pod")
    assert "CLINALIGN_TLS_CA_FILE" in env_of(smoke["spec"]["containers"][0])
    if combo == "tls-cert-manager":
        (cert,) = of_kind(docs, "Certificate")
        for service in SERVICES:
            assert f"{FULLNAME}-{service}" in cert["spec"]["dnsNames"]
            assert f"{FULLNAME}-{service}.{NAMESPACE}.svc.cluster.local" in cert["spec"]["dnsNames"]


def _target(service: str, port: int) -> str:
    """How the services (and the smoke test) reach a peer: its headless Service, through
    gRPC's DNS resolver, so calls are balanced over every ready pod."""
    return f"dns:///{FULLNAME}-{service}-headless:{port}"


def test_internal_callers_balance_over_every_pod() -> None:
    docs = render("default")
    for service in SERVICES:
        headless = component(docs, "Service", f"{service}-headless")
        assert headless["spec"]["clusterIP"] == "None"
        assert (
            headless["spec"]["selector"] == component(docs, "Service", service)["spec"]["selector"]
        )
    from clinalign.common.channels import channel_options
    from clinalign.common.config import CommonSettings

    assert ("grpc.lb_policy_name", "round_robin") in channel_options(CommonSettings())


def test_oidc_issuer_reaches_every_service_and_its_egress_is_allowed() -> None:
    issuer = "https://idp.example.org/realms/hospital"
    raw = render_raw(
        {"oidc": {"issuer": issuer, "audience": "clinalign", "rolesClaim": "realm_access.roles"}}
    )
    docs = [
        d
        for path, text in raw.items()
        if path.endswith(".yaml")
        for d in yaml.safe_load_all(text)
        if d
    ]
    for service in (*SERVICES, "console"):
        env = env_of(main_container(docs, service))
        assert (env["CLINALIGN_OIDC_ISSUER"], env["CLINALIGN_OIDC_AUDIENCE"]) == (
            issuer,
            "clinalign",
        )
        assert env["CLINALIGN_OIDC_ROLES_CLAIM"] == "realm_access.roles"
        egress = component(docs, "NetworkPolicy", service)["spec"]["egress"]
        assert any(p["port"] == 443 for rule in egress for p in rule.get("ports", []))
    # Without an issuer no service gets the settings (JWTs refused) nor the egress.
    default = render("default")
    for service in (*SERVICES, "console"):
        assert "CLINALIGN_OIDC_ISSUER" not in env_of(main_container(default, service))
        egress = component(default, "NetworkPolicy", service)["spec"]["egress"]
        assert not any(p["port"] == 443 for rule in egress for p in rule.get("ports", []))


def test_tls_probe_script_compiles() -> None:
    source = (CHART / "files/grpc_health.py").read_text()
    compile(source, "grpc_health.py", "exec")


def test_helm_test_hook_runs_the_smoke_command() -> None:
    docs = render("default")
    (pod,) = of_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["clinalign", "smoke", "--json"]
    env = env_of(container)
    generation = main_container(docs, "generation")
    assert env["CLINALIGN_GENERATION_TARGET"] == _target(
        "generation", generation["ports"][0]["containerPort"]
    )
    assert env["CLINALIGN_TOKENS_FILE"] == "/etc/clinalign/auth/tokens.json"
    assert container["image"].split(":")[0] == generation["image"].split(":")[0]
    assert "helm test" in notes("default")


def test_shipped_monitoring_files_are_copies_of_deploy() -> None:
    for shipped, source in (
        ("files/clinalign-rules.yaml", "deploy/prometheus/clinalign-rules.yaml"),
        ("files/clinalign-dashboard.json", "deploy/grafana/clinalign-dashboard.json"),
    ):
        assert (CHART / shipped).read_bytes() == (ROOT / source).read_bytes(), (
            f"{shipped} drifted: cp {source} helm/clinalign/{shipped}"
        )


def test_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH: `make install` installs Debian's prometheus package")
    (rule,) = of_kind(render("observability"), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shipped = yaml.safe_load((ROOT / "deploy/prometheus/clinalign-rules.yaml").read_text())
    assert rule["spec"] == shipped


def test_dashboard_config_map() -> None:
    (cm,) = [
        c
        for c in of_kind(render("default"), "ConfigMap")
        if c["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["clinalign-dashboard.json"])
    shipped = json.loads((ROOT / "deploy/grafana/clinalign-dashboard.json").read_text())
    assert dashboard == shipped


def test_otel_settings_reach_every_service() -> None:
    docs = render("observability")
    for service in SERVICES:
        env = env_of(main_container(docs, service))
        assert env["CLINALIGN_OTEL_ENABLED"] == "true"
        assert env["CLINALIGN_OTEL_ENDPOINT"].endswith(":4317")


def test_only_the_preference_pod_holds_the_audit_keys() -> None:
    docs = render("default")
    secret = named(docs, "Secret", f"{FULLNAME}-credentials")
    keys = json.loads(base64.b64decode(secret["data"]["audit-keys.json"]))
    assert len(base64.b64decode(keys["keys"][keys["current"]])) == 32
    for service in SERVICES:
        auth = next(
            v
            for v in pod_spec(component(docs, "Deployment", service))["volumes"]
            if v["name"] == "auth"
        )
        projected = [i["key"] for i in auth["secret"]["items"]]
        assert ("audit-keys.json" in projected) == (service == "preference"), service
    env = env_of(main_container(docs, "preference"))
    assert env["CLINALIGN_PREFERENCE_AUDIT_KEYS_FILE"] == "/etc/clinalign/auth/audit-keys.json"
    assert env["CLINALIGN_PREFERENCE_AUDIT_ANCHOR_TO_LOG"] == "true"


def test_mutual_tls_by_default_and_plaintext_only_by_explicit_value_with_a_warning() -> None:
    docs = render("default")
    secret = named(docs, "Secret", f"{FULLNAME}-tls")
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for service in SERVICES:
        env = env_of(main_container(docs, service))
        assert env["CLINALIGN_TLS_CLIENT_CA_FILE"] == "/etc/clinalign/tls/ca.crt"
    assert "plaintext" not in notes("default")
    plain = render("plaintext")
    assert not [s for s in of_kind(plain, "Secret") if s["metadata"]["name"].endswith("-tls")]
    assert all("CLINALIGN_TLS_CERT_FILE" not in env_of(main_container(plain, s)) for s in SERVICES)
    assert "WARNING: tls.enabled is false" in notes("plaintext")
    # Re-used from the cluster on upgrade, generated only on first install.
    source = (CHART / "templates/certificate.yaml").read_text()
    assert "lookup" in source and "genCA" in source


# -- the clinician console ------------------------------------------------------------------


def _console_env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return env_of(main_container(docs, "console"))


def _file_in(docs: list[dict[str, Any]], path: str) -> tuple[str, dict[str, Any]]:
    """The console volume a file path lies on, and that volume (path under its mount)."""
    spec = pod_spec(component(docs, "Deployment", "console"))
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [
        m
        for m in main_container(docs, "console")["volumeMounts"]
        if path.startswith(m["mountPath"])
    ]
    return path.removeprefix(mount["mountPath"]).lstrip("/"), volumes[mount["name"]]


@pytest.mark.parametrize("combo", ["default", "plaintext", *CONSOLE_COMBOS])
def test_every_console_setting_the_chart_sets_is_one_the_console_reads(combo: str) -> None:
    """A misspelt CLINALIGN_CONSOLE_* (or CLINALIGN_*) variable would be ignored silently."""
    docs = docs_of(combo)
    if combo == "console-disabled":
        assert [d for d in docs if d["metadata"]["name"] == f"{FULLNAME}-console"] == []
        return
    common = {f"CLINALIGN_{f.upper()}" for f in CommonSettings.model_fields}
    console = {f"CLINALIGN_CONSOLE_{f.upper()}" for f in ConsoleSettings.model_fields}
    for name in _console_env(docs):
        if name.startswith("CLINALIGN_"):
            assert name in common | console, name


def test_console_by_default() -> None:
    docs = render("default")
    deployment = component(docs, "Deployment", "console")
    assert deployment["spec"]["replicas"] == 2
    container = main_container(docs, "console")
    assert container["image"] == "docker.io/clinalign/console:0.1.0"  # never a -cuda image
    fields = ConsoleSettings.model_fields
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": fields["port"].default, "metrics": fields["metrics_port"].default}
    env = _console_env(docs)
    assert env["CLINALIGN_CONSOLE_PORT"] == str(ports["http"])
    assert env["CLINALIGN_CONSOLE_METRICS_PORT"] == str(ports["metrics"])
    assert env["CLINALIGN_CONSOLE_DEV_SIGN_IN"] == "false"
    assert env["CLINALIGN_CONSOLE_OIDC_CLIENT_ID"] == "clinalign-console"
    assert "CLINALIGN_CONSOLE_OIDC_CLIENT_SECRET_FILE" not in env
    assert "CLINALIGN_CONSOLE_PUBLIC_URL" not in env  # no publicUrl, no Ingress
    # It calls preference, monitor and the trainer, over their headless Services.
    targets = {k: v for k, v in env.items() if k.endswith("_TARGET")}
    assert targets == {
        f"CLINALIGN_{s.upper()}_TARGET": _target(
            s, main_container(docs, s)["ports"][0]["containerPort"]
        )
        for s in ("preference", "monitor", "trainer")
    }
    # No data volume: the session key from its Secret, the signing key on /tmp.
    spec = pod_spec(deployment)
    assert "persistentVolumeClaim" not in json.dumps(spec["volumes"])
    key, volume = _file_in(docs, env["CLINALIGN_CONSOLE_SESSION_KEY_FILE"])
    assert volume["secret"]["secretName"] == f"{FULLNAME}-console-session"
    assert volume["secret"]["items"] == [{"key": "session.key", "path": key}]
    _, tmp = _file_in(docs, env["CLINALIGN_CONSOLE_SIGNING_KEY_FILE"])
    assert "emptyDir" in tmp and env["CLINALIGN_CONSOLE_SIGNING_KEY_FILE"].startswith("/tmp/")
    # Only the metrics and http ports, on its own ServiceAccount; no Ingress unless asked.
    service = component(docs, "Service", "console")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("http", ports["http"], "http"),
        ("metrics", ports["metrics"], "metrics"),
    ]
    assert service["spec"]["type"] == "ClusterIP"
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(deployment))
    assert of_kind(docs, "Ingress") == []


def test_console_session_key_is_a_shared_fernet_key_kept_across_upgrades() -> None:
    secret = named(render("default"), "Secret", f"{FULLNAME}-console-session")
    key = base64.b64decode(secret["data"]["session.key"])
    assert len(key) == 44 and not {b"+", b"/"} & {key[i : i + 1] for i in range(len(key))}
    assert len(base64.urlsafe_b64decode(key)) == 32
    Fernet(key).decrypt(Fernet(key).encrypt(b"session"))  # what sessions.load_key reads
    # One Secret for every replica, generated once and read back with lookup on upgrade.
    source = (CHART / "templates/secrets.yaml").read_text()
    session = source[source.index("The console's session key") :]
    assert "lookup" in session and "randBytes 32" in session


def test_console_serves_https_with_the_services_certificate_and_is_probed_over_it() -> None:
    for combo, secret in (("default", f"{FULLNAME}-tls"), ("tls-secret", "clinalign-tls")):
        docs = render(combo)
        container = main_container(docs, "console")
        env = env_of(container)
        for setting in (
            "CLINALIGN_TLS_CERT_FILE",
            "CLINALIGN_TLS_KEY_FILE",
            "CLINALIGN_TLS_CA_FILE",
        ):
            _, volume = _file_in(docs, env[setting])
            assert volume["secret"]["secretName"] == secret
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {
                "path": "/healthz",
                "port": "http",
                "scheme": "HTTPS",
            }
        (http,) = [
            p for p in component(docs, "Service", "console")["spec"]["ports"] if p["name"] == "http"
        ]
        assert http["appProtocol"] == "https"
    (cert,) = of_kind(render("tls-cert-manager"), "Certificate")
    assert f"{FULLNAME}-console.{NAMESPACE}.svc.cluster.local" in cert["spec"]["dnsNames"]
    plain = render("plaintext")
    container = main_container(plain, "console")
    assert "CLINALIGN_TLS_CERT_FILE" not in env_of(container)
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert "tls" not in {
        v["name"] for v in pod_spec(component(plain, "Deployment", "console"))["volumes"]
    }


def test_console_ingress() -> None:
    docs = docs_of("console-ingress")
    (ingress,) = of_kind(docs, "Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["metadata"]["annotations"] == {
        "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"
    }
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    hosts = ["console.example.org", "clinalign.example.org"]
    assert spec["tls"] == [{"hosts": hosts, "secretName": "console-example-org"}]
    assert [r["host"] for r in spec["rules"]] == hosts
    service = component(docs, "Service", "console")
    for rule in spec["rules"]:
        (path,) = rule["http"]["paths"]
        assert (path["path"], path["pathType"]) == ("/", "Prefix")
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    env = _console_env(docs)
    assert env["CLINALIGN_CONSOLE_PUBLIC_URL"] == "https://console.example.org"  # the first host
    assert "WARNING: console" not in "".join(render_raw(CONSOLE_COMBOS["console-ingress"]).values())
    assert "https://console.example.org/auth/callback" in next(
        v
        for k, v in render_raw(CONSOLE_COMBOS["console-ingress"]).items()
        if k.endswith("NOTES.txt")
    )


def test_console_existing_secrets() -> None:
    docs = docs_of("console-existing-secrets")
    env = _console_env(docs)
    assert env["CLINALIGN_CONSOLE_PUBLIC_URL"] == "https://console.hospital.example/clinalign"
    assert env["CLINALIGN_CONSOLE_OIDC_CLIENT_ID"] == "ca-console"
    assert env["CLINALIGN_SERVICE_TOKEN"]["secretKeyRef"] == {
        "name": "clinalign-tokens",
        "key": "token-console",
    }
    key, volume = _file_in(docs, env["CLINALIGN_CONSOLE_SESSION_KEY_FILE"])
    assert volume["secret"]["secretName"] == "clinalign-console-session"
    assert volume["secret"]["items"] == [{"key": "session.key", "path": key}]
    name, volume = _file_in(docs, env["CLINALIGN_CONSOLE_OIDC_CLIENT_SECRET_FILE"])
    assert volume["secret"]["secretName"] == "clinalign-console-oidc"
    assert volume["secret"]["items"] == [{"key": "client-secret", "path": name}]
    assert of_kind(docs, "Secret") == []


def test_console_disabled() -> None:
    docs = docs_of("console-disabled")
    assert not [
        d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "console"
    ]
    assert "console" not in json.dumps([p["spec"] for p in of_kind(docs, "NetworkPolicy")])
    assert "5. " not in next(
        v
        for k, v in render_raw(CONSOLE_COMBOS["console-disabled"]).items()
        if k.endswith("NOTES.txt")
    )


@pytest.mark.parametrize("combo", ["default", "console-ingress"])
def test_console_network_policy(combo: str) -> None:
    """In: the Ingress controller (networkPolicy.clients.console) on http, Prometheus on
    metrics. Out: DNS, preference, monitor and trainer, and the issuer when there is one."""
    docs = docs_of(combo)
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]
    ports = {p["name"]: p["containerPort"] for p in main_container(docs, "console")["ports"]}
    policy = component(docs, "NetworkPolicy", "console")
    assert [(r["from"], r["ports"]) for r in _rules(policy, "ingress")] == [
        (values["clients"]["console"], [{"port": ports["http"], "protocol": "TCP"}]),
        (values["metricsFrom"], [{"port": ports["metrics"], "protocol": "TCP"}]),
    ]
    egress = {p["port"] for r in _rules(policy, "egress") for p in r["ports"]}
    grpc = {
        main_container(docs, s)["ports"][0]["containerPort"]
        for s in ("preference", "monitor", "trainer")
    }
    issuer = {443} if combo == "console-ingress" else set()
    assert egress == {53} | grpc | issuer
    for service in ("preference", "monitor", "trainer"):
        assert _allowed(
            docs, "console", service, main_container(docs, service)["ports"][0]["containerPort"]
        )


def test_notes_warn_when_nobody_can_sign_in_to_the_console() -> None:
    assert "WARNING: console.enabled but oidc.issuer is empty" in notes("default")
    raw = render_raw({"oidc": {"issuer": "https://idp.example.org", "audience": "clinalign"}})
    text = next(v for k, v in raw.items() if k.endswith("NOTES.txt"))
    assert "oidc.issuer is empty" not in text
    assert "WARNING: console.publicUrl is empty" in text


# -- the CDS Hooks gateway ------------------------------------------------------------------


def test_cds_hooks_is_off_by_default_and_changes_nothing() -> None:
    docs = render("default")
    assert not [
        d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "cds-hooks"
    ]
    assert "cds-hooks" not in json.dumps([p["spec"] for p in of_kind(docs, "NetworkPolicy")])
    for service in SERVICES:
        assert "CLINALIGN_DELEGATION_KEYS_FILE" not in env_of(main_container(docs, service))
    secret = named(docs, "Secret", f"{FULLNAME}-credentials")
    assert "token-cds-hooks" not in secret["data"]


def test_cds_hooks_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its settings are ones CdsHooksSettings reads and parses; it calls generation, the
    monitor and the trainer as svc-cds-hooks; it alone mounts the private key, every
    service the public one."""
    docs = docs_of("cds-hooks")
    container = main_container(docs, "cds-hooks")
    assert container["image"] == "docker.io/clinalign/cds-hooks:0.1.0"
    fields = CdsHooksSettings.model_fields
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": fields["port"].default, "metrics": fields["metrics_port"].default}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {
            "path": "/healthz",
            "port": "http",
            "scheme": "HTTPS",
        }
    env = env_of(container)
    common = {f"CLINALIGN_{f.upper()}" for f in CommonSettings.model_fields}
    own = {f"CLINALIGN_CDS_HOOKS_{f.upper()}" for f in fields}
    for name, value in env.items():
        if name.startswith("CLINALIGN_"):
            assert name in common | own, name
            if name in own:
                monkeypatch.setenv(name, value)
    settings = CdsHooksSettings()
    assert settings.trusted_issuers == {
        "https://ehr.example.org": "https://ehr.example.org/jwks.json"
    }
    assert settings.allowed_origins == ["https://ehr.example.org"]
    assert settings.public_url == "https://cds.example.org"  # the first Ingress host
    assert settings.max_new_tokens == 512
    assert settings.smart_clients["https://ehr.example.org/fhir"].client_id == "clinalign"
    assert env["CLINALIGN_SERVICE_TOKEN"]["secretKeyRef"]["key"] == "token-cds-hooks"
    assert "CLINALIGN_TOKENS_FILE" not in env
    targets = {k for k in env if k.endswith("_TARGET")}
    assert targets == {
        "CLINALIGN_GENERATION_TARGET",
        "CLINALIGN_MONITOR_TARGET",
        "CLINALIGN_TRAINER_TARGET",
    }
    # The private key from the operator's Secret, in the gateway's pods only.
    spec = pod_spec(component(docs, "Deployment", "cds-hooks"))
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = [
        m
        for m in container["volumeMounts"]
        if env["CLINALIGN_CDS_HOOKS_SIGNING_KEY_FILE"].startswith(m["mountPath"] + "/")
    ]
    signing = volumes[mount["name"]]["secret"]
    assert signing["secretName"] == "clinalign-cds-hooks-signing"
    assert signing["items"] == [{"key": "signing.jwk", "path": "signing.jwk"}]
    # Its SMART Backend Services key, from the operator's Secret too.
    (mount,) = [
        m
        for m in container["volumeMounts"]
        if env["CLINALIGN_CDS_HOOKS_SMART_KEY_FILE"].startswith(m["mountPath"] + "/")
    ]
    smart = volumes[mount["name"]]["secret"]
    assert smart["secretName"] == "clinalign-cds-hooks-smart"
    assert smart["items"] == [{"key": "smart.jwk", "path": "smart.jwk"}]
    for service in SERVICES:
        service_env = env_of(main_container(docs, service))
        keys_file = service_env["CLINALIGN_DELEGATION_KEYS_FILE"]
        (mount,) = [
            m
            for m in main_container(docs, service)["volumeMounts"]
            if keys_file.startswith(m["mountPath"] + "/")
        ]
        spec = pod_spec(component(docs, "Deployment", service))
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "clinalign-cds-hooks-signing"
        assert volume["secret"]["items"] == [
            {"key": "delegation-keys.json", "path": keys_file.rsplit("/", 1)[1]}
        ]
    # Its own generated credential, the Ingress, the certificate and a ServiceMonitor.
    tokens = named(docs, "Secret", f"{FULLNAME}-credentials")["data"]["tokens.json"]
    assert "svc-cds-hooks" in {
        t["principal"] for t in json.loads(base64.b64decode(tokens))["tokens"]
    }
    (ingress,) = [
        i for i in of_kind(docs, "Ingress") if i["metadata"]["name"].endswith("cds-hooks")
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "cds.example.org"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == f"{FULLNAME}-cds-hooks"
    (cert,) = of_kind(docs, "Certificate")
    assert f"{FULLNAME}-cds-hooks.{NAMESPACE}.svc.cluster.local" in cert["spec"]["dnsNames"]
    component(docs, "ServiceMonitor", "cds-hooks")
    component(docs, "PodDisruptionBudget", "cds-hooks")
    text = next(
        v for k, v in render_raw(CONSOLE_COMBOS["cds-hooks"]).items() if k.endswith("NOTES.txt")
    )
    assert "https://cds.example.org/cds-services" in text
    assert "WARNING: cdsHooks" not in text


def test_cds_hooks_network_policy() -> None:
    """In: the Ingress controller (networkPolicy.clients.cdsHooks) on http, Prometheus on
    metrics. Out: DNS, generation, the monitor and the trainer (which admit it), and the
    EHRs' HTTPS."""
    docs = docs_of("cds-hooks")
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]
    ports = {p["name"]: p["containerPort"] for p in main_container(docs, "cds-hooks")["ports"]}
    policy = component(docs, "NetworkPolicy", "cds-hooks")
    assert [(r["from"], r["ports"]) for r in _rules(policy, "ingress")] == [
        (values["clients"]["cdsHooks"], [{"port": ports["http"], "protocol": "TCP"}]),
        (values["metricsFrom"], [{"port": ports["metrics"], "protocol": "TCP"}]),
    ]
    egress = _rules(policy, "egress")
    grpc = {s: main_container(docs, s)["ports"][0]["containerPort"] for s in SERVICES}
    assert {p["port"] for r in egress for p in r["ports"]} == {
        53,
        grpc["generation"],
        grpc["monitor"],
        grpc["trainer"],
        443,
    }
    (ehr,) = [r for r in egress if r["ports"][0]["port"] == 443]
    assert ehr["to"] == [{"ipBlock": {"cidr": "10.30.0.0/16"}}]
    for service in SERVICES:
        allowed = _allowed(docs, "cds-hooks", service, grpc[service])
        assert allowed == (service in ("generation", "monitor", "trainer")), service
