"""A SIMULATED clinician panel and the clinical quality rubric that drives it.

The panel stands in for people in the demonstration: it labels candidate pairs and flags
monitored outputs from the rubric's scores, with per-annotator noise. It never reads the
reward model. See `rubric.py` (and RUBRIC.md) for the criteria and `panel.py` for the
simulation.
"""

from importlib import resources

from .panel import FlagDecision, Judgement, SimulatedPanel, majority, panel_agreement
from .rubric import CRITERIA, RubricScore, score

__all__ = [
    "CRITERIA",
    "FlagDecision",
    "Judgement",
    "RubricScore",
    "SimulatedPanel",
    "majority",
    "panel_agreement",
    "rubric_text",
    "score",
]


def rubric_text() -> str:
    """RUBRIC.md: the guideline text annotators (simulated or not) are shown."""
    return resources.files(__package__).joinpath("RUBRIC.md").read_text(encoding="utf-8")
