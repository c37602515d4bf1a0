"""The model registry: immutable model versions with their lineage, and which version of
each kind is served.

A registered version's artefacts are copied into ``<data_dir>/registry/<version>/`` and
made read-only; its row records the weights hash, parent, snapshot and metrics. Serving
history is append-only, so a rollback restores exactly the previous version. Every
decision of the promotion gate, promotion or refusal, is kept with the figures it checked
and who asked (``gate_decisions``): the trainer's audit trail of what may be served.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import shutil
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Boolean, DateTime, Float, Integer, String, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from clinalign.common.artefacts import KINDS, MANIFEST_NAME
from clinalign.common.errors import FailedPrecondition, InvalidArgument, NotFound
from clinalign.common.hashing import weights_hash


class Base(DeclarativeBase):
    pass


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16), default="registered")
    base_model: Mapped[str] = mapped_column(Text, default="")
    adapter_path: Mapped[str] = mapped_column(Text, default="")
    artifact_uri: Mapped[str] = mapped_column(Text)
    weights_hash: Mapped[str] = mapped_column(String(64))
    parent_version: Mapped[str] = mapped_column(String(64), default="")
    snapshot_hash: Mapped[str] = mapped_column(String(64), default="")
    job_id: Mapped[str] = mapped_column(String(64), default="")
    metrics_json: Mapped[str] = mapped_column(Text, default="{}")
    manifest_json: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ServingEventRow(Base):
    """Append-only history of what serves each kind: every change of the stable or the
    canary version, with who made it and why. Its id is the serving state's revision,
    which replicas watch."""

    __tablename__ = "serving_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[str] = mapped_column(String(64))
    # initial | promote | rollback (the stable version); canary | canary_end
    action: Mapped[str] = mapped_column(String(16))
    principal: Mapped[str] = mapped_column(String(128), default="")  # migration 0002
    reason: Mapped[str] = mapped_column(Text, default="")  # migration 0002
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CanaryRow(Base):
    """The canary of a kind, while there is one: a gated version served to a share of
    traffic beside the stable one (migration 0002)."""

    __tablename__ = "serving_canaries"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    traffic_share: Mapped[float] = mapped_column(Float)


class GateDecisionRow(Base):
    """Append-only record of each promotion-gate decision."""

    __tablename__ = "gate_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    version: Mapped[str] = mapped_column(String(64), index=True)
    promoted: Mapped[bool] = mapped_column(Boolean)
    # [{"name", "value", "threshold", "passed", "message"}]: figures and rule texts only
    checks_json: Mapped[str] = mapped_column(Text, default="[]")
    principal: Mapped[str] = mapped_column(String(128), default="")
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class ModelVersion:
    version: str
    name: str
    kind: str
    stage: str
    base_model: str
    adapter_path: str
    artifact_uri: str
    weights_hash: str
    parent_version: str
    snapshot_hash: str
    job_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, object] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def from_row(cls, row: ModelVersionRow) -> ModelVersion:
        return cls(
            version=row.version,
            name=row.name,
            kind=row.kind,
            stage=row.stage,
            base_model=row.base_model,
            adapter_path=row.adapter_path,
            artifact_uri=row.artifact_uri,
            weights_hash=row.weights_hash,
            parent_version=row.parent_version,
            snapshot_hash=row.snapshot_hash,
            job_id=row.job_id,
            metrics=json.loads(row.metrics_json),
            manifest=json.loads(row.manifest_json),
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class GateDecision:
    kind: str
    version: str
    promoted: bool
    checks: list[dict[str, object]]
    principal: str
    at: datetime


def _adapter_base(session: Session, source: Path) -> Path | None:
    """For a LoRA adapter directory (peft's adapter_config.json), the base model directory
    it applies to: its ``base_model_name_or_path``, a directory or a registry version."""
    config = source / "adapter_config.json"
    if not config.is_file():
        return None
    base = str(json.loads(config.read_text()).get("base_model_name_or_path") or "")
    if Path(base).is_dir() and (Path(base) / "config.json").is_file():
        return Path(base).resolve()
    row = session.get(ModelVersionRow, base) if base else None
    if row is not None and not row.adapter_path:
        return Path(row.artifact_uri)
    raise InvalidArgument(
        "path",
        f"the adapter's base_model_name_or_path {base!r} is neither a model directory nor a "
        "registered full-weight version",
    )


def _make_read_only(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


class Registry:
    """Registry operations on a session; the caller owns the transaction."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def register(
        self,
        session: Session,
        source: Path,
        kind: str,
        *,
        serve_if_none: bool = False,
        parent_version: str = "",
        job_id: str = "",
    ) -> ModelVersion:
        if kind not in KINDS:
            raise InvalidArgument("kind", f"must be one of {', '.join(KINDS)}")
        if not source.is_dir():
            raise InvalidArgument("path", f"{source} is not a directory")
        base_model = _adapter_base(session, source)
        if base_model is None and not (source / "config.json").is_file():
            raise InvalidArgument(
                "path", f"{source} is neither a Hugging Face model nor a LoRA adapter directory"
            )
        manifest: dict[str, object] = {}
        if (source / MANIFEST_NAME).is_file():
            manifest = json.loads((source / MANIFEST_NAME).read_text())
        seq = (
            session.scalar(
                select(func.max(ModelVersionRow.seq)).where(ModelVersionRow.kind == kind)
            )
            or 0
        ) + 1
        version = f"{kind}-v{seq}"
        target = self.root / version
        if target.exists():
            shutil.rmtree(target)  # leftover of a registration that did not commit
        staging = self.root / f".{version}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        staging.rename(target)
        _make_read_only(target)
        metrics = manifest.get("metrics", {})
        row = ModelVersionRow(
            version=version,
            name=f"clinalign-{kind}",
            kind=kind,
            seq=seq,
            stage="registered",
            base_model=str(base_model or manifest.get("base_model", "")),
            adapter_path=str(target.resolve()) if base_model else "",
            artifact_uri=str(target.resolve()),
            weights_hash=(
                # what is served is base + adapter, so the hash covers both
                hashlib.sha256(
                    f"{weights_hash(base_model)}:{weights_hash(target)}".encode()
                ).hexdigest()
                if base_model
                else weights_hash(target)
            ),
            parent_version=parent_version or str(manifest.get("parent_version", "")),
            snapshot_hash=str(manifest.get("snapshot_hash", "")),
            job_id=job_id,
            metrics_json=json.dumps(metrics if isinstance(metrics, dict) else {}),
            manifest_json=json.dumps(manifest),
            created_at=datetime.now(UTC),
        )
        session.add(row)
        if serve_if_none and self.served(session, kind) is None:
            self._serve(session, row, "initial")
        session.flush()
        return ModelVersion.from_row(row)

    def get(self, session: Session, version: str) -> ModelVersion:
        row = session.get(ModelVersionRow, version)
        if row is None:
            raise NotFound("model version", version, field="version")
        return ModelVersion.from_row(row)

    def list(
        self, session: Session, kind: str | None, limit: int, offset: int
    ) -> list[ModelVersion]:
        query = select(ModelVersionRow).order_by(
            ModelVersionRow.created_at.desc(), ModelVersionRow.seq.desc()
        )
        if kind:
            query = query.where(ModelVersionRow.kind == kind)
        rows = session.scalars(query.limit(limit).offset(offset))
        return [ModelVersion.from_row(r) for r in rows]

    def served(self, session: Session, kind: str) -> ModelVersion | None:
        row = session.scalar(
            select(ModelVersionRow).where(
                ModelVersionRow.kind == kind, ModelVersionRow.stage == "serving"
            )
        )
        return ModelVersion.from_row(row) if row else None

    def _serve(self, session: Session, row: ModelVersionRow, action: str) -> None:
        for current in session.scalars(
            select(ModelVersionRow).where(
                ModelVersionRow.kind == row.kind, ModelVersionRow.stage == "serving"
            )
        ):
            current.stage = "retired"
        row.stage = "serving"
        session.add(
            ServingEventRow(kind=row.kind, version=row.version, action=action, at=datetime.now(UTC))
        )

    def decide(
        self,
        session: Session,
        version: str,
        promoted: bool,
        checks: builtins.list[dict[str, object]],
        principal: str = "",
    ) -> ModelVersion:
        """Applies a gate decision and records it: a promoted version serves and the one it
        replaces retires; a refused one is REJECTED, except a RETIRED version, which stays
        a rollback target."""
        row = session.get(ModelVersionRow, version)
        if row is None:
            raise NotFound("model version", version, field="version")
        if promoted:
            self._serve(session, row, "promote")
        elif row.stage != "retired":
            row.stage = "rejected"
        session.add(
            GateDecisionRow(
                kind=row.kind,
                version=version,
                promoted=promoted,
                checks_json=json.dumps(checks),
                principal=principal,
                at=datetime.now(UTC),
            )
        )
        session.flush()
        return ModelVersion.from_row(row)

    def decisions(
        self, session: Session, version: str | None = None
    ) -> builtins.list[GateDecision]:
        """Gate decisions, oldest first; only those about ``version`` when given."""
        query = select(GateDecisionRow).order_by(GateDecisionRow.id)
        if version:
            query = query.where(GateDecisionRow.version == version)
        return [
            GateDecision(
                r.kind, r.version, r.promoted, json.loads(r.checks_json), r.principal, r.at
            )
            for r in session.scalars(query)
        ]

    def serving_history(self, session: Session, kind: str) -> builtins.list[str]:
        """The versions a rollback can walk back through, oldest first, the served one last:
        each promotion pushes its version and each rollback pops the one it replaced."""
        stack: builtins.list[str] = []
        events = session.scalars(
            select(ServingEventRow).where(ServingEventRow.kind == kind).order_by(ServingEventRow.id)
        )
        for event in events:
            if event.action == "rollback":
                if stack:
                    stack.pop()
            else:
                stack.append(event.version)
        return stack

    def rollback(self, session: Session, kind: str) -> ModelVersion:
        """Serves again the version served before the current one of ``kind``."""
        if kind not in KINDS:
            raise InvalidArgument("kind", f"must be one of {', '.join(KINDS)}")
        served = self.served(session, kind)
        if served is None:
            raise FailedPrecondition(
                f"no {kind} version is served, so there is nothing to roll back"
            )
        history = self.serving_history(session, kind)
        if len(history) < 2:
            raise FailedPrecondition(
                f"{served.version} is the first {kind} version served; there is no earlier "
                "version to roll back to"
            )
        row = session.get(ModelVersionRow, history[-2])
        assert row is not None  # serving events name registered versions only
        self._serve(session, row, "rollback")
        session.flush()
        return ModelVersion.from_row(row)
