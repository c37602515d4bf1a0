"""The prefetch fallback (CDS Hooks 2.0, "FHIR Resource Access"): what the EHR did not
prefetch, the gateway reads from the EHR's ``fhirServer`` with the bearer token of
``fhirAuthorization``, or, without one, with a token of its own where that server is
registered for SMART Backend Services (``smart``), and only what its prefetch templates
name, about the context's patient.

Each read has a deadline and a size limit, follows no redirect and must answer FHIR JSON;
a server that is slow is a 504 and one that fails or answers anything else a 502, each
naming the prefetch key, so the EHR can tell its FHIR server's fault from its own request's.
The reads run at once (one per missing key).

A search the draft needs whole (``catalogue.WHOLE_SEARCHES``: conditions, medications,
allergies) is read page by page, following each searchset Bundle's ``next`` link (FHIR
paging) on the same server only (its scheme, host, port and base path), so the token never
leaves it; up to ``MAX_PAGES`` pages and ``hooks.MAX_ENTRIES`` entries, all its pages
within the one deadline, beyond which the hook is refused rather than drafted from part of
the record. A ``next`` link that is malformed, off the server or back to a page already
read is refused too: the rest of the search is unknown. A prefetched search that is one
page of several (it has a ``next`` link) is completed the same way, or refused (400) when
the gateway cannot read the server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import Any
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import httpx2

from clinalign.cdshooks.catalogue import SEARCHES, WHOLE_SEARCHES
from clinalign.cdshooks.errors import BadGateway, BadRequest, GatewayTimeout
from clinalign.cdshooks.hooks import MAX_ENTRIES, CheckedHook, searchset
from clinalign.cdshooks.outbound import TokenRefused, read_json
from clinalign.cdshooks.smart import BackendServices

TOKEN = re.compile(r"\{\{context\.([A-Za-z]+)\}\}")
MAX_PAGES = 20  # of one search, its first page included


def query(template: str, context: dict[str, str]) -> str:
    """The relative FHIR URL a prefetch template names, its ``{{context.x}}`` tokens
    replaced by the context's values (FHIR ids, checked before, so they need no escaping;
    every token a service's templates use is in its required context)."""
    return TOKEN.sub(lambda m: context[m.group(1)], template)


class MalformedLink(ValueError):
    """A searchset's ``next`` link without a URL."""


