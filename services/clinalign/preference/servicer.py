"""gRPC surface of the preference store: each RPC converts its request (``convert``), makes
one call into its use case (``usecases``), where validation, the transaction and the
invariants live, and converts the result back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import grpc.aio

from clinalign.common.auth import Role, ServiceCallers, roles
from clinalign.common.context import current_principal, principal_shown
from clinalign.common.db import Database
from clinalign.preference import convert
from clinalign.preference.domain import Limits, Redactor
from clinalign.preference.identity import Caller
from clinalign.preference.usecases import Core, auditing, exports, ingest, labelling
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc

_SVC = "/clinalign.preference.v1.PreferenceService/"
_INGEST = roles(Role.SERVICE, Role.ML_ENGINEER)
_LABEL = roles(Role.CLINICIAN, Role.CLINICAL_LEAD, Role.SERVICE)
# Clinicians label only as themselves; services and admins name the annotator
# (``identity``).
_DATA = roles(Role.ML_ENGINEER, Role.SERVICE)
# A clinical lead reads each annotator's agreement (the labelling dashboard).
_AGREEMENT = roles(Role.CLINICAL_LEAD, Role.ML_ENGINEER, Role.SERVICE)
ROLES: Mapping[str, frozenset[Role]] = {
    # service: the monitor registers the pseudonymous clinician behind a confirmed flag
    # before it submits the flag's correction in that clinician's name; a clinician
    # registers themselves (linked to their subject).
    _SVC + "RegisterAnnotator": roles(
        Role.CLINICIAN, Role.CLINICAL_LEAD, Role.ML_ENGINEER, Role.SERVICE
    ),
    _SVC + "SubmitPrompts": _INGEST,
    _SVC + "SubmitResponses": _INGEST,
    _SVC + "SubmitComparisons": _LABEL,
    _SVC + "SubmitRankings": _LABEL,
    _SVC + "SubmitRatings": _LABEL,
    _SVC + "SubmitCorrections": _LABEL,
    _SVC + "SubmitErrorAnnotations": _LABEL,
    _SVC + "GetPrompt": roles(Role.CLINICIAN, Role.CLINICAL_LEAD, Role.ML_ENGINEER, Role.SERVICE),
    _SVC + "PublishGuidelines": roles(Role.ML_ENGINEER),
    _SVC + "CreateTasks": _INGEST,
    _SVC + "NextTask": _LABEL,
    _SVC + "SubmitTask": _LABEL,
    _SVC + "SkipTask": _LABEL,
    # A clinician reads their own progress, a clinical lead anyone's (``identity``).
    _SVC + "GetProgress": _LABEL,
    _SVC + "GetAgreement": _AGREEMENT,
    _SVC + "CreateSnapshot": _DATA,
    _SVC + "GetSnapshot": _DATA,
    _SVC + "ListSnapshots": _DATA,
    _SVC + "ExportSnapshot": _DATA,
    _SVC + "ListAuditEvents": roles(),
    _SVC + "VerifyAudit": roles(),
}

# Which ClinAlign services' own credentials may call the RPCs role service may call: the
# monitor files a confirmed flag's prompt, drafts, correction, annotations and task, and
# cuts the retraining snapshot; the trainer and its jobs read snapshots. People's labels
# come from people (or an integration's own service account), never from a pod.
SERVICE_CALLERS: ServiceCallers = {
    _SVC + "RegisterAnnotator": frozenset({"monitor"}),
    _SVC + "SubmitPrompts": frozenset({"monitor"}),
    _SVC + "SubmitResponses": frozenset({"monitor"}),
    _SVC + "SubmitComparisons": frozenset(),
    _SVC + "SubmitRankings": frozenset(),
    _SVC + "SubmitRatings": frozenset(),
    _SVC + "SubmitCorrections": frozenset({"monitor"}),
    _SVC + "SubmitErrorAnnotations": frozenset({"monitor"}),
    _SVC + "GetPrompt": frozenset(),
    _SVC + "CreateTasks": frozenset({"monitor"}),
    _SVC + "NextTask": frozenset(),
    _SVC + "SubmitTask": frozenset(),
    _SVC + "SkipTask": frozenset(),
    # The console asks as the signed-in person (common.delegation), not as itself.
    _SVC + "GetProgress": frozenset(),
    _SVC + "GetAgreement": frozenset(),
    _SVC + "CreateSnapshot": frozenset({"monitor"}),
    _SVC + "GetSnapshot": frozenset({"monitor", "trainer", "trainer-job"}),
    _SVC + "ListSnapshots": frozenset(),
    _SVC + "ExportSnapshot": frozenset({"trainer", "trainer-job"}),
}


def _caller() -> Caller:
    return Caller.of(current_principal())


class PreferenceServicer(preference_pb2_grpc.PreferenceServiceServicer):
    def __init__(self, db: Database, redact: Redactor, limits: Limits) -> None:
        self.core = Core(db, redact, limits)

    # --- annotators, prompts, responses and labels -----------------------------------

    async def RegisterAnnotator(
        self, request: pb.RegisterAnnotatorRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterAnnotatorResponse:
        annotator = await ingest.register_annotator(
            self.core, _caller(), convert.annotator_in(request)
        )
        return pb.RegisterAnnotatorResponse(annotator=convert.annotator_out(annotator))

    async def SubmitPrompts(
        self, request: pb.SubmitPromptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitPromptsResponse:
        batch = await ingest.submit_prompts(
            self.core,
            principal_shown(),
            request.idempotency_key,
            [convert.prompt_in(p) for p in request.prompts],
        )
        return pb.SubmitPromptsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitResponses(
        self, request: pb.SubmitResponsesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitResponsesResponse:
        batch = await ingest.submit_responses(
            self.core,
            principal_shown(),
            request.idempotency_key,
            [convert.response_in(r) for r in request.responses],
        )
        return pb.SubmitResponsesResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitComparisons(
        self, request: pb.SubmitComparisonsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitComparisonsResponse:
        batch = await ingest.submit_comparisons(
            self.core,
            _caller(),
            request.idempotency_key,
            [convert.comparison_in(c) for c in request.comparisons],
        )
        return pb.SubmitComparisonsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitRankings(
        self, request: pb.SubmitRankingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitRankingsResponse:
        batch = await ingest.submit_rankings(
            self.core,
            _caller(),
            request.idempotency_key,
            [convert.ranking_in(r) for r in request.rankings],
        )
        return pb.SubmitRankingsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitRatings(
        self, request: pb.SubmitRatingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitRatingsResponse:
        batch = await ingest.submit_ratings(
            self.core,
            _caller(),
            request.idempotency_key,
            [convert.rating_in(r) for r in request.ratings],
        )
        return pb.SubmitRatingsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitCorrections(
        self, request: pb.SubmitCorrectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitCorrectionsResponse:
        batch = await ingest.submit_corrections(
            self.core,
            _caller(),
            request.idempotency_key,
            [convert.correction_in(c) for c in request.corrections],
        )
        return pb.SubmitCorrectionsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitErrorAnnotations(
        self, request: pb.SubmitErrorAnnotationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitErrorAnnotationsResponse:
        batch = await ingest.submit_error_annotations(
            self.core,
            _caller(),
            request.idempotency_key,
            [convert.annotation_in(a) for a in request.annotations],
        )
        return pb.SubmitErrorAnnotationsResponse(ids=batch.ids, replayed=batch.replayed)

    async def GetPrompt(
        self, request: pb.GetPromptRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPromptResponse:
        prompt, responses = await ingest.get_prompt(self.core, request.id)
        return pb.GetPromptResponse(
            prompt=convert.prompt_out(prompt),
            responses=[convert.response_out(r) for r in responses],
        )

    async def PublishGuidelines(
        self, request: pb.PublishGuidelinesRequest, context: grpc.aio.ServicerContext
    ) -> pb.PublishGuidelinesResponse:
        version = await ingest.publish_guidelines(
            self.core, principal_shown(), request.version, request.text
        )
        return pb.PublishGuidelinesResponse(version=version)

    # --- audit log -----------------------------------------------------------------------

    async def VerifyAudit(
        self, request: pb.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyAuditResponse:
        return convert.verification_out(await auditing.verify_audit(self.core))

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        page = await auditing.list_audit_events(self.core, request.page_size, request.page_token)
        return pb.ListAuditEventsResponse(
            events=[convert.audit_event_out(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    # --- labelling queue -----------------------------------------------------------------

    async def CreateTasks(
        self, request: pb.CreateTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTasksResponse:
        batch = await labelling.create_tasks(
            self.core,
            principal_shown(),
            request.idempotency_key,
            request.batch_id,
            [convert.task_spec(t) for t in request.tasks],
            request.overlap,
            request.guideline_version,
        )
        return pb.CreateTasksResponse(task_ids=batch.ids, replayed=batch.replayed)

    async def NextTask(
        self, request: pb.NextTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.NextTaskResponse:
        view = await labelling.next_task(
            self.core, _caller(), request.annotator_id, request.batch_id
        )
        if view is None:
            return pb.NextTaskResponse()
        return pb.NextTaskResponse(task=convert.task_out(view))

    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTaskResponse:
        batch = await labelling.submit_task(
            self.core,
            _caller(),
            request.idempotency_key,
            convert.task_submission(request),
        )
        return pb.SubmitTaskResponse(label_id=batch.ids[0], replayed=batch.replayed)

    async def SkipTask(
        self, request: pb.SkipTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SkipTaskResponse:
        await labelling.skip_task(
            self.core, _caller(), request.task_id, request.annotator_id, request.reason
        )
        return pb.SkipTaskResponse()

    async def GetProgress(
        self, request: pb.GetProgressRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProgressResponse:
        progress = await labelling.get_progress(
            self.core, _caller(), request.annotator_id, request.batch_id
        )
        return convert.progress_out(progress)

    async def GetAgreement(
        self, request: pb.GetAgreementRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAgreementResponse:
        result = await labelling.get_agreement(
            self.core, request.batch_id, convert.adjudication_threshold(request)
        )
        return convert.agreement_out(result)

    # --- snapshots -----------------------------------------------------------------------

    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSnapshotResponse:
        row = await exports.create_snapshot(
            self.core, principal_shown(), convert.snapshot_filter(request.filter)
        )
        return pb.CreateSnapshotResponse(snapshot=convert.snapshot_out(row))

    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSnapshotResponse:
        row = await exports.get_snapshot(self.core, request.id)
        return pb.GetSnapshotResponse(snapshot=convert.snapshot_out(row))

    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSnapshotsResponse:
        page = await exports.list_snapshots(self.core, request.page_size, request.page_token)
        return pb.ListSnapshotsResponse(
            snapshots=[convert.snapshot_out(r) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def ExportSnapshot(
        self, request: pb.ExportSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportSnapshotResponse]:
        export = await exports.export_snapshot(
            self.core,
            principal_shown(),
            request.id,
            convert.FORMAT_FROM_PROTO.get(request.format, ""),
            convert.KIND_FROM_PROTO.get(request.kind, ""),
            convert.SPLIT_FROM_PROTO.get(request.split),
        )
        for message in convert.export_out(export):
            yield message
