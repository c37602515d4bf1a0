"""gRPC surface of the preference store."""

from __future__ import annotations

from collections.abc import Mapping

import grpc.aio

from clinalign.common.auth import Role, roles
from clinalign.common.db import Database
from clinalign.common.errors import InvalidArgument
from clinalign.preference import store
from clinalign.preference.v1 import preference_pb2, preference_pb2_grpc

_SVC = "/clinalign.preference.v1.PreferenceService/"
_INGEST = roles(Role.SERVICE, Role.ML_ENGINEER)
_LABEL = roles(Role.CLINICIAN, Role.SERVICE)
_DATA = roles(Role.ML_ENGINEER, Role.SERVICE)
ROLES: Mapping[str, frozenset[Role]] = {
    _SVC + "RegisterAnnotator": roles(Role.ML_ENGINEER),
    _SVC + "SubmitPrompts": _INGEST,
    _SVC + "SubmitResponses": _INGEST,
    _SVC + "SubmitComparisons": _LABEL,
    _SVC + "SubmitRankings": _LABEL,
    _SVC + "SubmitRatings": _LABEL,
    _SVC + "SubmitCorrections": _LABEL,
    _SVC + "SubmitErrorAnnotations": _LABEL,
    _SVC + "GetPrompt": roles(Role.CLINICIAN, Role.ML_ENGINEER, Role.SERVICE),
    _SVC + "PublishGuidelines": roles(Role.ML_ENGINEER),
    _SVC + "CreateTasks": _INGEST,
    _SVC + "NextTask": _LABEL,
    _SVC + "SubmitTask": _LABEL,
    _SVC + "SkipTask": _LABEL,
    _SVC + "GetAgreement": _DATA,
    _SVC + "CreateSnapshot": _DATA,
    _SVC + "GetSnapshot": _DATA,
    _SVC + "ListSnapshots": _DATA,
    _SVC + "ExportSnapshot": _DATA,
    _SVC + "ListAuditEvents": roles(),
    _SVC + "VerifyAudit": roles(),
}


class PreferenceServicer(preference_pb2_grpc.PreferenceServiceServicer):
    """RegisterAnnotator is live; the rest of the store arrives with its own issue and
    answers UNIMPLEMENTED until then."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def RegisterAnnotator(
        self, request: preference_pb2.RegisterAnnotatorRequest, context: grpc.aio.ServicerContext
    ) -> preference_pb2.RegisterAnnotatorResponse:
        if not request.HasField("annotator"):
            raise InvalidArgument("annotator", "is required")
        a = store.Annotator(
            id=request.annotator.id,
            role=request.annotator.role,
            specialty=request.annotator.specialty,
        )
        store.validate_annotator(a)
        await self.db.run_sync(lambda s: store.upsert_annotator(s, a))
        return preference_pb2.RegisterAnnotatorResponse(annotator=request.annotator)