def next_page(value: Any) -> str | None:
    """The ``next`` link of a searchset Bundle (FHIR paging), or None when it has none;
    `MalformedLink` when its next link has no URL."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return None
    links = value.get("link")
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str) or not url.strip():
                raise MalformedLink("its next link has no url")
            return url
    return None


def on_server(url: str, server: str) -> str | None:
    """``url`` (resolved against ``server``) when it is on that FHIR server: the same scheme,
    host and port (a default port written out or not), and its path the base path or under
    it (HAPI's page links are the base with a query); else None."""
    base = server.rstrip("/") + "/"
    absolute = urljoin(base, url.strip())
    a, b = urlsplit(absolute), urlsplit(base)
    try:
        same = (a.scheme, a.hostname, _port(a)) == (b.scheme, b.hostname, _port(b))
    except ValueError:  # a port that is no number
        return None
    under = a.path == b.path.rstrip("/") or a.path.startswith(b.path)
    if not same or a.username is not None or not under or "\\" in absolute:
        return None
    path = f"{unquote(a.path)}/"
    return None if "/../" in path or "/./" in path else absolute


def _port(parts: SplitResult) -> int | None:
    return parts.port or {"https": 443, "http": 80}.get(parts.scheme)


class FhirFetcher:
    """Reads missing prefetch from the EHR's FHIR server."""

    def __init__(
        self,
        timeout_s: float,
        max_bytes: int,
        transport: httpx2.AsyncBaseTransport | None = None,
        smart: BackendServices | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.transport = transport  # tests only
        self.smart = smart  # the gateway's own access to the FHIR servers registered there

    async def missing(self, hook: CheckedHook, issuer: str) -> dict[str, Any]:
        """The results of the service's templates whose keys the hook's prefetch lacks, and
        the whole of each prefetched search that is one page of several; {} when there are
        none. ``issuer`` is the verified EHR that sent the hook: the gateway's own token is
        used only for a FHIR server registered for that EHR."""
        templates = hook.service.prefetch
        keys = [k for k in templates if hook.prefetch.get(k) is None]
        # prefetched searches that are one page of several -> their next link
        partial = {
            k: link
            for k in templates
            if k in WHOLE_SEARCHES and (link := _prefetched_next(hook, k)) is not None
        }
        if not keys and not partial:
            return {}
        server, token = hook.fhir_server, hook.fhir_token
        smart = self.smart if server and self.smart and self.smart.serves(server, issuer) else None
        if server is None or (token is None and smart is None):
            if keys:
                raise BadRequest(
                    f"prefetch.{keys[0]}",
                    f"is missing; send the result of {templates[keys[0]]!r}, or fhirServer "
                    "and fhirAuthorization for the service to read it",
                )
            raise BadRequest(
                f"prefetch.{next(iter(partial))}.link",
                "is one page of the search (it has a 'next' link); send every page, or "
                "fhirServer and fhirAuthorization for the service to read the rest",
            )
        for key in partial:  # the EHR's own page is the EHR's fault when it is wrong: 400
            searchset(hook.prefetch[key], SEARCHES[key], f"prefetch.{key}")
            if on_server(partial[key], server) is None:
                raise BadRequest(f"prefetch.{key}.link", "its next page is not on fhirServer")
        base = server.rstrip("/")
        # key -> its prefetched first page, or None to read it; in template order
        firsts = {k: hook.prefetch.get(k) for k in templates if k in keys or k in partial}
        urls = {k: f"{base}/{query(templates[k], hook.context)}" for k in keys}
        async with httpx2.AsyncClient(
            timeout=self.timeout_s, follow_redirects=False, transport=self.transport
        ) as http:
            for attempt in (1, 2):
                bearer = token
                if bearer is None:  # SMART Backend Services (``smart`` is set: checked above)
                    assert smart is not None
                    bearer = await smart.token(http, server)
                found = await asyncio.gather(
                    *(
                        self._within_deadline(
                            k, self._search(http, base, bearer, k, urls.get(k), firsts[k])
                        )
                        for k in firsts
                    ),
                    return_exceptions=True,
                )
                refused = any(isinstance(r, TokenRefused) for r in found)
                if not (refused and token is None and smart is not None and attempt == 1):
                    break
                smart.forget(server)  # revoked or expired early: one new token, one retry
        for result in found:  # the first key's fault, in template order, whichever came first
            if isinstance(result, BaseException):
                raise result
        return dict(zip(firsts, found, strict=True))

    async def _within_deadline(self, key: str, search: Awaitable[Any]) -> Any:
        """``search`` (every page of it) within the one deadline; 504 naming ``key``."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await search
        except TimeoutError:
            raise GatewayTimeout(
                f"prefetch.{key}", f"fhirServer did not answer the search within {self.timeout_s} s"
            ) from None

    async def _search(
        self,
        http: httpx2.AsyncClient,
        server: str,
        token: str,
        key: str,
        url: str | None,
        first: Any,
    ) -> Any:
        """What ``key``'s template names (read from ``url``, or ``first`` as prefetched),
        with every further page of a search the draft needs whole."""
        if first is None:
            assert url is not None
            first = await self._read(http, token, key, url)
        if key not in WHOLE_SEARCHES or not isinstance(first, dict):
            return first
        entries = first.get("entry", [])
        if not isinstance(entries, list):
            return first  # refused as the search's own fault when the bundle is read
        entries = list(entries)
        field = f"prefetch.{key}"
        seen: set[str] = set()
        page = first
        while (link := _next(page, field)) is not None:
            page_url = on_server(link, server)
            if page_url is None:
                raise BadGateway(f"{field}.link", "the search's next page is not on fhirServer")
            if page_url in seen:
                raise BadGateway(f"{field}.link", "the search's next page is one already read")
            if len(seen) + 1 == MAX_PAGES:
                raise BadGateway(field, f"fhirServer's search has more than {MAX_PAGES} pages")
            seen.add(page_url)
            page = await self._read(http, token, key, page_url)
            if not isinstance(page, dict) or page.get("resourceType") != "Bundle":
                raise BadGateway(f"{field}.resourceType", "fhirServer's next page is no Bundle")
            more = page.get("entry", [])
            if not isinstance(more, list):
                raise BadGateway(f"{field}.entry", "fhirServer's next page: must be an array")
            entries += more
            if len(entries) > MAX_ENTRIES:
                raise BadGateway(
                    f"{field}.entry", f"fhirServer's search has more than {MAX_ENTRIES} entries"
                )
        return {k: v for k, v in first.items() if k != "link"} | {"entry": entries}

    async def _read(self, http: httpx2.AsyncClient, token: str, key: str, url: str) -> Any:
        return await read_json(
            http,
            "GET",
            url,
            field=f"prefetch.{key}",
            what="fhirServer",
            max_bytes=self.max_bytes,
            timeout_s=self.timeout_s,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        )


def _prefetched_next(hook: CheckedHook, key: str) -> str | None:
    """The next link of a prefetched search; 400 naming it when it is malformed."""
    try:
        return next_page(hook.prefetch.get(key))
    except MalformedLink as err:
        raise BadRequest(f"prefetch.{key}.link", str(err)) from None


def _next(page: dict[str, Any], field: str) -> str | None:
    """The next link of a page the server sent; 502 naming it when it is malformed."""
    try:
        return next_page(page)
    except MalformedLink as err:
        raise BadGateway(f"{field}.link", f"fhirServer's page: {err}") from None
