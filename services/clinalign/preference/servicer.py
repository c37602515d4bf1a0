"""gRPC surface of the preference store: validate → domain → store → protobuf."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TypeVar

import grpc.aio
from sqlalchemy.orm import Session

from clinalign.common.auth import Role, roles
from clinalign.common.context import principal_name
from clinalign.common.db import Database
from clinalign.common.errors import InvalidArgument
from clinalign.common.pagination import next_token, page_bounds
from clinalign.common.protos import timestamp
from clinalign.preference import agreement, audit, convert, queue, snapshots, store
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc

_SVC = "/clinalign.preference.v1.PreferenceService/"
_INGEST = roles(Role.SERVICE, Role.ML_ENGINEER)
_LABEL = roles(Role.CLINICIAN, Role.SERVICE)
_DATA = roles(Role.ML_ENGINEER, Role.SERVICE)
ROLES: Mapping[str, frozenset[Role]] = {
    # service: the monitor registers the pseudonymous clinician behind a confirmed flag
    # before it submits the flag's correction in that clinician's name.
    _SVC + "RegisterAnnotator": roles(Role.ML_ENGINEER, Role.SERVICE),
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

Item = TypeVar("Item")


class PreferenceServicer(preference_pb2_grpc.PreferenceServiceServicer):
    def __init__(self, db: Database, redact: store.Redactor, limits: store.Limits) -> None:
        self.db = db
        self.redact = redact
        self.limits = limits

    async def _submit(
        self,
        key: str,
        rpc: str,
        field: str,
        items: Sequence[Item],
        check: Callable[[str, Item], None],
        write: Callable[[Session, Sequence[Item]], list[str]],
    ) -> store.Batch:
        store.check_batch(field, items, self.limits)
        for i, item in enumerate(items):
            check(f"{field}[{i}]", item)
        who = principal_name()
        return await self.db.run_write(
            lambda s: store.idempotent(s, key, rpc, who, lambda: write(s, items))
        )

    async def RegisterAnnotator(
        self, request: pb.RegisterAnnotatorRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterAnnotatorResponse:
        if not request.HasField("annotator"):
            raise InvalidArgument("annotator", "is required")
        a = store.Annotator(
            request.annotator.id, request.annotator.role, request.annotator.specialty
        )
        store.validate_annotator(a)
        who = principal_name()
        await self.db.run_write(lambda s: store.upsert_annotator(s, who, a))
        return pb.RegisterAnnotatorResponse(annotator=request.annotator)

    async def SubmitPrompts(
        self, request: pb.SubmitPromptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitPromptsResponse:
        items = [convert.prompt_in(p) for p in request.prompts]
        who = principal_name()
        batch = await self._submit(
            request.idempotency_key,
            "submit_prompts",
            "prompts",
            items,
            lambda f, p: store.check_prompt(f, p, self.limits),
            lambda s, ps: store.add_prompts(s, ps, self.redact, who),
        )
        return pb.SubmitPromptsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitResponses(
        self, request: pb.SubmitResponsesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitResponsesResponse:
        items = [
            store.ResponseIn(
                r.prompt_id,
                r.text,
                r.model_version,
                store.generation_params_json(
                    r.generation_params_json, f"responses[{i}].generation_params_json"
                ),
            )
            for i, r in enumerate(request.responses)
        ]

        def check(f: str, r: store.ResponseIn) -> None:
            if not r.prompt_id:
                raise InvalidArgument(f"{f}.prompt_id", "is required")
            store.check_text(f"{f}.text", r.text, self.limits)

        who = principal_name()
        batch = await self._submit(
            request.idempotency_key,
            "submit_responses",
            "responses",
            items,
            check,
            lambda s, rs: store.add_responses(s, rs, self.redact, who),
        )
        return pb.SubmitResponsesResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitComparisons(
        self, request: pb.SubmitComparisonsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitComparisonsResponse:
        batch = await self._submit(
            request.idempotency_key,
            "submit_comparisons",
            "comparisons",
            [convert.comparison_in(c) for c in request.comparisons],
            store.check_comparison,
            store.add_comparisons,
        )
        return pb.SubmitComparisonsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitRankings(
        self, request: pb.SubmitRankingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitRankingsResponse:
        batch = await self._submit(
            request.idempotency_key,
            "submit_rankings",
            "rankings",
            [convert.ranking_in(r) for r in request.rankings],
            store.check_ranking,
            store.add_rankings,
        )
        return pb.SubmitRankingsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitRatings(
        self, request: pb.SubmitRatingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitRatingsResponse:
        batch = await self._submit(
            request.idempotency_key,
            "submit_ratings",
            "ratings",
            [convert.rating_in(r) for r in request.ratings],
            store.check_rating,
            store.add_ratings,
        )
        return pb.SubmitRatingsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitCorrections(
        self, request: pb.SubmitCorrectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitCorrectionsResponse:
        who = principal_name()
        batch = await self._submit(
            request.idempotency_key,
            "submit_corrections",
            "corrections",
            [convert.correction_in(c) for c in request.corrections],
            lambda f, c: store.check_correction(f, c, self.limits),
            lambda s, cs: store.add_corrections(s, cs, self.redact, who),
        )
        return pb.SubmitCorrectionsResponse(ids=batch.ids, replayed=batch.replayed)

    async def SubmitErrorAnnotations(
        self, request: pb.SubmitErrorAnnotationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitErrorAnnotationsResponse:
        batch = await self._submit(
            request.idempotency_key,
            "submit_error_annotations",
            "annotations",
            [convert.annotation_in(a) for a in request.annotations],
            lambda f, a: store.check_annotation(f, a, self.limits),
            lambda s, xs: store.add_annotations(s, xs, self.redact),
        )
        return pb.SubmitErrorAnnotationsResponse(ids=batch.ids, replayed=batch.replayed)

    async def GetPrompt(
        self, request: pb.GetPromptRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPromptResponse:
        if not request.id:
            raise InvalidArgument("id", "is required")
        prompt, responses = await self.db.run_sync(lambda s: store.get_prompt(s, request.id))
        return pb.GetPromptResponse(
            prompt=convert.prompt_out(prompt),
            responses=[convert.response_out(r) for r in responses],
        )

    async def PublishGuidelines(
        self, request: pb.PublishGuidelinesRequest, context: grpc.aio.ServicerContext
    ) -> pb.PublishGuidelinesResponse:
        who = principal_name()
        version = await self.db.run_write(
            lambda s: store.publish_guidelines(s, who, request.version, request.text)
        )
        return pb.PublishGuidelinesResponse(version=version)

    async def VerifyAudit(
        self, request: pb.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> pb.VerifyAuditResponse:
        v = await self.db.run_sync(audit.verify)
        return pb.VerifyAuditResponse(
            ok=v.ok, entries=v.entries, first_bad_sequence=v.first_bad_sequence, message=v.message
        )

    async def ListAuditEvents(
        self, request: pb.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditEventsResponse:
        limit, offset = page_bounds(
            request.page_size, request.page_token, default=100, maximum=1000
        )
        rows = await self.db.run_sync(lambda s: audit.page(s, limit, offset))
        return pb.ListAuditEventsResponse(
            events=[
                pb.AuditEvent(
                    sequence=r.seq,
                    principal=r.principal,
                    action=r.action,
                    object=r.object,
                    time=timestamp(convert.utc(r.at)),
                    entry_hash=r.entry_hash,
                )
                for r in rows
            ],
            next_page_token=next_token(offset, limit, len(rows)),
        )

    # --- labelling queue ---------------------------------------------------------------

    async def CreateTasks(
        self, request: pb.CreateTasksRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateTasksResponse:
        specs = [queue.TaskSpec(t.prompt_id, tuple(t.response_ids)) for t in request.tasks]
        queue.check_create(
            request.batch_id, specs, request.overlap, request.guideline_version, self.limits
        )
        who = principal_name()
        batch = await self.db.run_write(
            lambda s: store.idempotent(
                s,
                request.idempotency_key,
                "create_tasks",
                who,
                lambda: queue.create_tasks(
                    s, request.batch_id, specs, request.overlap, request.guideline_version
                ),
            )
        )
        return pb.CreateTasksResponse(task_ids=batch.ids, replayed=batch.replayed)

    async def NextTask(
        self, request: pb.NextTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.NextTaskResponse:
        if not request.annotator_id:
            raise InvalidArgument("annotator_id", "is required")
        view = await self.db.run_write(
            lambda s: queue.next_task(s, request.annotator_id, request.batch_id)
        )
        if view is None:
            return pb.NextTaskResponse()
        return pb.NextTaskResponse(
            task=pb.Task(
                id=view.task.id,
                batch_id=view.task.batch_id,
                prompt=convert.prompt_out(view.prompt),
                responses=[convert.response_out(r) for r in view.responses],
                guideline_version=view.task.guideline_version,
                guideline_text=view.guideline_text,
            )
        )

    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTaskResponse:
        if not request.task_id:
            raise InvalidArgument("task_id", "is required")
        if not request.annotator_id:
            raise InvalidArgument("annotator_id", "is required")
        which = request.WhichOneof("label")
        comparison = ranking = None
        if which == "comparison":
            comparison = convert.comparison_in(request.comparison)
            comparison = store.ComparisonIn(
                store.LabelMeta(
                    request.annotator_id, comparison.meta.guideline_version, request.task_id
                ),
                comparison.response_a_id,
                comparison.response_b_id,
                comparison.preference,
                comparison.strength,
            )
            store.check_comparison("comparison", comparison)
        elif which == "ranking":
            ranking = store.RankingIn(
                store.LabelMeta(
                    request.annotator_id, request.ranking.context.guideline_version, request.task_id
                ),
                tuple(request.ranking.response_ids),
            )
            store.check_ranking("ranking", ranking)
        ratings = [convert.rating_in(r) for r in request.ratings]
        annotations = [convert.annotation_in(a) for a in request.annotations]
        for i, r in enumerate(ratings):
            store.check_rating(f"ratings[{i}]", r)
        for i, a in enumerate(annotations):
            store.check_annotation(f"annotations[{i}]", a, self.limits)
        who = principal_name()
        batch = await self.db.run_write(
            lambda s: store.idempotent(
                s,
                request.idempotency_key,
                "submit_task",
                who,
                lambda: [
                    queue.submit(
                        s,
                        request.task_id,
                        request.annotator_id,
                        comparison,
                        ranking,
                        ratings,
                        annotations,
                        self.redact,
                    )
                ],
            )
        )
        return pb.SubmitTaskResponse(label_id=batch.ids[0], replayed=batch.replayed)

    async def SkipTask(
        self, request: pb.SkipTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SkipTaskResponse:
        if not request.task_id:
            raise InvalidArgument("task_id", "is required")
        if not request.annotator_id:
            raise InvalidArgument("annotator_id", "is required")
        store.check_text("reason", request.reason, self.limits, required=False)
        who = principal_name()
        await self.db.run_write(
            lambda s: queue.skip(
                s, who, request.task_id, request.annotator_id, request.reason, self.redact
            )
        )
        return pb.SkipTaskResponse()

    async def GetAgreement(
        self, request: pb.GetAgreementRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetAgreementResponse:
        threshold = request.adjudication_threshold or 0.67
        if not 0.0 < threshold <= 1.0:
            raise InvalidArgument("adjudication_threshold", "must be in (0, 1]")
        rows = await self.db.run_sync(lambda s: queue.batch_labels(s, request.batch_id))
        labels = [agreement.Label(t, a, v) for t, a, v in rows]
        report = agreement.agreement_report(labels)
        low = agreement.low_consensus(labels, threshold)
        out = pb.AgreementReport(items=report.pairable_items, annotators=report.annotators)
        for name in ("raw_agreement", "cohen_kappa", "fleiss_kappa", "krippendorff_alpha"):
            value = getattr(report, name)
            if value is not None:
                setattr(out, name, value)
        return pb.GetAgreementResponse(
            report=out,
            adjudication=[
                pb.TaskConsensus(task_id=c.item_id, consensus=c.consensus, labels=c.n_labels)
                for c in low
                if c.n_labels >= 2
            ],
        )

    # --- snapshots ---------------------------------------------------------------------

    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSnapshotResponse:
        f = convert.snapshot_filter(request.filter)
        f.validate()
        who = principal_name()
        row, _ = await self.db.run_write(lambda s: snapshots.create(s, who, f))
        return pb.CreateSnapshotResponse(snapshot=convert.snapshot_out(row))

    async def GetSnapshot(
        self, request: pb.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSnapshotResponse:
        if not request.id:
            raise InvalidArgument("id", "is required: a snapshot id or content hash")
        row = await self.db.run_sync(lambda s: snapshots.get(s, request.id))
        return pb.GetSnapshotResponse(snapshot=convert.snapshot_out(row))

    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSnapshotsResponse:
        limit, offset = page_bounds(request.page_size, request.page_token)
        rows = await self.db.run_sync(lambda s: snapshots.page(s, limit, offset))
        return pb.ListSnapshotsResponse(
            snapshots=[convert.snapshot_out(r) for r in rows],
            next_page_token=next_token(offset, limit, len(rows)),
        )

    async def ExportSnapshot(
        self, request: pb.ExportSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportSnapshotResponse]:
        if not request.id:
            raise InvalidArgument("id", "is required: a snapshot id or content hash")
        fmt = {pb.EXPORT_FORMAT_JSONL: "jsonl", pb.EXPORT_FORMAT_PARQUET: "parquet"}.get(
            request.format
        )
        if fmt is None:
            raise InvalidArgument("format", "must be EXPORT_FORMAT_JSONL or EXPORT_FORMAT_PARQUET")
        kind = {
            pb.EXPORT_KIND_PREFERENCE: snapshots.PREFERENCE,
            pb.EXPORT_KIND_SFT: snapshots.SFT,
        }.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind", "must be EXPORT_KIND_PREFERENCE or EXPORT_KIND_SFT")
        split = {pb.SPLIT_TRAIN: snapshots.TRAIN, pb.SPLIT_EVAL: snapshots.EVAL}.get(request.split)
        who = principal_name()

        def load(s: Session) -> tuple[str, list[tuple[str, str]]]:
            row = snapshots.get(s, request.id)
            audit.append(s, who, "export_snapshot", f"{row.id} {kind} {split or 'all'} {fmt}")
            return row.id, snapshots.records(s, row.id, kind, split)

        _, rows = await self.db.run_write(load)
        render = snapshots.render_jsonl if fmt == "jsonl" else snapshots.render_parquet
        data = await asyncio.to_thread(render, rows, split is None)
        digest = hashlib.sha256(data).hexdigest()
        parts = list(snapshots.chunks(data))
        for i, part in enumerate(parts):
            yield pb.ExportSnapshotResponse(
                chunk=part,
                records=len(rows) if i == 0 else 0,
                file_sha256=digest if i == len(parts) - 1 else "",
            )
