"""``clinalign deid``: text on stdin, de-identified text on stdout.

The command wiring lives in ``clinalign.cli.main``; this is the function it calls, so the
same code that guards the stores can be audited on its own.
"""

from __future__ import annotations

import json

from clinalign.common.deid.engine import Deidentifier
from clinalign.common.deid.settings import DeidSettings


def deid_cli(stdin_text: str, *, as_json: bool, settings: DeidSettings) -> str:
    """The redacted text, or with ``as_json`` a JSON object ``{"text", "spans"}`` whose
    spans give ``start``, ``end`` (offsets into the input), ``type`` and ``score``.

    The JSON never repeats the identifiers themselves: the caller already has the input.
    """
    result = Deidentifier(settings).redact(stdin_text)
    if not as_json:
        return result.text
    return json.dumps(
        {"text": result.text, "spans": [span.to_dict() for span in result.spans]},
        ensure_ascii=False,
    )
