"""The console's pages, by area."""

from __future__ import annotations

from starlette.routing import Route


def routes() -> list[Route]:
    from clinalign.console import dashboard_pages, labelling_pages, review_pages

    return [*labelling_pages.routes(), *review_pages.routes(), *dashboard_pages.routes()]
