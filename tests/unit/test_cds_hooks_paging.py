"""FHIR paging in the gateway's prefetch fallback: the searches a draft needs whole
(conditions, medications, allergies) are read to their last page on the EHR's FHIR server
and nowhere else; a prefetched first page is completed; the limits refuse rather than
draft from part of the record. The FHIR server here is httpx's MockTransport (a stand-in,
answering as FHIR R4's paging section describes); tests/integration/test_cds_hooks.py reads
pages from a real HTTP server through the running gateway."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from clinalign.cdshooks.catalogue import SERVICES
from clinalign.cdshooks.errors import BadGateway, BadRequest, GatewayTimeout
from clinalign.cdshooks.fhir import MAX_PAGES, FhirFetcher, MalformedLink, next_page, on_server
from clinalign.cdshooks.hooks import MAX_ENTRIES, check_hook, hook_call
from tests.cds_hooks_support import hook_request

SERVER = "https://ehr.example/fhir"
SUMMARY = SERVICES["clinalign-patient-summary"]


def allergy(i: int, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "id": f"a-{i}",
        "patient": {"reference": f"Patient/{patient}"},
        "code": {"text": f"synthetic allergen {i}"},
    }


class PagingServer:
    """Answers every search with an empty Bundle, except AllergyIntolerance: ``total``
    allergies in pages of ``size``, each page's ``next`` link made by ``link`` (absolute, on
    the server, by default)."""

    def __init__(self, patient: str, total: int, size: int = 2) -> None:
        self.patient, self.total, self.size = patient, total, size
        self.asked: list[str] = []
        self.link = lambda page: f"{SERVER}/AllergyIntolerance?patient={patient}&_page={page}"

    def page(self, n: int) -> dict[str, Any]:
        first = n * self.size
        ids = range(first, min(first + self.size, self.total))
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": self.total,
            "link": [{"relation": "self", "url": self.link(n)}],
            "entry": [{"resource": allergy(i, self.patient)} for i in ids],
        }
        if first + self.size < self.total:
            bundle["link"].append({"relation": "next", "url": self.link(n + 1)})
        return bundle

    def __call__(self, req: httpx2.Request) -> httpx2.Response:
        self.asked.append(str(req.url))
        assert req.headers["authorization"] == "Bearer stand-in-token"
        if req.url.path.endswith("/AllergyIntolerance"):
            return httpx2.Response(200, json=self.page(int(req.url.params.get("_page", "0"))))
        if "/Patient/" in req.url.path:
            return httpx2.Response(200, json=hook_request()["prefetch"]["patient"])
        return httpx2.Response(200, json={"resourceType": "Bundle", "entry": []})


def hook(missing: tuple[str, ...] = ("allergies",), **prefetched: Any) -> dict[str, Any]:
    body = hook_request()
    body["fhirServer"] = SERVER
    for key in missing:
        del body["prefetch"][key]
    body["prefetch"].update(prefetched)
    return body


async def fetch(body: dict[str, Any], server: PagingServer) -> dict[str, Any]:
    checked = check_hook(body, SUMMARY)
    fetcher = FhirFetcher(1.0, 1 << 20, httpx2.MockTransport(server))
    return await fetcher.missing(checked, "ehr")


def patient_of(body: dict[str, Any]) -> str:
    return str(body["context"]["patientId"])


async def test_every_page_of_a_search_the_draft_needs_whole_is_read() -> None:
    body = hook()
    server = PagingServer(patient_of(body), total=5)
    fetched = await fetch(body, server)
    assert [a["resource"]["id"] for a in fetched["allergies"]["entry"]] == [
        f"a-{i}" for i in range(5)
    ]
    assert "link" not in fetched["allergies"]  # one whole search, no page links left
    assert [u for u in server.asked if "AllergyIntolerance" in u] == [
        f"{SERVER}/AllergyIntolerance?patient={patient_of(body)}",
        *(server.link(n) for n in (1, 2)),
    ]
    # and all five reach the record the draft is written from
    record = json.loads(hook_call(check_hook(body, SUMMARY), fetched).bundle_json)
    kinds = [e["resource"]["resourceType"] for e in record["entry"]]
    assert kinds.count("AllergyIntolerance") == 5


@pytest.mark.parametrize(
    "link",
    [
        "AllergyIntolerance?patient={patient}&_page={page}",  # relative
        "https://ehr.example:443/fhir/AllergyIntolerance?patient={patient}&_page={page}",
        # HAPI FHIR's page links: the base URL with a query
        "https://ehr.example/fhir?_getpages=abc&patient={patient}&_page={page}",
    ],
)
async def test_next_links_on_the_server_are_followed(link: str) -> None:
    body = hook()
    server = PagingServer(patient_of(body), total=3)
    server.link = lambda page: link.format(patient=patient_of(body), page=page)

    def answer(req: httpx2.Request) -> httpx2.Response:
        if "_getpages" in str(req.url):  # HAPI: the page is a query on the base
            server.asked.append(str(req.url))
            return httpx2.Response(200, json=server.page(int(req.url.params["_page"])))
        return server(req)

    checked = check_hook(body, SUMMARY)
    fetched = await FhirFetcher(1.0, 1 << 20, httpx2.MockTransport(answer)).missing(checked, "ehr")
    assert [a["resource"]["id"] for a in fetched["allergies"]["entry"]] == ["a-0", "a-1", "a-2"]


async def test_observations_stop_at_their_first_page() -> None:
    """The observations template asks for the newest 50: a next page is older ones."""
    body = hook(missing=("observations",))
    older = {"relation": "next", "url": f"{SERVER}/Observation?_page=2"}
    server = PagingServer(patient_of(body), total=0)
    fetched = await fetch(body, server)
    assert fetched["observations"]["entry"] == []
    server.asked.clear()

    def with_next(req: httpx2.Request) -> httpx2.Response:
        server.asked.append(str(req.url))
        return httpx2.Response(200, json={"resourceType": "Bundle", "link": [older], "entry": []})

    checked = check_hook(body, SUMMARY)
    await FhirFetcher(1.0, 1 << 20, httpx2.MockTransport(with_next)).missing(checked, "ehr")
    assert len(server.asked) == 1


@pytest.mark.parametrize(
    "link",
    [
        "https://elsewhere.example/fhir/AllergyIntolerance?_page=1",
        "http://ehr.example/fhir/AllergyIntolerance?_page=1",  # another scheme
        "https://ehr.example:8443/fhir/AllergyIntolerance?_page=1",  # another port
        "https://ehr.example/admin/AllergyIntolerance?_page=1",  # outside the base path
        "https://ehr.example/fhir/../admin?_page=1",
        "https://ehr.example/fhir/%2e%2e/admin?_page=1",
        "https://ehr.example@elsewhere.example/fhir/x",  # userinfo: the host is elsewhere
        "https://ehr.example\\@elsewhere.example/fhir/x",
        "//elsewhere.example/fhir/AllergyIntolerance?_page=1",
    ],
)
async def test_a_next_page_off_the_server_is_refused_and_never_asked(link: str) -> None:
    """The EHR's token goes only to its FHIR server: a next link elsewhere is the server's
    fault (502), naming the key's link."""
    body = hook()
    server = PagingServer(patient_of(body), total=4)
    server.link = lambda page: link
    with pytest.raises(BadGateway) as caught:
        await fetch(body, server)
    assert caught.value.field == "prefetch.allergies.link"
    assert caught.value.message == "the search's next page is not on fhirServer"
    assert all(u.startswith(f"{SERVER}/") for u in server.asked)
    assert len([u for u in server.asked if "AllergyIntolerance" in u]) == 1


