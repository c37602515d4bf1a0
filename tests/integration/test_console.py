"""The clinician console over real HTTPS against real preference and monitor services:
a clinician signs in (development sign-in), registers, labels, annotates, corrects and
flags; a second clinician reviews the flag; a clinical lead reads the dashboard; every
record is attributed to the person who made it. And what must be refused: pages without a
session, forms without their CSRF token, another clinician's task, a lead-only page."""

from __future__ import annotations

import re
from pathlib import Path

import httpx2
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from clinalign.monitor.v1 import monitor_pb2 as mpb
from clinalign.monitor.v1 import monitor_pb2_grpc
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.preference.v1 import preference_pb2_grpc
from tests.console_support import ConsoleStack, console_stack, seed_outputs, seed_tasks

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def sign_in(http: httpx2.AsyncClient, user: str) -> str:
    """Signs ``user`` in with the development sign-in; returns the session's CSRF token."""
    page = await http.get("/signin")
    assert page.status_code == 200
    done = await http.post("/auth/dev", data={"user": user, "csrf": CSRF.findall(page.text)[0]})
    assert done.status_code == 303, done.text
    label = await http.get("/outputs")
    assert label.status_code == 200, label.text
    return CSRF.findall(label.text)[0]


def task_form(page: str) -> tuple[str, list[str]]:
    task_id = re.search(r'action="/label/([^"/]+)" id="label-form"', page)
    assert task_id, page
    return task_id.group(1), re.findall(r'name="shown" value="([^"]+)"', page)


async def register(http: httpx2.AsyncClient, csrf: str) -> None:
    page = await http.get("/label")
    assert "Register as an annotator" in page.text
    done = await http.post(
        "/label/register", data={"csrf": csrf, "role": "physician", "specialty": "emergency"}
    )
    assert done.status_code == 303


