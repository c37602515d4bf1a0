"""Page tokens for list RPCs: an opaque, validated offset."""

from __future__ import annotations

import base64

from clinalign.common.errors import InvalidArgument

MAX_OFFSET = 2**31 - 1  # far past any listing; keeps OFFSET within every database's range


def page_bounds(
    page_size: int, page_token: str, *, default: int = 20, maximum: int = 100
) -> tuple[int, int]:
    """(limit, offset) from a request's page_size and page_token."""
    if page_size < 0 or page_size > maximum:
        raise InvalidArgument("page_size", f"must be between 0 and {maximum}, got {page_size}")
    offset = 0
    if page_token:
        try:
            offset = int(base64.urlsafe_b64decode(page_token.encode()).decode().removeprefix("o:"))
        except ValueError as exc:
            raise InvalidArgument("page_token", "is not a token this service issued") from exc
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidArgument("page_token", "is not a token this service issued")
    return page_size or default, offset


def next_token(offset: int, limit: int, returned: int) -> str:
    if returned < limit:
        return ""
    return base64.urlsafe_b64encode(f"o:{offset + limit}".encode()).decode()
