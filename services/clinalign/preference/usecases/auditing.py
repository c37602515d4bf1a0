"""Use cases of the audit log: ListAuditEvents and VerifyAudit (the chain is in ``audit``)."""

from __future__ import annotations

from clinalign.common.pagination import next_token, page_bounds
from clinalign.preference import audit
from clinalign.preference.models import AuditRow
from clinalign.preference.usecases import Core, Page


async def list_audit_events(core: Core, page_size: int, page_token: str) -> Page[AuditRow]:
    """Entries in sequence order, up to 1,000 a page (100 by default)."""
    limit, offset = page_bounds(page_size, page_token, default=100, maximum=1000)
    rows = await core.db.run_sync(lambda s: audit.page(s, limit, offset))
    return Page(rows, next_token(offset, limit, len(rows)))


async def verify_audit(core: Core) -> audit.Verification:
    """Walks the whole chain; reports the first entry that does not hold."""
    return await core.db.run_sync(audit.verify)
