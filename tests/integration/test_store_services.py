"""The DB-backed RPCs of this release (trainer registry, preference annotators, monitor
outputs) through real gRPC, on SQLite and, when configured, PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.common.hashing import weights_hash
from clinalign.common.v1 import common_pb2
from clinalign.monitor import store as monitor_store
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from clinalign.preference import store as preference_store
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2, preference_pb2_grpc
from clinalign.trainer.config import TrainerSettings
from clinalign.trainer.registry import versions as registry
from clinalign.trainer.server import TrainerApp
from clinalign.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from tests.conftest import client, reset_tables, rpc_fails, serving

Token = Callable[[Role], str]


async def test_registry_registers_lists_and_reads_versions(
    common: CommonSettings, token: Token, tiny_model_dir: Path, database_url: str
) -> None:
    reset_tables(database_url, registry.Base)
    app = TrainerApp(common, TrainerSettings(port=0, database_url=database_url))
    async with serving(app, common) as running:
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = trainer_pb2_grpc.TrainerServiceStub(ch)
            req = trainer_pb2.RegisterModelRequest(
                path=str(tiny_model_dir), kind=common_pb2.MODEL_KIND_POLICY, serve_if_none=True
            )
            first = (await stub.RegisterModel(req)).version
            second = (await stub.RegisterModel(req)).version
            page1 = await stub.ListModelVersions(trainer_pb2.ListModelVersionsRequest(page_size=1))
            page2 = await stub.ListModelVersions(
                trainer_pb2.ListModelVersionsRequest(page_size=1, page_token=page1.next_page_token)
            )
            got = await stub.GetModelVersion(
                trainer_pb2.GetModelVersionRequest(version="policy-v1")
            )
            refused = [  # as the gate stores them; a row's check may lack keys
                {"name": "safety:dose_safety", "value": -0.2, "threshold": -0.05,
                 "passed": False, "message": "dose safety regressed"},
                {"name": "win_rate_vs_served", "passed": True},
            ]  # fmt: skip
            await app.db.run_write(
                lambda s: app.registry.decide(s, "policy-v2", False, refused, "ml-1")
            )
            decided = await stub.GetModelVersion(
                trainer_pb2.GetModelVersionRequest(version="policy-v2")
            )
            missing = await rpc_fails(
                stub.GetModelVersion(trainer_pb2.GetModelVersionRequest(version="policy-v9"))
            )
            bad_path = await rpc_fails(
                stub.RegisterModel(
                    trainer_pb2.RegisterModelRequest(
                        path=str(tiny_model_dir / "nope"), kind=common_pb2.MODEL_KIND_POLICY
                    )
                )
            )
            bad_kind = await rpc_fails(
                stub.RegisterModel(trainer_pb2.RegisterModelRequest(path=str(tiny_model_dir)))
            )
    assert (first.ref.version, second.ref.version) == ("policy-v1", "policy-v2")
    assert first.stage == common_pb2.MODEL_STAGE_SERVING  # first of its kind, serve_if_none
    assert second.stage == common_pb2.MODEL_STAGE_REGISTERED
    assert first.weights_hash == weights_hash(tiny_model_dir)
    artefacts = Path(first.artifact_uri)
    assert (artefacts / "config.json").is_file()
    assert not os.access(artefacts / "config.json", os.W_OK) or os.geteuid() == 0
    assert oct((artefacts / "config.json").stat().st_mode)[-3:] == "444"
    assert [v.ref.version for v in page1.versions] == ["policy-v2"]
    assert [v.ref.version for v in page2.versions] == ["policy-v1"]
    assert got.version.ref.version == "policy-v1" and got.manifest_json.startswith("{")
    assert list(got.decisions) == []  # served at registration, never gated
    (decision,) = decided.decisions
    assert (decision.promoted, decision.principal) == (False, "ml-1")
    assert decision.decide_time.seconds > 0
    assert [(c.name, c.value, c.threshold, c.passed, c.message) for c in decision.checks] == [
        ("safety:dose_safety", -0.2, -0.05, False, "dose safety regressed"),
        ("win_rate_vs_served", 0.0, 0.0, True, ""),
    ]
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert (missing.details() or "").startswith("version: model version 'policy-v9' not found")
    assert bad_path.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_path.details() or "").startswith("path:")
    assert bad_kind.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad_kind.details() or "").startswith("kind:")


async def test_annotators_are_pseudonymous_and_validated(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    reset_tables(database_url, preference_store.Base)
    app = PreferenceApp(
        common, PreferenceSettings(port=0, database_url=database_url), redact=lambda t: t
    )
    async with serving(app, common) as running:
        async with client(running, common, token(Role.ML_ENGINEER)) as ch:
            stub = preference_pb2_grpc.PreferenceServiceStub(ch)
            ok = preference_pb2.Annotator(id="ann-007", role="physician", specialty="cardiology")
            resp = await stub.RegisterAnnotator(
                preference_pb2.RegisterAnnotatorRequest(annotator=ok)
            )
            # Re-registering updates in place.
            ok.specialty = "emergency-medicine"
            await stub.RegisterAnnotator(preference_pb2.RegisterAnnotatorRequest(annotator=ok))
            email = await rpc_fails(
                stub.RegisterAnnotator(
                    preference_pb2.RegisterAnnotatorRequest(
                        annotator=preference_pb2.Annotator(id="jane.doe@hospital.org", role="nurse")
                    )
                )
            )
            norole = await rpc_fails(
                stub.RegisterAnnotator(
                    preference_pb2.RegisterAnnotatorRequest(
                        annotator=preference_pb2.Annotator(id="ann-008")
                    )
                )
            )
        rows = await app.db.run_sync(
            lambda s: [(r.id, r.specialty) for r in s.query(preference_store.AnnotatorRow)]
        )
    assert resp.annotator.id == "ann-007"
    assert rows == [("ann-007", "emergency-medicine")]
    assert email.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (email.details() or "").startswith("annotator.id:")
    assert (norole.details() or "").startswith("annotator.role:")


async def test_monitor_records_outputs_once_and_reports_stats(
    common: CommonSettings, token: Token, database_url: str
) -> None:
    reset_tables(database_url, monitor_store.Base)
    app = MonitorApp(common, MonitorSettings(port=0, database_url=database_url))
    outs = [
        monitor_pb2.ProductionOutput(
            output_id=f"o{i}",
            model_version="v1",
            latency_s=0.1 * i,
            completion_tokens=10,
            prompt="patient text",
            text="answer",
        )
        for i in range(1, 5)
    ]
    async with serving(app, common) as running:
        async with client(running, common, token(Role.SERVICE)) as ch:
            stub = monitor_pb2_grpc.MonitorServiceStub(ch)
            first = await stub.RecordOutputs(monitor_pb2.RecordOutputsRequest(outputs=outs))
            again = await stub.RecordOutputs(monitor_pb2.RecordOutputsRequest(outputs=outs[:2]))
            stats = await stub.GetStats(monitor_pb2.GetStatsRequest(model_version="v1"))
    assert (first.recorded, first.duplicates) == (4, 0)
    assert (again.recorded, again.duplicates) == (0, 2)
    (v1,) = stats.versions
    assert v1.outputs == 4
    assert v1.latency_s.mean == pytest.approx(0.25)
    assert v1.latency_s.p50 == pytest.approx(0.25)
    # Text is stored de-identified (tests/integration/test_monitor_service.py checks the
    # redaction itself).
    assert {"prompt", "text"} <= set(monitor_store.OutputRow.__table__.columns.keys())
