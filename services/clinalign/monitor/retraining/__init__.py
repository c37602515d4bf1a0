"""The retraining policy that closes the loop: when to retrain, and the run that does it.

Triggers (``triggers``, pure), evaluated by EvaluateRetraining and, when
``retrain_interval_s`` > 0, by the monitor server on that period:

- ``new_preferences:<n>``: a snapshot cut now (preference CreateSnapshot with
  ``retrain_min_agreement``, every annotator's label, ties dropped) holds at least
  ``retrain_min_new_pairs`` pairs (train + eval; ``retrain_eval_fraction`` of the prompts
  held out for the reward-model gate) more than the last run's snapshot (all of
  them when there was no run). Key: ``data:<content hash>``.
- ``flag_rate:<rate>``: confirmed flags per output of the served policy version over the
  trailing ``retrain_window_minutes`` exceed ``retrain_max_flag_rate``, over at least
  ``retrain_min_outputs`` outputs. Key: ``flag_rate:<served version>:<content hash>``.
- ``drift_psi:<psi>``: the PSI of that window's reward scores against the version's
  baseline exceeds ``retrain_max_psi``. Key: ``drift_psi:<served version>:<content hash>``.

A dry run cuts the snapshot too: the store has no way to count a snapshot's pairs without
cutting it, and cutting is idempotent by content (the same data gives back the same
snapshot), so a dry run changes nothing a later decision reads; it records no run, no
trigger key and no flag inclusion.

Idempotency, held by the database rather than a lock in one process: at most one run is
RUNNING (a unique column set only while running), and each trigger key starts at most one
run (the key is a primary key). A call that finds a RUNNING run returns it (a dry run or a
call on which nothing fires too, so a caller racing the one that started a run sees it); a
call whose fired keys all started runs already returns the run of the first one. Two
monitors evaluating at once: one insert wins, the other's transaction retries and finds it.

A run's steps, each recorded once when it ends (``retraining_run_steps``, unique per run
and name) with what it produced and its outcome:

``snapshot`` → ``reward_model_job`` (trainer SubmitJob, kind reward_model, on the snapshot,
from ``retrain_reward_base_model``: the served policy, the policy the served reward model
was first trained from (``served-reward-base``), the served reward model itself, trained
further (``served-reward``: a warm start), or a named version or directory; idempotency key
``<run>:reward_model_job``; recorded when the job ends) →
``promote_reward_model`` (trainer PromoteModel: the reward-model gate) →
``activate_reward_model`` (RewardService.ActivateModel: PPO jobs score through the reward
service, which must serve the version they name) → ``ppo_job`` (kind ppo from the served
policy, against the new reward model, on ``retrain_prompt_set``: by default the run's
snapshot, so the policy practises on the prompts clinicians flagged) → ``promote_policy`` (the
policy gate) → ``activate_policy`` (GenerationService.ActivateModel).

A refused reward model is never activated. What the run does next is
``retrain_on_reward_refused``: ``served`` (the default) records ``activate_reward_model``
as keeping the reward model that serves, and the PPO job trains against that one (the new
data did not make a judge shown as good, which need not hold back the policy's retraining; the
policy gate still decides); ``stop`` ends the run REFUSED before PPO, as does a refusal
while no reward model serves. A refused policy is never activated and ends the run REFUSED
(the generation service keeps serving what it served; a new reward model that passed its
own gate stays active). A job that fails or is cancelled, or a call that keeps failing,
ends it FAILED with the reason. Every step is idempotent (job keys, promotion read back
from the registry's stage, activation of the active version is a no-op), so after a
monitor restart ``resume`` carries each RUNNING run on from its last recorded step.
"""

from clinalign.monitor.retraining.driver import Evaluation, Retraining, StepFailed
from clinalign.monitor.retraining.runs import (
    FAILED,
    PROMOTED,
    REFUSED,
    RUNNING,
    STATE_NAMES,
    Cut,
    RunView,
    StepView,
    finish,
    get_run,
    list_runs,
    record_step,
    running_run,
    set_versions,
    start_run,
)
from clinalign.monitor.retraining.triggers import (
    KEEP_SERVED_REWARD,
    RUN_SNAPSHOT,
    SERVED_REWARD,
    SERVED_REWARD_BASE,
    STOP,
    Policy,
    Signals,
    Trigger,
    triggers,
)

__all__ = [
    "FAILED",
    "KEEP_SERVED_REWARD",
    "PROMOTED",
    "REFUSED",
    "RUNNING",
    "RUN_SNAPSHOT",
    "SERVED_REWARD",
    "SERVED_REWARD_BASE",
    "STATE_NAMES",
    "STOP",
    "Cut",
    "Evaluation",
    "Policy",
    "Retraining",
    "RunView",
    "Signals",
    "StepFailed",
    "StepView",
    "Trigger",
    "finish",
    "get_run",
    "list_runs",
    "record_step",
    "running_run",
    "set_versions",
    "start_run",
    "triggers",
]