async def test_a_search_past_the_limits_is_refused_not_drafted_from_a_part() -> None:
    body = hook()
    pages = PagingServer(patient_of(body), total=(MAX_PAGES + 1) * 2)
    with pytest.raises(BadGateway) as caught:
        await fetch(body, pages)
    assert caught.value.field == "prefetch.allergies"
    assert f"more than {MAX_PAGES} pages" in caught.value.message
    assert len([u for u in pages.asked if "AllergyIntolerance" in u]) == MAX_PAGES
    entries = PagingServer(patient_of(body), total=MAX_ENTRIES + 1, size=MAX_ENTRIES // 2)
    with pytest.raises(BadGateway) as caught:
        await fetch(body, entries)
    assert caught.value.field == "prefetch.allergies.entry"


async def test_a_next_page_that_is_no_searchset_is_the_servers_fault() -> None:
    body = hook()
    server = PagingServer(patient_of(body), total=4)
    real = server.__call__

    def broken(req: httpx2.Request) -> httpx2.Response:
        if req.url.params.get("_page") == "1":
            server.asked.append(str(req.url))
            return httpx2.Response(200, json={"resourceType": "Patient", "id": "x"})
        return real(req)

    checked = check_hook(body, SUMMARY)
    with pytest.raises(BadGateway) as caught:
        await FhirFetcher(1.0, 1 << 20, httpx2.MockTransport(broken)).missing(checked, "ehr")
    assert caught.value.field == "prefetch.allergies.resourceType"


async def test_a_prefetched_first_page_is_completed_from_the_server() -> None:
    body = hook(missing=())
    server = PagingServer(patient_of(body), total=5)
    body["prefetch"]["allergies"] = server.page(0)
    fetched = await fetch(body, server)
    assert list(fetched) == ["allergies"]  # nothing else is read
    assert [a["resource"]["id"] for a in fetched["allergies"]["entry"]] == [
        f"a-{i}" for i in range(5)
    ]
    assert server.asked == [server.link(1), server.link(2)]


async def test_a_prefetched_first_page_without_server_access_is_refused() -> None:
    """Drafting from the first page of the allergies would leave the rest out: a 400 that
    names the link and says what to send."""
    body = hook(missing=())
    server = PagingServer(patient_of(body), total=5)
    body["prefetch"]["allergies"] = server.page(0)
    del body["fhirServer"], body["fhirAuthorization"]
    with pytest.raises(BadRequest) as caught:
        await fetch(body, server)
    assert caught.value.field == "prefetch.allergies.link"
    assert "send every page" in caught.value.message
    assert server.asked == []


def test_next_page_reads_only_a_bundles_next_link() -> None:
    link = {"relation": "next", "url": f"{SERVER}/Condition?_page=2"}
    assert next_page({"resourceType": "Bundle", "link": [link]}) == link["url"]
    assert next_page({"resourceType": "Bundle", "link": [{"relation": "self", "url": "x"}]}) is None
    assert next_page({"resourceType": "Patient", "link": [link]}) is None
    assert next_page({"resourceType": "Bundle", "link": "not a list"}) is None
    assert next_page(None) is None
    for url in (3, "", " ", None):  # a next page there is, but where is unknown
        with pytest.raises(MalformedLink):
            next_page({"resourceType": "Bundle", "link": [{"relation": "next", "url": url}]})


async def test_a_malformed_next_link_is_refused_not_taken_for_the_last_page() -> None:
    body = hook()
    server = PagingServer(patient_of(body), total=4)
    broken = server.page
    server.page = lambda n: {**broken(n), "link": [{"relation": "next", "url": 3}]}  # type: ignore[method-assign]
    with pytest.raises(BadGateway) as caught:
        await fetch(body, server)
    assert caught.value.field == "prefetch.allergies.link"
    assert caught.value.message == "fhirServer's page: its next link has no url"
    prefetched = hook(missing=())
    prefetched["prefetch"]["allergies"] = server.page(0)
    with pytest.raises(BadRequest) as caught_400:
        await fetch(prefetched, server)
    assert caught_400.value.field == "prefetch.allergies.link"


async def test_a_next_link_back_to_a_page_already_read_is_refused() -> None:
    body = hook()
    server = PagingServer(patient_of(body), total=6)
    server.link = lambda page: f"{SERVER}/AllergyIntolerance?_page=1"  # page 1 links to itself
    with pytest.raises(BadGateway) as caught:
        await fetch(body, server)
    assert caught.value.field == "prefetch.allergies.link"
    assert caught.value.message == "the search's next page is one already read"
    assert len([u for u in server.asked if "AllergyIntolerance" in u]) == 2


async def test_all_pages_of_a_search_share_one_deadline() -> None:
    """Each page answers within the deadline, the search as a whole does not: 504."""
    import asyncio

    body = hook()
    server = PagingServer(patient_of(body), total=12)

    async def slow(req: httpx2.Request) -> httpx2.Response:
        await asyncio.sleep(0.15)
        return server(req)

    checked = check_hook(body, SUMMARY)
    with pytest.raises(GatewayTimeout) as caught:
        await FhirFetcher(0.5, 1 << 20, httpx2.MockTransport(slow)).missing(checked, "ehr")
    assert caught.value.field == "prefetch.allergies"
    assert "did not answer the search within 0.5 s" in caught.value.message


async def test_a_prefetched_page_linking_off_the_server_is_the_ehrs_fault() -> None:
    body = hook(missing=())
    server = PagingServer(patient_of(body), total=5)
    server.link = lambda page: f"https://elsewhere.example/fhir/AllergyIntolerance?_page={page}"
    body["prefetch"]["allergies"] = server.page(0)
    with pytest.raises(BadRequest) as caught:
        await fetch(body, server)
    assert caught.value.field == "prefetch.allergies.link"
    assert server.asked == []


@pytest.mark.parametrize(
    "server", [f"{SERVER}?tenant=a", f"{SERVER}#x", "https://user@ehr.example/fhir"]
)
def test_fhir_server_must_be_a_plain_base_url(server: str) -> None:
    body = hook_request()
    body["fhirServer"] = server
    with pytest.raises(BadRequest) as caught:
        check_hook(body, SUMMARY)
    assert caught.value.field == "fhirServer"
    assert "without credentials, query or fragment" in caught.value.message


def test_on_server_keeps_scheme_host_port_and_base_path() -> None:
    assert on_server("https://EHR.example/fhir/x?a=1", SERVER) == "https://EHR.example/fhir/x?a=1"
    assert on_server("https://ehr.example/fhir?_getpages=a", SERVER) is not None
    assert on_server("https://ehr.example:443/fhir/x", SERVER) is not None
    assert on_server("https://ehr.example:x/fhir/x", SERVER) is None
    assert on_server("/fhir/x", SERVER) == f"{SERVER}/x"
    assert on_server("//elsewhere.example/fhir/x", SERVER) is None
    assert on_server("https://ehr.example/fhirx/a", SERVER) is None
    assert on_server("https://ehr.example/fhir/%2e%2e/admin", SERVER) is None


async def test_a_malformed_prefetched_page_is_the_ehrs_fault_before_any_read() -> None:
    body = hook(missing=())
    server = PagingServer(patient_of(body), total=5)
    first = server.page(0)
    first["entry"][0]["resource"]["resourceType"] = "Condition"
    body["prefetch"]["allergies"] = first
    with pytest.raises(BadRequest) as caught:
        await fetch(body, server)
    assert caught.value.field == "prefetch.allergies.entry[0].resource.resourceType"
    assert server.asked == []
