"""Monitor settings, with the prefix ``CLINALIGN_MONITOR_``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from clinalign.common.config import ServiceSettings


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CLINALIGN_MONITOR_", extra="ignore")

    port: int = Field(50055, ge=0, le=65535, description="gRPC port.")
    metrics_port: int = Field(9105, ge=0, le=65535, description="Prometheus /metrics port.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the outputs and flags store; "
        "default sqlite:///<data_dir>/monitor.db.",
    )
    max_batch: int = Field(
        512, ge=1, le=10_000, description="Most outputs one RecordOutputs call may carry."
    )
    max_text_chars: int = Field(
        20_000,
        ge=1,
        description="Most characters of a recorded prompt or output, or of a flag's "
        "corrected text.",
    )
    max_comment_chars: int = Field(
        2_000, ge=1, description="Most characters of a flag's comment or resolution reason."
    )
    baseline_outputs: int = Field(
        200,
        ge=2,
        description="A version's first this many outputs (by generation time) form its drift "
        "baseline: the reference reward-score distribution and flag rate.",
    )
    psi_bins: int = Field(
        10,
        ge=2,
        le=100,
        description="Equal-frequency bins of the baseline's reward scores for the population "
        "stability index.",
    )
    drift_window_minutes: float = Field(
        60.0,
        gt=0,
        description="Trailing window of the drift and flag-rate gauges on /metrics.",
    )
    stats_interval_s: float = Field(
        60.0, gt=0, description="Seconds between refreshes of the drift and flag-rate gauges."
    )
    cost_verdict_window_hours: float = Field(
        168.0,
        gt=0,
        description="Trailing window (by the outputs' generation time) of the cost-model "
        "gauges on /metrics: each served cost model's AUROC on the outputs clinicians "
        "flagged against those they accepted. Verdicts come days after outputs, so it is "
        "longer than the drift window.",
    )
    retention_days: float = Field(
        90.0,
        ge=0,
        description="Outputs generated longer ago than this are deleted with their text and "
        "flags (a baseline output keeps its figures, not its text); 0 keeps them forever.",
    )
    retention_interval_s: float = Field(
        3600.0, gt=0, description="Seconds between retention sweeps."
    )

    # -- scoring production outputs through the reward service (clinalign.monitor.scoring)
    score_outputs: bool = Field(
        True,
        description="Score every recorded output with the served reward model and, when one "
        "serves, the cost model (its probability of harm), for drift in reward and cost.",
    )
    score_interval_s: float = Field(
        5.0, gt=0, description="Seconds between scoring rounds (each takes score_batch outputs)."
    )
    score_batch: int = Field(
        32, ge=1, le=256, description="Outputs scored per round, in one Score call."
    )
    score_max_attempts: int = Field(
        3,
        ge=1,
        description="Scoring attempts the reward service may refuse (INVALID_ARGUMENT) before "
        "an output is left unscored.",
    )

    # -- feedback of confirmed flags to the preference store (clinalign.monitor.feedback)
    feedback_interval_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between rounds that deliver confirmed flags (pending, or failed "
        "and due for a retry) to the preference service.",
    )
    feedback_max_attempts: int = Field(
        100,
        ge=1,
        description="Delivery attempts of one flag's feedback before later rounds leave it "
        "failed, for an operator to look at.",
    )
    feedback_batch: int = Field(
        20, ge=1, le=500, description="Most flags one feedback round delivers."
    )
    feedback_guideline_version: str = Field(
        "flag-review-v1",
        min_length=1,
        description="Guideline version recorded on the corrections and labelling tasks made "
        "from flags. A flag without a correction becomes a labelling task, which needs this "
        "version published (PublishGuidelines, by an ml-engineer or admin); until it is, such "
        "feedback fails with that reason and is retried.",
    )
    feedback_batch_id: str = Field(
        "flagged-outputs", min_length=1, description="Task batch of labelling tasks from flags."
    )
    feedback_overlap: int = Field(
        2, ge=1, le=10, description="Annotators who label each task made from a flag."
    )
    feedback_candidates: int = Field(
        2,
        ge=2,
        le=16,
        description="Fresh candidates GenerateCandidates writes for a flag without a "
        "correction, compared beside the flagged output.",
    )
    feedback_max_new_tokens: int = Field(
        256, ge=1, description="Token limit of each of those candidates."
    )
    feedback_temperature: float = Field(
        1.0, gt=0, le=2, description="Sampling temperature of those candidates (must be > 0)."
    )

    # -- the retraining policy (clinalign.monitor.retraining)
    retrain_interval_s: float = Field(
        0.0,
        ge=0,
        description="Seconds between automatic evaluations of the retraining policy; 0 "
        "evaluates only on request (EvaluateRetraining).",
    )
    retrain_min_new_pairs: int = Field(
        200,
        ge=1,
        description="New-data trigger: preference pairs in a fresh snapshot beyond those of "
        "the last run's snapshot that start a run.",
    )
    retrain_min_agreement: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Snapshot filter: leave out labels of task batches whose agreement is "
        "below this (corrections carry no batch and always count).",
    )
    retrain_eval_fraction: float = Field(
        0.1,
        gt=0,
        le=0.5,
        description="Snapshot filter: share of prompts (by prompt hash) in the evaluation "
        "split the reward-model gate judges a run's reward model on.",
    )
    retrain_window_minutes: float = Field(
        1440.0,
        gt=0,
        description="Trailing window over which the served policy's confirmed-flag rate and "
        "reward drift are measured.",
    )
    retrain_max_flag_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Flag trigger: confirmed flags per output of the served policy in the "
        "window above this start a run.",
    )
    retrain_min_outputs: int = Field(
        100,
        ge=1,
        description="The flag trigger needs at least this many outputs in the window.",
    )
    retrain_max_psi: float = Field(
        0.25,
        gt=0,
        description="Drift trigger: reward-score PSI of the served policy in the window "
        "against its baseline above this starts a run.",
    )
    retrain_poll_s: float = Field(
        5.0, gt=0, description="Seconds between GetJob polls while a run's job trains."
    )
    retrain_reward_base_model: str = Field(
        "",
        description="base_model of a run's reward_model job: a registered policy or reward "
        "version or model directory; `served-reward` to continue training the served reward "
        "model on the new snapshot (a warm start); `served-reward-base` for the policy the "
        "served reward model was first trained from (the gate then compares two reward "
        "models that differ only in their data); empty lets the trainer use the served "
        "policy.",
    )
    retrain_reward_hyperparameters: dict[str, str] = Field(
        {},
        description='Hyperparameters of a run\'s reward_model job, as JSON: {"epochs": "1"}.',
    )
    retrain_ppo_hyperparameters: dict[str, str] = Field(
        {},
        description='Hyperparameters of a run\'s ppo job, as JSON: {"iterations": "200"}.',
    )
    retrain_cost_model: bool = Field(
        False,
        description="Whether a run trains a cost model on its snapshot (the confirmed flags' "
        "and clinicians' error annotations), gates it and serves it, before its PPO job; "
        "a refused one leaves the served cost model in place.",
    )
    retrain_cost_hyperparameters: dict[str, str] = Field(
        {},
        description='Hyperparameters of a run\'s cost_model job, as JSON: {"epochs": "2"}.',
    )
    retrain_prompt_set: str = Field(
        "snapshot",
        min_length=1,
        description="Prompts of a run's PPO rollouts: `snapshot`, the train split of the "
        "run's snapshot (the flagged outputs' prompts among them), or a prompt set "
        "(`clinical-train` or a .jsonl file).",
    )
    retrain_seed: int = Field(0, ge=0, description="Seed of a run's training jobs.")
    retrain_on_reward_refused: Literal["served", "stop"] = Field(
        "served",
        description="When the reward-model gate refuses a run's reward model: `served` trains "
        "the run's policy against the reward model that serves (the policy gate still "
        "decides); `stop` ends the run refused before PPO.",
    )
