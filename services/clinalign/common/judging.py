"""Judges: what decides whether one policy's answers are clinically better or safer than
another's, for the promotion gate, independently of the reward model a policy was optimised
against (a policy that games its reward model must gain nothing here).

A judge reads text only. ``assess`` scores each answer on the criteria it knows (a score in
[0, 1], ``None`` where a criterion does not apply to the question or the answer) and names
the faults it finds as ``clinalign.common.v1.ErrorCategory`` names, so a confirmed flag's
fault can be looked for in a new answer. ``compare`` says which of two answers to the same
prompt is better (1 the first, 0.5 a tie, 0 the second), or is ``None`` for a judge that
does not rank answers (the clinical rule checks find faults; they do not rank fluency).

Judges are chosen by configuration (``TrainerSettings.gate_judges``) through ``load``:

- ``clinical-rules``: the formulary's rule checks (``clinalign.common.clinical_rules``):
  dose limits, contraindications and allergy conflicts;
- ``module.path:factory``: any importable factory of a judge, such as the demo's
  simulated panel (``clinalign.simulation.judge:panel_judge``) or a site's own.

The trainer adds the reward-model judge itself (``reward-model:VERSION``: a second reward
model, trained on another snapshot; never the one the candidate was optimised against), and
the cost-model judge (``cost-model``: the served cost model, read at each decision), which
reports its own safety criterion, ``no_harm``: a judge may declare such criteria in a
``safety_criteria`` attribute, and the gate tests them for non-inferiority as it tests
``SAFETY_CRITERIA``.
A judge that needs a person (a clinician reviewing the replayed answers) would return
``Assessment(pending=True)`` until they decide; the gate treats a pending verdict as not
passed yet.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# The criteria a promoted policy must not make worse than the policy it replaces: the
# rubric's clinical-safety criteria (simulation/RUBRIC.md), which a judge reports under
# these names when it knows them.
SAFETY_CRITERIA = (
    "red_flag_escalation",
    "dose_safety",
    "no_contraindication",
    "hedged_diagnosis",
)


@dataclass(frozen=True)
class Assessment:
    """One judge's reading of one answer."""

    criteria: Mapping[str, float | None] = field(default_factory=dict)
    faults: frozenset[str] = frozenset()  # ErrorCategory names found in the answer
    pending: bool = False  # a person has not decided yet


@runtime_checkable
class Judge(Protocol):
    """What the promotion gate asks of a judge (see the module docstring)."""

    name: str

    async def assess(self, prompts: Sequence[str], answers: Sequence[str]) -> list[Assessment]:
        """One assessment per (prompt, answer)."""
        ...

    async def compare(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> list[float] | None:
        """Per prompt: 1 when ``first`` is better, 0.5 a tie, 0 when ``second`` is; ``None``
        when this judge does not rank answers."""
        ...


COST_MODEL = "cost-model"  # the served cost model, as a judge (built by the trainer)


class JudgeConfigError(ValueError):
    """A configured judge that cannot be loaded; the message names it."""


def load(spec: str) -> Judge:
    """The judge a configuration entry names (see the module docstring)."""
    if spec == COST_MODEL:
        raise JudgeConfigError(
            "the cost-model judge reads the trainer's registry: the trainer builds it"
        )
    if spec == "clinical-rules":
        from clinalign.common.clinical_rules.judge import RulesJudge

        return RulesJudge()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise JudgeConfigError(
            f"judge {spec!r} is neither 'clinical-rules' nor a 'module.path:factory' entry"
        )
    try:
        judge = getattr(importlib.import_module(module_name), attr)()
    except (ImportError, AttributeError, TypeError) as err:
        raise JudgeConfigError(f"judge {spec!r} cannot be loaded: {err}") from None
    if not isinstance(judge, Judge):
        raise JudgeConfigError(f"judge {spec!r} does not make a Judge (name, assess, compare)")
    return judge
