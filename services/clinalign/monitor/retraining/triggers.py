"""When to retrain: the retraining settings as one ``Policy``, the signals the triggers
read, and the triggers themselves (pure). See the package docstring for each trigger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.stats import window_stats

# `reward_base_model` values. SERVED_REWARD_BASE: train the new reward model from the policy
# the served reward model was first trained from, so that the gate, which compares the two
# on the same held-out pairs, compares models that differ only in their data.
# SERVED_REWARD: continue training the served reward model on the new snapshot (a warm
# start): the new model starts where the served one is, and the new data moves it.
SERVED_REWARD_BASE = "served-reward-base"
SERVED_REWARD = "served-reward"
# What a run does when the reward-model gate refuses its reward model:
KEEP_SERVED_REWARD = "served"  # train the policy against the reward model that serves
STOP = "stop"  # end the run REFUSED before PPO
# ``retrain_prompt_set`` naming the run's own snapshot: PPO samples the prompts of its train
# split, the prompts of the flagged outputs among them
RUN_SNAPSHOT = "snapshot"


@dataclass(frozen=True)
class Policy:
    """The retraining settings (``MonitorSettings.retrain_*``, where each is documented and
    has its default), as the triggers and the driver read them."""

    min_new_pairs: int
    max_flag_rate: float
    min_outputs: int
    max_psi: float
    window_minutes: float
    min_agreement: float
    eval_fraction: float
    psi_bins: int
    poll_s: float
    reward_base_model: str  # "" the served policy; SERVED_REWARD_BASE; a version or path
    reward_hyperparameters: dict[str, str]
    ppo_hyperparameters: dict[str, str]
    prompt_set: str  # RUN_SNAPSHOT or a named prompt set
    seed: int
    on_reward_refused: str  # KEEP_SERVED_REWARD or STOP
    # a run's cost_model job (issue 21): on when set, its hyperparameters
    cost_hyperparameters: dict[str, str] | None = None

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> Policy:
        return cls(
            min_new_pairs=settings.retrain_min_new_pairs,
            max_flag_rate=settings.retrain_max_flag_rate,
            min_outputs=settings.retrain_min_outputs,
            max_psi=settings.retrain_max_psi,
            window_minutes=settings.retrain_window_minutes,
            min_agreement=settings.retrain_min_agreement,
            eval_fraction=settings.retrain_eval_fraction,
            psi_bins=settings.psi_bins,
            poll_s=settings.retrain_poll_s,
            reward_base_model=settings.retrain_reward_base_model,
            reward_hyperparameters=dict(settings.retrain_reward_hyperparameters),
            ppo_hyperparameters=dict(settings.retrain_ppo_hyperparameters),
            prompt_set=settings.retrain_prompt_set,
            seed=settings.retrain_seed,
            on_reward_refused=settings.retrain_on_reward_refused,
            cost_hyperparameters=(
                dict(settings.retrain_cost_hyperparameters) if settings.retrain_cost_model else None
            ),
        )


@dataclass(frozen=True)
class Signals:
    """What the triggers read: the fresh snapshot, the last run's, the served policy's
    window."""

    snapshot_hash: str
    pairs: int
    last_run_pairs: int
    served_policy: str
    outputs: int
    confirmed_flags: int
    psi: float | None


@dataclass(frozen=True)
class Trigger:
    kind: str  # new_preferences | flag_rate | drift_psi
    reason: str
    key: str


def triggers(sig: Signals, policy: Policy) -> list[Trigger]:
    """The triggers that fire, in a fixed order (data, flag rate, drift)."""
    fired = []
    new = sig.pairs - sig.last_run_pairs
    if new >= policy.min_new_pairs:
        fired.append(
            Trigger("new_preferences", f"new_preferences:{new}", f"data:{sig.snapshot_hash}")
        )
    if sig.served_policy and sig.outputs >= policy.min_outputs:
        rate = sig.confirmed_flags / sig.outputs
        if rate > policy.max_flag_rate:
            fired.append(
                Trigger(
                    "flag_rate",
                    f"flag_rate:{rate:.2f}",
                    f"flag_rate:{sig.served_policy}:{sig.snapshot_hash}",
                )
            )
    if sig.served_policy and sig.psi is not None and sig.psi > policy.max_psi:
        fired.append(
            Trigger(
                "drift_psi",
                f"drift_psi:{sig.psi:.2f}",
                f"drift_psi:{sig.served_policy}:{sig.snapshot_hash}",
            )
        )
    return fired


def window_signals(
    session: Session, version: str, start: datetime, end: datetime, bins: int
) -> tuple[int, int, float | None]:
    """(outputs, confirmed flags, reward PSI) of a version over [start, end)."""
    from clinalign.monitor.flags import CONFIRMED

    for v in window_stats(session, version, start, end, CONFIRMED):
        if v.model_version == version:
            psi, _ = v.drift(bins)
            return v.outputs, sum(v.confirmed_by_category.values()), psi
    return 0, 0, None
