"""What the trainer and the reward service agree on about a model directory: the model
kinds the registry serves, the file names in a trained directory, and the LoRA settings a
job trains with.

The trainer writes these directories (``clinalign.trainer.methods``) and registers them;
the reward service reads the normalisation file of the reward model it loads. Neither
imports the other: both import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

POLICY = "policy"
REWARD = "reward"
COST = "cost"  # a cost model: per-category harm probabilities and one scalar cost (issue 21)
KINDS = (POLICY, REWARD, COST)
# The lineage manifest in every model directory a training job writes (the registry reads it).
MANIFEST_NAME = "clinalign_manifest.json"
# A reward-model directory's score normalisation (mean and std the reward service applies).
NORMALISATION_FILE = "clinalign_reward.json"

# A training run's progress: (step, total steps, metrics logged at that step: "loss" and
# whatever else the run logs).
ProgressFn = Callable[[int, int, Mapping[str, float]], None]


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA adapter (Hu et al. 2021) on the base model; a reward model's head trains in
    full."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # "all-linear": every linear layer but the head, which QLoRA (Dettmers et al. 2023,
    # §4) found needed to match full fine-tuning; or a list of module names.
    target_modules: str | tuple[str, ...] = "all-linear"
