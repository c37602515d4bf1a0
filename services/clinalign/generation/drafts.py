"""What the service hands back: a draft, the generation with its provenance.

Every production draft gets an output id and a creation time here, once, so the caller's
provenance and the monitor's record (``reporting``) name the same output.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from clinalign.generation.backend import Generated

FREE_TEXT = "free_text"  # the task of a raw prompt, as the monitor records it
NOTICE = (
    "AI-generated draft for review by a licensed clinician; not medical advice and not "
    "part of the record until a clinician approves it."
)


@dataclass(frozen=True)
class UserMessage:
    """What the model is asked, and the template version that rendered it ("" for raw)."""

    text: str
    template_version: str = ""

    @property
    def task(self) -> str:
        """The drafting task: a template's (its version reads "<task>/<version>",
        ``fhir.RenderedPrompt``), such as "summary"; ``FREE_TEXT`` for a raw prompt."""
        return self.template_version.partition("/")[0] if self.template_version else FREE_TEXT


@dataclass(frozen=True)
class Draft:
    """A finished generation, the message it answers, and its provenance."""

    result: Generated
    message: UserMessage
    output_id: str
    created: datetime
    notice: str = NOTICE


def new_draft(result: Generated, message: UserMessage) -> Draft:
    return Draft(result, message, output_id=f"out-{uuid.uuid4().hex}", created=datetime.now(UTC))
