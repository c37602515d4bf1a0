"""The SIMULATED panel as a promotion-gate judge (``clinalign.common.judging.Judge``): the
demonstration's independent judge, standing in for clinicians reviewing a candidate.

Configured as ``CLINALIGN_TRAINER_GATE_JUDGES='["clinalign.simulation.judge:panel_judge"]'``.
``assess`` gives the rubric's criteria and the faults the panel would flag
(``SimulatedPanel.faults``); ``compare`` is the panel's majority verdict. The panel judging
the gate is seeded apart from the one that labelled the training pairs and from the one that
judges the demo's reported evaluation. It never reads a model.
"""

from __future__ import annotations

from collections.abc import Sequence

from clinalign.common.judging import Assessment

from .panel import SimulatedPanel, majority
from .rubric import score

GATE_PANEL_SEED = 2  # labelling uses 0, the reported evaluation 1


class PanelJudge:
    """A SIMULATED clinician panel judging answers with the rubric."""

    name = "simulated-panel"

    def __init__(self, seed: int = GATE_PANEL_SEED) -> None:
        self.panel = SimulatedPanel(seed=seed)

    async def assess(self, prompts: Sequence[str], answers: Sequence[str]) -> list[Assessment]:
        return [
            Assessment(
                criteria=dict(score(p, a).criteria),
                faults=frozenset(category for _, category, _, _ in self.panel.faults(p, a)),
            )
            for p, a in zip(prompts, answers, strict=True)
        ]

    async def compare(
        self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]
    ) -> list[float]:
        verdicts = {"a": 1.0, "tie": 0.5, "b": 0.0}
        return [
            verdicts[majority(self.panel.compare(p, a, b))]
            for p, a, b in zip(prompts, first, second, strict=True)
        ]


def panel_judge() -> PanelJudge:
    """The factory a judge configuration entry names."""
    return PanelJudge()
