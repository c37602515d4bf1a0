"""deploy/kustomize is generated from the Helm chart (scripts/render_kustomize.py); these tests
check that it is current, that the real kustomize builds each overlay into exactly the
chart's rendering for that overlay's values, and that what it builds is valid and locked
down. kustomize is the one built into kubectl (`kubectl kustomize`, no cluster needed)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSIONS = ("1.36.0", "1.37.0")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_kustomize", ROOT / "scripts/render_kustomize.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("render_kustomize", module)
    spec.loader.exec_module(module)
    return module


GEN = _generator()


def _kustomize(overlay: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    built = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy/kustomize/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


def test_generated_files_are_current() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in GEN.generate().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"run python scripts/render_kustomize.py; stale: {stale}"


@pytest.mark.parametrize("overlay", GEN.OVERLAYS)
def test_overlay_builds_into_the_charts_rendering(overlay: str) -> None:
    expected = GEN.render(GEN._merge(GEN._values("base"), GEN._values(overlay)))
    built = {_key(o): o for o in _kustomize(overlay)}
    assert set(built) == set(expected)
    for key, obj in expected.items():
        obj = dict(obj, metadata={**obj["metadata"], "namespace": GEN.NAMESPACE})
        assert built[key] == obj, f"{key}: kustomize and the chart disagree"


def test_overlays_differ_where_they_should() -> None:
    dev = {_key(o): o for o in _kustomize("dev")}
    gpu = {_key(o): o for o in _kustomize("gpu")}
    generation = ("apps/v1", "Deployment", "clinalign-generation")
    dev_limits = dev[generation]["spec"]["template"]["spec"]["containers"][0]["resources"]
    gpu_limits = gpu[generation]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in dev_limits.get("limits", {})
    assert gpu_limits["limits"]["nvidia.com/gpu"] == 1
    # dev trains in the trainer pod: no Kubernetes API access at all
    assert ("rbac.authorization.k8s.io/v1", "Role", "clinalign-trainer") not in dev
    assert ("rbac.authorization.k8s.io/v1", "Role", "clinalign-trainer") in gpu

    def env(objs: dict[Any, Any], service: str) -> dict[str, Any]:
        container = objs[("apps/v1", "Deployment", f"clinalign-{service}")]["spec"]["template"][
            "spec"
        ]["containers"][0]
        return {e["name"]: e for e in container.get("env", [])}

    assert "CLINALIGN_PREFERENCE_DATABASE_URL" not in env(dev, "preference")  # SQLite
    url = env(gpu, "preference")["CLINALIGN_PREFERENCE_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"]["name"] == "clinalign-db"


@pytest.mark.parametrize("overlay", GEN.OVERLAYS)
def test_overlay_objects_validate_strictly(overlay: str) -> None:
    for obj in _kustomize(overlay):
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{_key(obj)} invalid for {version}: {exc.message} {list(exc.path)}")


@pytest.mark.parametrize("overlay", GEN.OVERLAYS)
def test_overlay_workloads_are_locked_down_and_carry_no_secrets(overlay: str) -> None:
    objs = _kustomize(overlay)
    assert not [o for o in objs if o["kind"] == "Secret"]
    deployments = [o for o in objs if o["kind"] == "Deployment"]
    # The five services and the console.
    assert {d["metadata"]["name"] for d in deployments} == {
        f"clinalign-{c}"
        for c in ("generation", "reward", "preference", "trainer", "monitor", "console")
    }
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "kustomize"
        assert "helm.sh/chart" not in labels


def test_stale_files_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check fails, naming the file, when a generated file was edited by hand."""
    out = tmp_path / "kustomize"
    shutil.copytree(ROOT / "deploy/kustomize", out)
    monkeypatch.setattr(GEN, "OUT", out)
    monkeypatch.setattr(GEN, "ROOT", tmp_path)
    monkeypatch.setattr(sys, "argv", ["render_kustomize.py", "--check"])
    assert GEN.main() == 0
    edited = out / "base/service-clinalign-generation.yaml"
    edited.write_text(edited.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    assert GEN.main() == 1
