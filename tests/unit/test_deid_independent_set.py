"""The independent de-identification evaluation set is frozen: the committed file has the
committed hash, and its generator (which shares nothing with the detector) still writes
exactly that file."""

from __future__ import annotations

import hashlib
import json

from tests.deid_independent.generator import HASH, OUT, generate, render


def test_the_committed_set_is_the_frozen_one_and_regenerates_byte_for_byte() -> None:
    data = OUT.read_bytes()
    assert hashlib.sha256(data).hexdigest() == HASH.read_text().split()[0]
    again = render(generate())
    # Compared line by line, naming the first difference: pytest's own diff of two
    # 200 KB byte strings runs for many minutes.
    for n, (old, new) in enumerate(zip(data.splitlines(), again.splitlines(), strict=False)):
        assert old == new, f"line {n + 1} regenerates differently"
    assert len(again) == len(data)


def test_every_span_is_in_its_note_and_no_kept_term_overlaps_an_identifier() -> None:
    for line in OUT.read_text().splitlines():
        note = json.loads(line)
        text = note["text"]
        spans = [(s["start"], s["end"]) for s in note["spans"]]
        assert all(text[a:b].strip() for a, b in spans)
        for k in note["keep"]:
            assert not any(a < k["end"] and k["start"] < b for a, b in spans)
