"""The cost-model gate (issue 21): a cost version is judged beside the served cost model on
the held-out harm records of the snapshot it was trained on.

- ``cost_auroc_ci_low``: the cost's AUROC (harmful answers ranked above clean ones) has
  the lower end of its 95 % interval, bootstrapped over prompts, above chance (0.5). A
  held-out split with no harmful answer, or no clean one, cannot show it: refused.
- ``cost_auroc_vs_served`` (when a cost model is served): non-inferior to it, record by
  record on the same answers; the lower end of the paired difference's interval must lie
  above minus ``gate_cost_margin``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clinalign.trainer.registry.policy_checks import Check

CHANCE = 0.5
AUROC_CI_LOW = "cost_auroc_ci_low"
AUROC_VS_SERVED = "cost_auroc_vs_served"


def _probabilities(model_dir: Path, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """P(harm) of each record's answer by the cost model at ``model_dir``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from clinalign.common.cost_format import probabilities

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = [(str(r["prompt"]), str(r["response"])) for r in records]
    return probabilities(model, tokenizer, pairs)[:, 0]


def cost_checks(
    candidate_dir: Path,
    baseline_dir: Path | None,
    records: Sequence[Mapping[str, Any]],
    margin: float,
    n_resamples: int,
) -> list[Check]:
    """The gate's checks of a cost model on a snapshot's harm records (both splits; the
    ``eval`` split is read)."""
    from clinalign.common import discrimination
    from clinalign.common.cost_format import targets
    from clinalign.trainer.methods.cost_model.training import harm_records

    held_out = harm_records(records, "eval")
    y = np.asarray([targets(r)[0] for r in held_out])
    groups = [str(r.get("prompt_id") or r["prompt"]) for r in held_out]
    harmful = int(y.sum())
    if harmful in (0, len(held_out)):
        return [
            Check(
                AUROC_CI_LOW,
                float("nan"),
                CHANCE,
                False,
                f"the snapshot's held-out split has {len(held_out)} harm records, {harmful} "
                "harmful: the AUROC needs both harmful and clean answers to judge on",
            )
        ]
    p = _probabilities(candidate_dir, held_out)
    estimate = discrimination.auroc(y, p) or 0.0
    low, high = discrimination.auroc_interval(y, p, groups, rounds=n_resamples) or (0.0, 0.0)
    checks = [
        Check(
            AUROC_CI_LOW,
            low,
            CHANCE,
            low > CHANCE,
            f"cost AUROC {estimate:.3f} (95 % CI {low:.3f} to {high:.3f}, n={len(held_out)}, "
            f"{harmful} harmful) "
            + ("is above chance with confidence" if low > CHANCE else "is not above chance"),
        )
    ]
    if baseline_dir is not None:
        served = _probabilities(baseline_dir, held_out)
        paired = discrimination.paired_auroc_difference(y, p, served, groups, rounds=n_resamples)
        diff, d_low, d_high = paired or (0.0, 0.0, 0.0)
        passed = d_low > -margin
        checks.append(
            Check(
                AUROC_VS_SERVED,
                d_low,
                -margin,
                passed,
                f"cost AUROC against the served cost model {diff:+.3f} (95 % CI {d_low:+.3f} "
                f"to {d_high:+.3f}) on the same {len(held_out)} answers: "
                + ("non-inferior" if passed else "NOT non-inferior")
                + f" within {margin}",
            )
        )
    return checks
