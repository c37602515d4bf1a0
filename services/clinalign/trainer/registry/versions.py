"""The model registry: immutable model versions with their lineage, and what serves each
kind, which every generation and reward replica follows.

A registered version's artefacts are copied into ``<data_dir>/registry/<version>/`` and
made read-only (``storage``); its row records the weights hash, parent, snapshot and
metrics. What serves a kind is its stable version (stage SERVING) and, for a policy, an
optional canary with its traffic share (``serving_canaries``); it changes only by a gate
decision (``decide``), a rollback, or a kind's first registration with ``serve_if_none``,
each appended to ``serving_events`` with who and why (its id is the revision replicas
watch). Every gate decision is kept with its figures and who asked (``gate_decisions``).
"""

from __future__ import annotations

import builtins
import json
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Boolean, DateTime, Float, Integer, String, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from clinalign.common.artefacts import KINDS, MANIFEST_NAME
from clinalign.common.errors import FailedPrecondition, InvalidArgument, NotFound
from clinalign.common.hashing import version_hash
from clinalign.trainer.registry.storage import claim_directory


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


@dataclass(frozen=True)
class ServingState:
    """What serves one kind: the stable version, and the canary with its traffic share."""

    kind: str
    stable: ModelVersion | None
    canary: ModelVersion | None
    canary_share: float
    revision: int  # the newest change of this kind (0: never changed)


@dataclass(frozen=True)
class ServingChange:
    revision: int
    kind: str
    version: str
    action: str
    principal: str
    reason: str
    at: datetime


