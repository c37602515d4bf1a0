"""People sign in at a real OpenID provider on loopback (``tests.oidc_idp``) and call the
preference service over real gRPC with their tokens: each labels only as themselves,
whatever annotator id they put in a request; tokens for another audience or signed by
another key are refused before the request body is read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import grpc.aio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.config import CommonSettings
from clinalign.common.server import RunningServer
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from tests.conftest import client, serving
from tests.oidc_idp import CLIENT_ID, running_idp, sign_in

GUIDE = "2026-11"


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with running_idp() as url:
        yield url


@pytest.fixture
def common(tmp_path: Path, issuer: str) -> CommonSettings:
    settings = CommonSettings(
        data_dir=tmp_path / "data", oidc_issuer=issuer, oidc_audience=CLIENT_ID
    )
    generate_tokens(settings.resolved_tokens_file)
    return settings


@pytest.fixture
async def server(common: CommonSettings, tmp_path: Path) -> AsyncIterator[RunningServer]:
    app = PreferenceApp(
        common,
        PreferenceSettings(port=0, database_url=f"sqlite:///{tmp_path / 'preference.db'}"),
        redact=lambda text: text,
    )
    async with serving(app, common) as running:
        yield running


def _stub(ch: grpc.aio.Channel) -> preference_pb2_grpc.PreferenceServiceStub:
    return preference_pb2_grpc.PreferenceServiceStub(ch)


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


async def _seed(stub: preference_pb2_grpc.PreferenceServiceStub) -> tuple[str, str]:
    """A published guideline, a prompt with two answers (as a service)."""
    await stub.PublishGuidelines(pb.PublishGuidelinesRequest(version=GUIDE, text="Be safe."))
    (pid,) = (
        await stub.SubmitPrompts(
            pb.SubmitPromptsRequest(
                idempotency_key="prompts-0001",
                prompts=[pb.PromptInput(text="Chest pain?", source=pb.PROMPT_SOURCE_CURATED)],
            )
        )
    ).ids
    a, b = (
        await stub.SubmitResponses(
            pb.SubmitResponsesRequest(
                idempotency_key="responses-01",
                responses=[
                    pb.ResponseInput(prompt_id=pid, text="Call 999 now."),
                    pb.ResponseInput(prompt_id=pid, text="Rest at home."),
                ],
            )
        )
    ).ids
    await stub.CreateTasks(
        pb.CreateTasksRequest(
            idempotency_key="tasks-00001",
            batch_id="b1",
            tasks=[pb.TaskSpec(prompt_id=pid, response_ids=[a, b])],
            overlap=2,
            guideline_version=GUIDE,
        )
    )
    return a, b


async def test_a_signed_in_clinician_labels_only_as_themselves(
    server: RunningServer, common: CommonSettings, issuer: str
) -> None:
    admin = token_for_role(common.resolved_tokens_file, Role.ADMIN)
    alice = sign_in(issuer, "u-alice", ["clinician"])
    bob = sign_in(issuer, "u-bob", ["clinician"])
    async with (
        client(server, common, admin) as admin_ch,
        client(server, common, alice) as alice_ch,
        client(server, common, bob) as bob_ch,
    ):
        a, b = await _seed(_stub(admin_ch))
        as_alice, as_bob = _stub(alice_ch), _stub(bob_ch)
        # First use: each registers themselves; the record is linked to their subject.
        mine = await as_alice.RegisterAnnotator(
            pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id="ann-alice", role="physician"))
        )
        assert mine.annotator.subject == "u-alice"
        await as_bob.RegisterAnnotator(
            pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id="ann-bob", role="nurse"))
        )
        # Alice cannot take Bob's record, label as him, or take his tasks.
        taken = await _refused(
            as_alice.RegisterAnnotator(
                pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id="ann-bob", role="nurse"))
            )
        )
        assert taken.code() == grpc.StatusCode.PERMISSION_DENIED
        as_him = pb.Comparison(
            context=pb.LabelContext(annotator_id="ann-bob", guideline_version=GUIDE),
            response_a_id=a,
            response_b_id=b,
            preference=pb.PREFERENCE_B,
        )
        forged = await _refused(
            as_alice.SubmitComparisons(
                pb.SubmitComparisonsRequest(idempotency_key="forged-0001", comparisons=[as_him])
            )
        )
        assert forged.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (forged.details() or "").startswith(
            "comparisons[0].context.annotator_id: 'ann-bob' is not you; you label as 'ann-alice'"
        )
        his_task = await _refused(as_alice.NextTask(pb.NextTaskRequest(annotator_id="ann-bob")))
        assert his_task.code() == grpc.StatusCode.PERMISSION_DENIED
        # Her own work, with no annotator id in the request, is recorded as hers; the
        # overlap slot Bob takes is his.
        task = (await as_alice.NextTask(pb.NextTaskRequest(batch_id="b1"))).task
        done = await as_alice.SubmitTask(
            pb.SubmitTaskRequest(
                idempotency_key="alice-task-1",
                task_id=task.id,
                comparison=pb.Comparison(
                    context=pb.LabelContext(guideline_version=GUIDE),
                    response_a_id=task.responses[0].id,
                    response_b_id=task.responses[1].id,
                    preference=pb.PREFERENCE_A,
                ),
            )
        )
        assert done.label_id
        again = await as_alice.NextTask(pb.NextTaskRequest(batch_id="b1"))
        assert not again.HasField("task")  # one label per person per task
        assert (await as_bob.NextTask(pb.NextTaskRequest(batch_id="b1"))).task.id == task.id
        agreement = await _stub(admin_ch).GetAgreement(pb.GetAgreementRequest(batch_id="b1"))
        assert agreement.report.annotators == 1


async def test_tokens_for_another_audience_or_key_are_unauthenticated(
    server: RunningServer, common: CommonSettings, issuer: str
) -> None:
    good = sign_in(issuer, "u-carol", ["clinician"])
    other_audience = sign_in(issuer, "u-carol", ["clinician"], client_id="another-app")
    claims = jwt.decode(good, options={"verify_signature": False})
    other_key = jwt.encode(
        claims, rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256"
    )
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    no_role = sign_in(issuer, "u-dave", ["offline_access"])
    request = pb.NextTaskRequest()
    for token, code, message in (
        (other_audience, grpc.StatusCode.UNAUTHENTICATED, "audience does not name this service"),
        (other_key, grpc.StatusCode.UNAUTHENTICATED, "signature does not verify"),
        (unsigned, grpc.StatusCode.UNAUTHENTICATED, "algorithm 'none' is not accepted"),
        (no_role, grpc.StatusCode.PERMISSION_DENIED, "carries no ClinAlign role"),
        (good, grpc.StatusCode.FAILED_PRECONDITION, "no annotator is linked to 'u-carol'"),
    ):
        async with client(server, common, token) as ch:
            refused = await _refused(_stub(ch).NextTask(request))
        assert (refused.code(), message in (refused.details() or "")) == (code, True)


async def test_a_refused_call_is_not_deserialized(
    server: RunningServer, common: CommonSettings
) -> None:
    """Bytes that are no protobuf at all: without a valid token the caller learns only that
    it is unauthenticated; the body is never parsed."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        raw = ch.unary_unary(
            "/clinalign.preference.v1.PreferenceService/SubmitComparisons",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        refused = await _refused(
            raw(b"\xff\xfe not a protobuf", metadata=(("authorization", "Bearer nope"),))
        )
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_console_acts_for_the_signed_in_clinician_and_the_audit_shows_both(
    server: RunningServer, common: CommonSettings, issuer: str
) -> None:
    """The console presents its own credential and passes the clinician's token beside
    it: the call runs as her (her annotator, her roles), the audit entry names both; a
    service that is not a front door may not do the same."""
    from clinalign.common.auth import token_for_service
    from clinalign.common.delegation import ON_BEHALF_OF

    alice = sign_in(issuer, "u-alice", ["clinician"])
    console = token_for_service(common.resolved_tokens_file, "console")
    monitor = token_for_service(common.resolved_tokens_file, "monitor")
    admin = token_for_role(common.resolved_tokens_file, Role.ADMIN)
    for_alice = ((ON_BEHALF_OF, alice),)
    async with client(server, common, admin) as admin_ch, client(server, common, console) as ch:
        a, b = await _seed(_stub(admin_ch))
        stub = _stub(ch)
        mine = await stub.RegisterAnnotator(
            pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id="ann-alice", role="gp")),
            metadata=for_alice,
        )
        assert mine.annotator.subject == "u-alice"
        await stub.SubmitComparisons(
            pb.SubmitComparisonsRequest(
                idempotency_key="console-0001",
                comparisons=[
                    pb.Comparison(
                        context=pb.LabelContext(guideline_version=GUIDE),
                        response_a_id=a,
                        response_b_id=b,
                        preference=pb.PREFERENCE_A,
                    )
                ],
            ),
            metadata=for_alice,
        )
        # Without the person, the console's own credential labels nothing.
        alone = await _refused(stub.NextTask(pb.NextTaskRequest(batch_id="b1")))
        assert alone.code() == grpc.StatusCode.PERMISSION_DENIED
        events = await _stub(admin_ch).ListAuditEvents(pb.ListAuditEventsRequest(page_size=100))
    actions = {(e.principal, e.action) for e in events.events}
    assert ("u-alice via svc-console", "register_annotator") in actions
    assert ("u-alice via svc-console", "submit_comparisons") in actions
    async with client(server, common, monitor) as ch:
        refused = await _refused(_stub(ch).NextTask(pb.NextTaskRequest(), metadata=for_alice))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "only the front doors" in (refused.details() or "")
