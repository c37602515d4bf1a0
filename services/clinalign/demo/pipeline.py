"""The demonstration's steps, each a call (or many) to the real services over gRPC.

    foundation ─SFT job─▶ sft ─GenerateCandidates─▶ pairs ─simulated panel, labelling queue─▶
    snapshot ─reward_model job─▶ rm-1 ─gate─▶ served ─PPO job─▶ rlhf-1 ─gate─▶ served
    ─EHR traffic─▶ monitor ─simulated clinicians flag, a second one reviews─▶ preference store
    ─EvaluateRetraining─▶ snapshot ─▶ rm-2 ─▶ rlhf-2 ─gate─▶ served

The simulated clinicians are `clinalign.simulation.SimulatedPanel`: a simulation standing
in for people, driven by the rubric in `clinalign/simulation/RUBRIC.md`.

The steps live by concern: `plan` (sizes and figures), `steps` (the state and
preference-store calls they share), `training` (set-up, SFT, reward model, gate, PPO),
`labelling` (candidate pairs and the labelling queue) and `loop` (EHR traffic, flags and
the monitor's retraining run). `Pipeline` is all of them.
"""

from __future__ import annotations

from clinalign.demo.labelling import CONTRAST_AUTHOR
from clinalign.demo.loop import LoopSteps
from clinalign.demo.plan import FLAGGED_BATCH, GUIDELINE_VERSION, Figures, Plan
from clinalign.demo.training import TrainingSteps, demonstrations

__all__ = [
    "CONTRAST_AUTHOR",
    "FLAGGED_BATCH",
    "GUIDELINE_VERSION",
    "Figures",
    "Pipeline",
    "Plan",
    "demonstrations",
]


class Pipeline(TrainingSteps, LoopSteps):
    """Every step of the demonstration, called in order by `clinalign.demo._pipeline`."""