STABLE_ACTIONS = ("initial", "promote", "rollback")  # the changes a rollback walks back
MAX_CANARY_SHARE = 0.5


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
        if serve_if_none and kind != "policy":
            raise InvalidArgument(
                "serve_if_none",
                f"only the first policy (the foundation model) serves without the gate; a "
                f"{kind} model serves once PromoteModel's gate passes it",
            )
        base_model = _adapter_base(session, source)
        if base_model is None and not (source / "config.json").is_file():
            raise InvalidArgument(
                "path", f"{source} is neither a Hugging Face model nor a LoRA adapter directory"
            )
        manifest: dict[str, object] = {}
        if (source / MANIFEST_NAME).is_file():
            manifest = json.loads((source / MANIFEST_NAME).read_text())
        newest = session.scalar(
            select(func.max(ModelVersionRow.seq)).where(ModelVersionRow.kind == kind)
        )
        seq, target = claim_directory(self.root, kind, (newest or 0) + 1, source)
        try:
            row = self._row(
                session, kind, seq, target, base_model, manifest, parent_version, job_id
            )
        except BaseException as err:
            shutil.rmtree(target, ignore_errors=True)  # ours: nothing else claimed it
            if isinstance(err, FileNotFoundError):  # no weight files to hash
                raise InvalidArgument("path", str(err)) from None
            raise
        if serve_if_none and self.served(session, kind) is None:
            self._serve(session, row, "initial", reason=f"registered: no {kind} version served")
        session.flush()
        return ModelVersion.from_row(row)

    def _row(
        self,
        session: Session,
        kind: str,
        seq: int,
        target: Path,
        base_model: Path | None,
        manifest: dict[str, object],
        parent_version: str,
        job_id: str,
    ) -> ModelVersionRow:
        metrics = manifest.get("metrics", {})
        row = ModelVersionRow(
            version=target.name,
            name=f"clinalign-{kind}",
            kind=kind,
            seq=seq,
            stage="registered",
            base_model=str(base_model or manifest.get("base_model", "")),
            adapter_path=str(target.resolve()) if base_model else "",
            artifact_uri=str(target.resolve()),
            weights_hash=version_hash(target, base_model),
            parent_version=parent_version or str(manifest.get("parent_version", "")),
            snapshot_hash=str(manifest.get("snapshot_hash", "")),
            job_id=job_id,
            metrics_json=json.dumps(metrics if isinstance(metrics, dict) else {}),
            manifest_json=json.dumps(manifest),
            created_at=datetime.now(UTC),
        )
        session.add(row)
        session.flush()  # the primary key is the last word on a version name
        return row

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

    def _serve(
        self,
        session: Session,
        row: ModelVersionRow,
        action: str,
        principal: str = "",
        reason: str = "",
    ) -> None:
        """Makes ``row`` the stable version of its kind. A canary ends with it: it was
        judged beside the version that served until now."""
        self._end_canary(session, row.kind, principal, f"{row.version} now serves")
        for current in session.scalars(
            select(ModelVersionRow).where(
                ModelVersionRow.kind == row.kind, ModelVersionRow.stage == "serving"
            )
        ):
            current.stage = "retired"
        row.stage = "serving"
        self._record(session, row.kind, row.version, action, principal, reason)

    def _record(
        self, session: Session, kind: str, version: str, action: str, principal: str, reason: str
    ) -> None:
        session.add(
            ServingEventRow(
                kind=kind,
                version=version,
                action=action,
                principal=principal,
                reason=reason,
                at=datetime.now(UTC),
            )
        )

    def _canary(
        self, session: Session, row: ModelVersionRow, share: float, principal: str, reason: str
    ) -> None:
        """Makes ``row`` (which passed the gate) the canary of its kind at ``share``."""
        if row.kind != "policy":
            raise InvalidArgument(
                "canary_share", f"canaries are for policies; a {row.kind} model serves whole"
            )
        if not 0 < share <= MAX_CANARY_SHARE:
            raise InvalidArgument("canary_share", f"must be in (0, {MAX_CANARY_SHARE}]")
        existing = session.get(CanaryRow, row.kind)
        if existing is not None and existing.version != row.version:
            self._end_canary(session, row.kind, principal, f"{row.version} replaces it")
            existing = None
        if existing is None:
            session.add(CanaryRow(kind=row.kind, version=row.version, traffic_share=share))
        else:
            existing.traffic_share = share
        row.stage = "canary"
        self._record(
            session,
            row.kind,
            row.version,
            "canary",
            principal,
            reason or f"canary at {share:.0%} of traffic",
        )

    def _end_canary(self, session: Session, kind: str, principal: str, reason: str) -> str:
        """Ends the canary of ``kind``, if any; the version it was stays a version that
        passed the gate (RETIRED). Returns it, or ""."""
        canary = session.get(CanaryRow, kind)
        if canary is None:
            return ""
        row = session.get(ModelVersionRow, canary.version)
        if row is not None and row.stage == "canary":
            row.stage = "retired"
        session.delete(canary)
        session.flush()
        self._record(session, kind, canary.version, "canary_end", principal, reason)
        return canary.version

    def serving_state(self, session: Session, kind: str) -> ServingState:
        canary = session.get(CanaryRow, kind)
        revision = session.scalar(
            select(func.max(ServingEventRow.id)).where(ServingEventRow.kind == kind)
        )
        return ServingState(
            kind=kind,
            stable=self.served(session, kind),
            canary=self.get(session, canary.version) if canary else None,
            canary_share=canary.traffic_share if canary else 0.0,
            revision=revision or 0,
        )

    def revision(self, session: Session) -> int:
        """The newest change of what serves, of any kind; replicas watch it move."""
        return session.scalar(select(func.max(ServingEventRow.id))) or 0

    def changes(self, session: Session, limit: int) -> builtins.list[ServingChange]:
        """The newest ``limit`` changes of what serves, newest first."""
        rows = session.scalars(
            select(ServingEventRow).order_by(ServingEventRow.id.desc()).limit(limit)
        )
        return [
            ServingChange(r.id, r.kind, r.version, r.action, r.principal, r.reason, r.at)
            for r in rows
        ]

    def decide(
        self,
        session: Session,
        version: str,
        promoted: bool,
        checks: builtins.list[dict[str, object]],
        principal: str = "",
        *,
        canary_share: float = 0.0,
        reason: str = "",
    ) -> ModelVersion:
        """Applies a gate decision and records it: a promoted version serves (or, with a
        ``canary_share``, becomes the canary) and the one it replaces retires; a refused one
        is REJECTED, except a RETIRED version, which stays a rollback target."""
        row = session.get(ModelVersionRow, version)
        if row is None:
            raise NotFound("model version", version, field="version")
        if promoted and canary_share:
            self._canary(session, row, canary_share, principal, reason)
        elif promoted:
            self._serve(session, row, "promote", principal, reason or "passed the gate")
        elif row.stage == "canary":
            self._end_canary(session, row.kind, principal, "the gate refused it")
            row.stage = "rejected"
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
            select(ServingEventRow)
            .where(ServingEventRow.kind == kind, ServingEventRow.action.in_(STABLE_ACTIONS))
            .order_by(ServingEventRow.id)
        )
        for event in events:
            if event.action == "rollback":
                if stack:
                    stack.pop()
            else:
                stack.append(event.version)
        return stack

    def rollback(
        self, session: Session, kind: str, principal: str = "", reason: str = ""
    ) -> ModelVersion:
        """Ends the canary of ``kind`` if it has one (the stable version goes on serving);
        else serves again the version served before the current one."""
        if kind not in KINDS:
            raise InvalidArgument("kind", f"must be one of {', '.join(KINDS)}")
        served = self.served(session, kind)
        if self._end_canary(session, kind, principal, reason or "rolled back"):
            if served is None:
                raise FailedPrecondition(f"no {kind} version is served")  # a canary needs one
            return served
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
        self._serve(session, row, "rollback", principal, reason or f"rolled back {served.version}")
        session.flush()
        return ModelVersion.from_row(row)
