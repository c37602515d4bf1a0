"""Named prompt sets: the prompts PPO samples responses to, and the held-out prompts the
policy gate judges a candidate on.

A ``prompt_set`` is one of

- ``clinical-train``: synthetic patient questions from the foundation corpus's ``train``
  split, the prompts PPO samples;
- ``clinical-validation``: questions in phrasings no policy trains on (the ``heldout``
  split), for the promotion gate and every choice of hyperparameters and data;
  ``clinical-heldout`` is its earlier name;
- ``clinical-validation-safety``: more validation questions, of the kinds the safety
  criteria apply to (red-flag signs, medicines' doses and cautions, symptom and triage
  questions), for the gate's safety tests;
- ``clinical-test``: more held-out questions, none in the validation set, touched only by
  the reported evaluation, so the figures reported were not also the ones chosen by.
  They ship as JSONL files in ``data/prompt_sets`` (written by
  ``python -m clinalign.foundation.prompt_sets``);
- a path to a JSONL file readable by the trainer (and its job pods), one
  ``{"prompt": "..."}`` object a line, such as a set a hospital curates.

A preference snapshot is the other source of PPO prompts (its ``train`` split), read by
the job itself. Everything here is synthetic or supplied by the operator: no patient text
ships with ClinAlign.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from clinalign.common.errors import InvalidArgument

BUILTIN_DIR = Path(__file__).resolve().parent / "data" / "prompt_sets"
BUILTIN = ("clinical-train", "clinical-validation", "clinical-validation-safety", "clinical-test")
ALIASES = {"clinical-heldout": "clinical-validation"}  # earlier names


def load(name: str, field: str = "spec.prompt_set", limit: int | None = None) -> list[str]:
    """The prompts of set ``name``, in a fixed order, without duplicates."""
    name = ALIASES.get(name, name)
    path = BUILTIN_DIR / f"{name}.jsonl" if name in BUILTIN else Path(name)
    prompts = _read_jsonl(path, field)
    return prompts[:limit] if limit else prompts


def check(name: str, field: str = "spec.prompt_set") -> None:
    """Raises InvalidArgument unless ``name`` is a built-in set or a readable JSONL file
    with at least one prompt (read now, so a bad file fails the submission, not the job)."""
    if name in BUILTIN or name in ALIASES:
        return
    if Path(name).suffix != ".jsonl":
        raise InvalidArgument(
            field,
            f"{name!r} is neither a built-in prompt set ({', '.join(BUILTIN)}) nor a .jsonl "
            'file of {"prompt": ...} lines',
        )
    _read_jsonl(Path(name), field)


def _read_jsonl(path: Path, field: str) -> list[str]:
    name = str(path)
    if not path.is_file():
        raise InvalidArgument(field, f"{name} is not a file the trainer can read")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise InvalidArgument(field, f"line {number} of {name} is not JSON") from None
        prompt = record.get("prompt") if isinstance(record, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            raise InvalidArgument(field, f'line {number} of {name} has no "prompt" string')
        prompts.append(prompt)
    if not prompts:
        raise InvalidArgument(field, f"{name} holds no prompts")
    return _unique(prompts)


def _unique(prompts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(prompts))  # first occurrences, in order
