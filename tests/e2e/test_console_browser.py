"""The clinician console in a real browser (Debian's Chromium driven by Playwright):
clinicians sign in at a real OpenID provider on loopback, one labels five pairs with the
keyboard alone, annotates an error, writes a correction and flags a production output;
a second reviews and confirms the flag, and the confirmed flag reaches the preference
store through the monitor's feedback loop. axe-core checks every page (no serious or
critical WCAG 2.1 AA violation) at desktop and tablet widths, and a screenshot of every
page is kept under ``<artefacts>/console/`` (``CLINALIGN_TEST_ARTEFACTS``, default
``.clinalign/test-artefacts``)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from clinalign.monitor.v1 import monitor_pb2 as mpb
from clinalign.monitor.v1 import monitor_pb2_grpc
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.preference.v1 import preference_pb2_grpc
from tests.console_support import ConsoleStack, console_stack, seed_outputs, seed_tasks
from tests.oidc_idp import running_idp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium"),
]
ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
ARTEFACTS = Path(os.environ.get("CLINALIGN_TEST_ARTEFACTS", ROOT / ".clinalign" / "test-artefacts"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 768, "height": 1024}


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with running_idp() as url:
        yield url


@pytest.fixture
async def stack(tmp_path: Path, issuer: str) -> AsyncIterator[ConsoleStack]:
    secret = tmp_path / "client-secret"
    secret.write_text("test-secret")
    async with console_stack(
        tmp_path, issuer, oidc_client_id="clinalign", oidc_client_secret_file=secret
    ) as running:
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def axe_check(page: Any, name: str) -> None:
    """No serious or critical WCAG 2.0/2.1 A or AA violation on the page as it stands,
    and a screenshot of it."""
    await page.wait_for_load_state("load")
    await page.add_script_tag(content=AXE.read_text())
    result = await page.evaluate(
        "async () => await axe.run(document, {runOnly: {type: 'tag', values: "
        "['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']}})"
    )
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{name}: {bad}"
    out = ARTEFACTS / "console"
    out.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def register_user(issuer: str, subject: str, roles: list[str]) -> None:
    """The person's account at the provider, with their ClinAlign roles."""
    put = httpx2.put(f"{issuer}/users/{subject}", json={"roles": roles, "name": subject})
    assert put.status_code == 204, put.text


async def sign_in(page: Any, stack: ConsoleStack, subject: str) -> None:
    await page.goto(f"{stack.url}/label")
    assert "/signin" in page.url  # an unauthenticated visit is sent to sign in
    await page.get_by_role("link", name="Sign in with your organisation").click()
    await page.fill("input[name=sub]", subject)  # the provider's own page
    await page.get_by_role("button", name="Authorize").click()
    await page.wait_for_url(f"{stack.url}/label")  # back where they were going


