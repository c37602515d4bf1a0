"""Renders helm/clinalign offline with the real Helm engine (helm_python embeds Helm 4) and
gives tests the objects as dictionaries. Each values combination renders once per session."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from helm_python.chart import Chart

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm/clinalign"
RELEASE = "ca"
NAMESPACE = "clinalign"
FULLNAME = f"{RELEASE}-clinalign"
SERVICES = ("generation", "reward", "preference", "trainer", "monitor")
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "Pod", "DaemonSet")
CRD_KINDS = ("ServiceMonitor", "PrometheusRule", "ScaledObject", "Certificate")

# Value combinations a platform team installs; each renders once per test session.
COMBOS: dict[str, dict[str, Any]] = {
    "default": {},
    # Plaintext only by explicit value (a service mesh encrypts beneath ClinAlign).
    "plaintext": {"tls": {"enabled": False}},
    "dev-cpu": {"gpu": {"enabled": False}},
    "dev-cpu-jobs": {
        "gpu": {"enabled": False},
        "postgresql": {"enabled": True},
        "trainer": {"executor": "kubernetes"},
    },
    "tgi": {"generation": {"backend": {"mode": "tgi"}}},
    "vllm": {"generation": {"backend": {"mode": "vllm"}}},
    "external-backend": {
        "generation": {
            "backend": {
                "mode": "external",
                "external": {"url": "http://vllm.inference:8000", "api": "openai", "model": "m"},
            }
        },
        "networkPolicy": {"externalBackend": {"cidrs": ["10.20.0.0/16"], "port": 8000}},
    },
    "external-db": {
        "database": {"external": {"existingSecret": "clinalign-db"}},
        "trainer": {"executor": "kubernetes", "jobs": {"existingSecret": "clinalign-trainer-job"}},
        "auth": {"existingSecret": "clinalign-tokens"},
        "tls": {"existingSecret": "clinalign-tls"},
        "preference": {"replicas": 3},
        "networkPolicy": {"database": {"cidrs": ["10.0.5.0/24"]}},
    },
    "postgresql": {
        "postgresql": {"enabled": True},
        "monitor": {"replicas": 2},
        "trainer": {"executor": "kubernetes"},
    },
    "keda": {"keda": {"enabled": True, "prometheusServerAddress": "http://prometheus:9090"}},
    "tls-secret": {
        "tls": {"enabled": True, "existingSecret": "clinalign-tls", "mutual": True},
        "postgresql": {"enabled": True},
        "trainer": {"executor": "kubernetes"},
    },
    "tls-cert-manager": {
        "tls": {"enabled": True, "certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}
    },
    "observability": {
        "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
        "otel": {"enabled": True},
    },
    "local-executor": {"trainer": {"executor": "local", "gpu": {"count": 1}}},
}


@functools.cache
def chart() -> Chart:
    return Chart.load(CHART)


def render_raw(values: dict[str, Any]) -> dict[str, str]:
    return chart().render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@functools.cache
def _render_combo(combo: str) -> tuple[dict[str, Any], ...]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render_raw(COMBOS[combo]).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["_template"] = path
                docs.append(doc)
    return tuple(docs)


def render(combo: str) -> list[dict[str, Any]]:
    """The objects of a combination, as deep copies (tests may not alter the cache)."""
    return json.loads(json.dumps(_render_combo(combo)))


def notes(combo: str) -> str:
    return next(v for k, v in render_raw(COMBOS[combo]).items() if k.endswith("NOTES.txt"))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def component(docs: list[dict[str, Any]], kind: str, comp: str) -> dict[str, Any]:
    return named(docs, kind, f"{FULLNAME}-{comp}")


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "Pod":
        return dict(workload["spec"])
    return dict(workload["spec"]["template"]["spec"])


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    if workload["kind"] == "Pod":
        return dict(workload["metadata"].get("labels", {}))
    return dict(workload["spec"]["template"]["metadata"].get("labels", {}))


def workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (d for d in docs if d["kind"] in WORKLOAD_KINDS)


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """Name -> value, or -> the valueFrom mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def main_container(docs: list[dict[str, Any]], comp: str) -> dict[str, Any]:
    containers = pod_spec(component(docs, "Deployment", comp))["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    assert not selector.get("matchExpressions"), "the chart's policies use matchLabels only"
    return all(labels.get(k) == v for k, v in wanted.items())


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    """The object without this module's bookkeeping key."""
    return {k: v for k, v in doc.items() if k != "_template"}
