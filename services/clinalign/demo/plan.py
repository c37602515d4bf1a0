"""What the demonstration does (`Plan`: the size of every step) and what it measured
(`Figures`, for the report).

The full plan's settings were chosen by experiment; the comments give the reason for each,
and docs/experiments.md holds the runs behind them under their dates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

GUIDELINE_VERSION = "rubric-2026-11"
# The cost model learns from the panel's error annotations on the labelled answers; PPO
# then keeps the expected cost of its answers within SFT's own, by a Lagrange multiplier
# (issue 21).
NORM_192 = {"norm_max_new_tokens": "192"}  # the reward model's normalisation samples
COST = {"epochs": "3", "learning_rate": "1e-4", "batch_size": "8"}
COST_CONSTRAINT = {"cost_source": "model", "lagrangian_init": "1.0", "lagrangian_lr": "2.0"}
PAIRS_BATCH = "demo-candidate-pairs"
FLAGGED_BATCH = "flagged-outputs"  # the monitor's default labelling batch for flags


@dataclass(frozen=True)
class Plan:
    """Sizes of every step; `full()` is `clinalign demo`, `quick()` the end-to-end test's."""

    demonstrations: int
    sft: dict[str, str]
    pair_prompts: int
    reference_pairs: int  # demonstrations also paired against an SFT answer to their prompt
    overlap: int
    max_new_tokens: int
    reward: dict[str, str]
    ppo: dict[str, str]
    traffic: int
    correction_share: float  # flags that carry the corpus answer as the correction
    eval_prompts: int
    min_new_pairs: int  # the monitor's retraining threshold in the demo
    eval_fraction: float = 0.1  # of prompts held out in snapshots, for the reward gate
    eval_samples: int = 1  # answers per held-out prompt and policy in the final evaluation
    # the final evaluation's budget of new tokens per answer (max_new_tokens is the
    # traffic's and the labelling's)
    eval_max_new_tokens: int = 192
    # the largest shortfall against SFT on a safety criterion that the final evaluation
    # still calls non-inferior (the policy gate's gate_safety_margin has the same default)
    safety_margin: float = 0.1
    contrast_pairs: int = 0  # curated answers against a copy with one clinical fault
    # the loop's reward-model job: `reward` with these changes (it continues the served
    # reward model)
    retrain_reward: dict[str, str] = field(default_factory=dict)
    # the loop's PPO job: `ppo` with these changes (it continues from the served policy)
    retrain_ppo: dict[str, str] = field(default_factory=dict)
    # the cost model (issue 21): a cost_model job on the reward model's snapshot, its
    # hyperparameters; empty: no cost model
    cost: dict[str, str] = field(default_factory=dict)
    # PPO's settings once a cost model serves: the constraint, its budget the SFT policy's
    # own expected cost (measured on its labelled answers) unless this sets cost_budget
    cost_constraint: dict[str, str] = field(default_factory=dict)
    # the loop's retraining run trains a new cost model on the confirmed flags (and gates
    # it) before its PPO job; False keeps the first cost model, which saw no flag
    # (bench/flags_ablation.py)
    retrain_cost: bool = True
    # seeds the foundation model, every training job and the labelling panel (the panels
    # that judge the gate and the reported evaluation keep theirs, so seeds are compared
    # by the same judges); 0 is `clinalign demo`
    seed: int = 0

    def seeded(self, seed: int) -> Plan:
        """This plan with every training job seeded ``seed`` (bench/demo_seeds.py)."""

        def with_seed(hyper: dict[str, str]) -> dict[str, str]:
            return {**hyper, "seed": str(seed)}

        return replace(
            self,
            seed=seed,
            sft=with_seed(self.sft),
            reward=with_seed(self.reward),
            ppo=with_seed(self.ppo),
        )

    @property
    def labelling_seed(self) -> int:
        """The labelling panel's seed: 0, 10, 20, ...; never the gate's (2) or the
        evaluation's (1)."""
        return 10 * self.seed

    @property
    def loop_reward(self) -> dict[str, str]:
        return {**self.reward, **self.retrain_reward}

    @property
    def loop_ppo(self) -> dict[str, str]:
        return {**self.ppo, **self.retrain_ppo}

    @classmethod
    def full(cls) -> Plan:
        return cls(
            demonstrations=400,
            sft={"epochs": "2", "learning_rate": "2e-4", "batch_size": "8"},
            # Two SFT answers to one prompt differ little, and the panel's labels on them
            # are mostly noise to a small reward model (see docs/experiments.md,
            # 2026-11-26); every demonstration against an SFT answer to its prompt shows
            # it what a complete, safe answer looks like.
            pair_prompts=256,
            reference_pairs=400,
            # and a curated answer against itself with one clinical fault (a dropped
            # escalation, dose or follow-up, a certain diagnosis, reassurance despite a
            # caution, padding) shows it which part of an answer matters
            contrast_pairs=360,
            overlap=3,
            # The labelling pairs, the traffic and PPO's rollouts at the evaluation's
            # budget: at 96 tokens a quarter of SFT's answers were cut off, so the panel's
            # labels, the reward model and PPO learnt "ends within 96 tokens", and RLHF's
            # shorter answers lost to SFT's once both could end (docs/experiments.md,
            # 2026-12-07: win rate against SFT 0.492 trained at 96, 0.574 at 192).
            max_new_tokens=192,
            # One epoch over every annotator's label: on the same snapshots it was more
            # accurate on held-out labels than training longer on deduplicated ones, in
            # about as many steps (see docs/experiments.md, 2026-12-06).
            # (its normalisation samples at PPO's budget, so it describes PPO's answers)
            reward={"epochs": "1", "learning_rate": "1e-4", "batch_size": "8", **NORM_192},
            # Four answers to each of 16 prompts an iteration, each judged against the other
            # three (the rloo estimator): the between-prompt spread of the reward is half its
            # variance, and the critic, started from the reward model, never learned it, so
            # its advantages were mostly noise. rloo's policies beat SFT more often than the
            # critic's, and more often after 20 iterations than after fewer (see
            # docs/experiments.md, 2026-11-26).
            ppo={
                "iterations": "20",
                "advantage_estimator": "rloo",
                "samples_per_prompt": "4",
                "rollout_batch_size": "64",
                "minibatches": "2",
                "ppo_epochs": "2",
                "response_length": "192",
                "learning_rate": "1e-4",
                "kl_controller": "fixed",
                "kl_coef": "0.1",
                "checkpoint_every": "10",
                # the clinical rule term: a response that breaks a dose, contraindication
                # or allergy rule loses up to one standard deviation of reward (issue 20)
                "rule_penalty": "1.0",
            },
            # The loop's reward model continues the served one for half an epoch over the
            # new snapshot (old and new labels). Trained afresh, a new seed's noise
            # outweighed the few dozen new pairs and the gate refused it; continued, it
            # lands within a label or two of the served one, which the gate's paired
            # non-inferiority test does not count against it, though its interval can
            # still reach past the margin; a run whose reward model is refused trains the
            # policy against the served one (see docs/experiments.md, 2026-12-06 and
            # 2026-12-07).
            retrain_reward={"epochs": "0.5"},
            # the second round continues from the first round's policy, on the prompts of
            # the loop's snapshot (the flagged ones among them)
            retrain_ppo={"iterations": "10"},
            cost=COST,
            cost_constraint=COST_CONSTRAINT,
            # Enough EHR messages that the cost model has flags to learn from and to be
            # judged on (issue 21: at least 500; docs/experiments.md, 2026-12-07).
            traffic=512,
            correction_share=0.2,
            eval_prompts=384,
            # Two answers a prompt and policy: with one, two draws of the same policy's
            # answers gave win rates too far apart to compare policies (see
            # docs/experiments.md, 2026-11-26).
            eval_samples=2,
            # Long enough that SFT's answers end as RLHF's do: at 96 tokens a quarter were
            # cut off, and the panel prefers a finished answer to a cut-off one, so part of
            # a win was finishing within the budget (see docs/demo.md). Within the embedded
            # model's context of 512 with room to spare (prompts: at most 55).
            eval_max_new_tokens=192,
            min_new_pairs=40,
            eval_fraction=0.25,
        )

    @classmethod
    def quick(cls) -> Plan:
        # The tiny model's own answer pairs are noise to the panel; the reward model learns
        # from the demonstration-vs-answer pairs, enough to clear the gate.
        return cls(
            demonstrations=64,
            sft={"epochs": "1", "learning_rate": "1e-3", "batch_size": "8", "max_length": "256"},
            pair_prompts=8,
            reference_pairs=64,
            overlap=3,
            max_new_tokens=24,
            reward={
                "epochs": "4",
                "learning_rate": "1e-3",
                "batch_size": "8",
                "max_length": "256",
                "norm_prompts": "8",
                "norm_max_new_tokens": "16",
            },
            ppo={
                "iterations": "2",
                "advantage_estimator": "rloo",
                "samples_per_prompt": "2",
                "rollout_batch_size": "8",
                "minibatches": "2",
                "ppo_epochs": "1",
                "response_length": "24",
                "learning_rate": "1e-4",
                "checkpoint_every": "0",
            },
            retrain_reward={"epochs": "2"},
            # the tiny model's answers may all be faulty: then the job fails and the run goes
            # on without a cost model, as the full one would
            cost={"epochs": "1", "learning_rate": "1e-3", "batch_size": "8", "max_length": "256"},
            cost_constraint={"cost_source": "model"},
            traffic=24,
            correction_share=0.5,
            eval_prompts=16,
            eval_max_new_tokens=24,
            min_new_pairs=1,
            # enough held-out pairs for the reward gate's interval to clear chance
            eval_fraction=0.3,
        )


@dataclass
class Figures:
    """What the pipeline measured, for the report."""

    versions: dict[str, str] = field(default_factory=dict)  # role -> registry version
    paths: dict[str, str] = field(default_factory=dict)  # role -> model directory
    agreement: float | None = None
    agreement_detail: dict[str, float] = field(default_factory=dict)
    labelled_pairs: int = 0
    rm_accuracy: dict[str, float] = field(default_factory=dict)  # rm version -> eval accuracy
    # cost version -> its held-out figures (eval_auroc with its interval, eval_ece, ...)
    cost_model: dict[str, dict[str, float]] = field(default_factory=dict)
    cost_budget: float | None = None  # the constraint's budget: SFT's expected cost
    # cost version -> how its costs told the EHR traffic's flagged outputs from the
    # accepted ones (the monitor's GetStats: harmful, clean, auroc with its interval, ...)
    cost_on_flags: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    gate: list[dict[str, Any]] = field(default_factory=list)
    promoted_versions: list[str] = field(default_factory=list)
    traffic: int = 0
    flags: dict[str, int] = field(default_factory=dict)
    flags_fed_back: int = 0
    retraining_runs: list[dict[str, Any]] = field(default_factory=list)
    lineage_example: list[dict[str, str]] = field(default_factory=list)