async def test_a_labelling_session_and_a_flag_review_in_a_real_browser(
    stack: ConsoleStack, browser: Any, issuer: str
) -> None:
    await seed_tasks(stack, pairs=6, overlap=1)
    output_ids = await seed_outputs(stack, 3)
    register_user(issuer, "u-alice", ["clinician"])
    register_user(issuer, "u-bob", ["clinician", "clinical-lead"])
    context = await browser.new_context(viewport=DESKTOP, ignore_https_errors=True, bypass_csp=True)
    page = await context.new_page()
    await sign_in(page, stack, "u-alice")
    await axe_check(page, "01-register")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Register").click()
    await axe_check(page, "02-label")
    keyboard = page.keyboard
    for n in range(5):
        await page.wait_for_selector("#label-form")
        texts = await page.locator(".answer-text").all_inner_texts()
        unsafe = next(i for i, t in enumerate(texts) if "paracetamol every hour" in t)
        if n == 0:  # an error annotation and a correction, by keyboard too
            side = "left" if unsafe == 0 else "right"
            await page.get_by_text(f"Mark an error in the {side} answer").focus()
            await keyboard.press("Enter")  # opens the annotation
            for field, typed in ((f"#category{unsafe}", "Unsafe"), (f"#severity{unsafe}", "Crit")):
                await page.locator(field).focus()
                await keyboard.type(typed)  # a focused select picks the option typed
            await page.locator(f"#span{unsafe}").focus()
            await keyboard.type("Take 2 g of paracetamol every hour")
            await page.get_by_text("Write a corrected answer").focus()
            await keyboard.press("Enter")
            await page.locator("#corrects").focus()
            await keyboard.type(side.capitalize())
            await page.locator("#corrected_text").focus()
            await keyboard.type("Call 999 now if the chest pain is crushing or you are breathless.")
            await keyboard.press("Tab")  # out of the text field: shortcuts apply again
            assert await page.input_value(f"#category{unsafe}") == "ERROR_CATEGORY_UNSAFE_ADVICE"
            assert await page.input_value(f"#severity{unsafe}") == "SEVERITY_CRITICAL"
        await keyboard.press("2" if unsafe == 0 else "1")  # the safe answer
        await page.locator("#submit-label").focus()
        async with page.expect_navigation():
            await keyboard.press("Enter")
        if n == 0:
            await axe_check(page, "03-label-saved")
    await page.set_viewport_size(TABLET)
    await axe_check(page, "04-label-tablet")
    await page.set_viewport_size(DESKTOP)
    await page.goto(f"{stack.url}/outputs")
    await axe_check(page, "05-outputs")
    await page.goto(f"{stack.url}/outputs/{output_ids[0]}")
    await page.select_option("#category", "ERROR_CATEGORY_FACTUAL_ERROR")
    await page.select_option("#severity", "SEVERITY_CRITICAL")
    await page.fill("#comment", "Wrong dose for a patient with a stomach ulcer.")
    # with a correction, the confirmed flag becomes a correction in the preference store
    await page.fill("#corrected_text", "Avoid ibuprofen with a stomach ulcer; ask a pharmacist.")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Flag output").click()
    await axe_check(page, "06-output-flagged")
    await context.close()

    lead = await browser.new_context(viewport=DESKTOP, ignore_https_errors=True, bypass_csp=True)
    page = await lead.new_page()
    await sign_in(page, stack, "u-bob")
    await page.goto(f"{stack.url}/review")
    await axe_check(page, "07-review")
    await page.fill("input[name=reason]", "Agreed: the dose is unsafe.")
    async with page.expect_navigation():
        await page.get_by_role("button", name="Confirm").click()
    await page.goto(f"{stack.url}/dashboard")
    await axe_check(page, "08-dashboard")
    await page.set_viewport_size(TABLET)
    await axe_check(page, "09-dashboard-tablet")
    await lead.close()
    anonymous = await browser.new_context(
        viewport=DESKTOP, ignore_https_errors=True, bypass_csp=True
    )
    page = await anonymous.new_page()
    await page.goto(f"{stack.url}/signin")
    await axe_check(page, "00-signin")
    await anonymous.close()

    async with stack.admin("preference") as ch:
        pref = preference_pb2_grpc.PreferenceServiceStub(ch)
        audit = await pref.ListAuditEvents(ppb.ListAuditEventsRequest(page_size=200))
    by = [(e.principal, e.action) for e in audit.events]
    assert by.count(("u-alice via svc-console", "submit_task")) == 5
    assert by.count(("u-alice via svc-console", "submit_corrections")) == 1
    async with stack.admin("monitor") as ch:
        flags = await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(mpb.ListFlagsRequest())
    (flag,) = flags.flags
    assert (flag.flagged_by, flag.resolved_by, flag.status) == (
        "u-alice",
        "u-bob",
        mpb.FLAG_STATUS_CONFIRMED,
    )
    for _ in range(100):  # the monitor's feedback loop delivers it to the preference store
        async with stack.admin("monitor") as ch:
            (flag,) = (
                await monitor_pb2_grpc.MonitorServiceStub(ch).ListFlags(mpb.ListFlagsRequest())
            ).flags
        if flag.feedback_state == mpb.FEEDBACK_STATE_DELIVERED:
            break
        await asyncio.sleep(0.2)
    assert flag.feedback_state == mpb.FEEDBACK_STATE_DELIVERED, flag.feedback_reason