@pytest.fixture
async def stack(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with console_stack(tmp_path) as running:
        yield running


async def test_label_annotate_correct_flag_and_review_each_attributed(stack: ConsoleStack) -> None:
    await seed_tasks(stack, pairs=3)
    (output_id, *_) = await seed_outputs(stack, 3)
    async with stack.http() as alice:
        csrf = await sign_in(alice, "u-dr-okafor")
        await register(alice, csrf)
        page = await alice.get("/label")
        assert page.status_code == 200 and "Which answer is better?" in page.text
        assert "rubric-2026-11" in page.text and "remaining" in page.text
        task_id, shown = task_form(page.text)
        texts = re.findall(r'<div class="answer-text">(.*?)</div>', page.text, re.S)
        quote = "Take 2 g of paracetamol every hour"
        bad = next(i for i, text in enumerate(texts) if quote in text)
        good = "left" if bad == 1 else "right"
        data = {
            "csrf": csrf,
            "shown": shown,
            "guideline_version": "rubric-2026-11",
            "choice": good,
            f"category{bad}": "ERROR_CATEGORY_UNSAFE_ADVICE",
            f"severity{bad}": "SEVERITY_CRITICAL",
            f"span{bad}": quote,
            "corrects": shown[bad],
            "corrected_text": "Call 999 now if the chest pain is crushing.",
        }
        sent = await alice.post(f"/label/{task_id}", data=data)
        assert sent.status_code == 303 and sent.headers["location"] == "/label?saved=1"
        # A double click or the back button: nothing is written twice.
        again = await alice.post(f"/label/{task_id}", data=data)
        assert again.status_code == 303 and again.headers["location"] == "/label?already=1"
        second = await alice.get("/label")
        assert "Which answer is better?" in second.text
        task_2, shown_2 = task_form(second.text)
        plain = {"csrf": csrf, "shown": shown_2, "guideline_version": "rubric-2026-11"}
        for _ in range(2):  # the store answers the second as a replay
            sent = await alice.post(f"/label/{task_2}", data={**plain, "choice": "tie"})
            assert sent.headers["location"] == "/label?saved=1"
        changed = await alice.post(f"/label/{task_2}", data={**plain, "choice": "left"})
        assert changed.status_code == 409  # another answer to a task already labelled
        flagged = await alice.post(
            f"/outputs/{output_id}/flag",
            data={
                "csrf": csrf,
                "category": "ERROR_CATEGORY_FACTUAL_ERROR",
                "severity": "SEVERITY_HIGH",
                "comment": "The dose is wrong for this patient.",
            },
        )
        assert flagged.status_code == 303
        mine = await alice.get("/review")
        assert "No open flags from others" in mine.text  # her own flag is not hers to review
    async with stack.http() as bob:
        csrf_b = await sign_in(bob, "u-dr-lindqvist")
        queue = await bob.get("/review")
        flag_id = re.search(r'action="/review/([^"]+)"', queue.text)
        assert flag_id, queue.text
        done = await bob.post(
            f"/review/{flag_id.group(1)}",
            data={"csrf": csrf_b, "decision": "confirm", "reason": "Agreed: unsafe dose."},
        )
        assert done.status_code == 303
    async with stack.http() as lead:
        await sign_in(lead, "u-dr-haddad")
        board = await lead.get("/dashboard")
        assert "<td>factual error</td><td>0.333</td>" in board.text  # 1 of 3 outputs
    async with stack.admin("preference") as ch:
        stub = preference_pb2_grpc.PreferenceServiceStub(ch)
        audit = await stub.ListAuditEvents(ppb.ListAuditEventsRequest(page_size=100))
        agreement = await stub.GetAgreement(ppb.GetAgreementRequest(batch_id="console-test"))
    actions = {(e.principal, e.action) for e in audit.events}
    assert ("u-dr-okafor via svc-console", "submit_task") in actions
    assert ("u-dr-okafor via svc-console", "submit_corrections") in actions
    assert [a.labels for a in agreement.annotators] == [2]
    assert agreement.report.position_labels == 1  # the tie is not a position choice
    async with stack.admin("monitor") as ch:
        flags = await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(mpb.ListFlagsRequest())
    (flag,) = flags.flags
    assert (flag.flagged_by, flag.resolved_by) == ("u-dr-okafor", "u-dr-lindqvist")
    assert flag.status == mpb.FLAG_STATUS_CONFIRMED


async def test_what_is_refused_and_the_headers_every_page_carries(stack: ConsoleStack) -> None:
    await seed_tasks(stack, pairs=2, overlap=1)
    async with stack.http() as anonymous:
        away = await anonymous.get("/label")
        assert away.status_code == 303 and away.headers["location"] == "/signin?next=/label"
        forged = await anonymous.post("/auth/dev", data={"user": "u-dr-okafor", "csrf": "x"})
        assert forged.status_code == 403  # no sign-in form was served to this browser
        signin = await anonymous.get("/signin")
        headers = signin.headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
        unknown = await anonymous.post(
            "/auth/dev", data={"user": "u-admin", "csrf": CSRF.findall(signin.text)[0]}
        )
        assert unknown.status_code == 400  # only the demo clinicians
    async with stack.http() as alice, stack.http() as bob:
        csrf = await sign_in(alice, "u-dr-okafor")
        cookie = alice.cookies.get("clinalign_session")
        assert cookie
        set_cookie = (await alice.get("/outputs")).headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "secure" in set_cookie and "samesite=lax" in set_cookie
        await register(alice, csrf)
        task_id, shown = task_form((await alice.get("/label")).text)
        data = {"shown": shown, "guideline_version": "rubric-2026-11", "choice": "left"}
        missing = await alice.post(f"/label/{task_id}", data=data)
        assert missing.status_code == 403 and "expired" in missing.text  # no CSRF token
        wrong = await alice.post(f"/label/{task_id}", data={**data, "csrf": csrf[:-2] + "xx"})
        assert wrong.status_code == 403
        huge = await alice.post(
            f"/label/{task_id}", data={**data, "csrf": csrf, "corrected_text": "x" * 300_000}
        )
        assert huge.status_code == 413
        lead_only = await alice.get("/dashboard")
        assert lead_only.status_code == 403 and "clinical-lead" in lead_only.text
        csrf_b = await sign_in(bob, "u-dr-lindqvist")
        await register(bob, csrf_b)
        theirs = await bob.post(f"/label/{task_id}", data={**data, "csrf": csrf_b})
        assert theirs.status_code == 400 and "was not assigned task" in theirs.text  # alice's
        out = await alice.post("/auth/signout", data={"csrf": csrf})
        assert out.status_code == 303
        assert (await alice.get("/label")).status_code == 303
    async with stack.http() as mallory:  # a tampered cookie is no session
        mallory.cookies.set("clinalign_session", cookie[:-4] + "AAAA", domain="localhost")
        assert (await mallory.get("/label")).status_code == 303


async def test_a_clinical_lead_sees_progress_agreement_flags_and_serving(
    stack: ConsoleStack,
) -> None:
    await seed_tasks(stack, pairs=2, overlap=2)
    first, *_ = await seed_outputs(stack, 4)
    async with stack.admin("monitor") as ch:  # a clinician accepted one draft in the EHR
        stamp = Timestamp()
        stamp.GetCurrentTime()
        await monitor_pb2_grpc.MonitorServiceStub(ch).RecordOutcome(
            mpb.RecordOutcomeRequest(
                output_id=first, outcome=mpb.OUTCOME_ACCEPTED, outcome_time=stamp,
                source="cds-hooks:clinalign-patient-summary",
            )
        )  # fmt: skip
    for user in ("u-dr-okafor", "u-dr-lindqvist"):
        async with stack.http() as http:
            csrf = await sign_in(http, user)
            await register(http, csrf)
            for _ in range(2):
                task_id, shown = task_form((await http.get("/label")).text)
                sent = await http.post(
                    f"/label/{task_id}",
                    data={"csrf": csrf, "shown": shown, "choice": "tie",
                          "guideline_version": "rubric-2026-11"},
                )  # fmt: skip
                assert sent.status_code == 303
            done = await http.get("/label")
            assert "No tasks waiting" in done.text and "2</strong> labelled today" in done.text
    async with stack.http() as lead:
        await sign_in(lead, "u-dr-haddad")
        page = await lead.get("/dashboard")
        assert page.status_code == 200, page.text
        assert "raw agreement 1.000" in page.text and "policy-v2" in page.text
        assert "1 / 0 (100 % accepted)" in page.text
        assert page.text.count('<svg role="img"') >= 2  # labels and agreement plotted
        assert "Unavailable." in page.text  # no trainer in this test: the page says so
        outputs = await lead.get("/outputs", params={"task": "patient_question"})
        assert outputs.text.count('href="/outputs/out-') == 2
        bad = await lead.get("/outputs", params={"since": "yesterday"})
        assert bad.status_code == 400 and "since" in bad.text


async def test_with_an_issuer_only_the_issuer_signs_people_in(tmp_path: Path) -> None:
    """The development sign-in is refused whenever an issuer is configured; a callback
    whose state does not match the request, or with no sign-in under way, signs no one in."""
    from tests.oidc_idp import running_idp

    with running_idp() as issuer:
        async with console_stack(tmp_path, issuer, oidc_client_id="clinalign") as stack:
            async with stack.http() as http:
                page = await http.get("/signin")
                assert "Sign in with your organisation" in page.text
                assert "Development sign-in" not in page.text
                dev = await http.post("/auth/dev", data={"user": "u-dr-okafor", "csrf": "anything"})
                assert dev.status_code == 403 and "Development sign-in is off" in dev.text
                lost = await http.get("/auth/callback", params={"code": "c", "state": "s"})
                assert lost.status_code == 400  # no sign-in under way in this browser
                away = await http.get("/auth/login")
                assert away.status_code == 303
                sent_to = away.headers["location"]
                assert sent_to.startswith(f"{issuer}/oauth2/authorize?")
                assert "code_challenge_method=S256" in sent_to and "nonce=" in sent_to
                forged = await http.get("/auth/callback", params={"code": "c", "state": "forged"})
                assert forged.status_code == 401 and "state" in forged.text
                assert "clinalign_session" not in http.cookies
