"""Monitor metrics, with the service prefix ``clinalign_monitor_``.

Counters move as outputs and flags arrive. The drift and flag-rate gauges are set by the
server's refresh task every ``stats_interval_s`` over the trailing ``drift_window_minutes``
(not by GetStats, whose window is the caller's), so an alert rule always reads the same
window. Labels are model versions, categories, severities, outcomes and run
states, never text.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OUTPUTS = Counter(
    "clinalign_monitor_outputs",
    "Production outputs recorded (duplicates excluded), per model version.",
    ["model_version"],
)
FLAGS = Counter(
    "clinalign_monitor_flags",
    "Flags raised by clinicians, per error category and severity.",
    ["category", "severity"],
)
OUTCOMES = Counter(
    "clinalign_monitor_outcomes",
    "Outcomes of outputs reported from clinicians' workflows (replays excluded), per model "
    "version and outcome (accepted, overridden).",
    ["model_version", "outcome"],
)
RESOLUTIONS = Counter(
    "clinalign_monitor_flag_resolutions",
    "Flags resolved, per error category and resolution (confirm, dismiss).",
    ["category", "resolution"],
)
PURGED = Counter(
    "clinalign_monitor_retention_deleted_outputs",
    "Outputs deleted by retention.",
)
REWARD_PSI = Gauge(
    "clinalign_monitor_reward_psi",
    "Population stability index of recent reward scores against the version's baseline.",
    ["model_version"],
)
REWARD_KS = Gauge(
    "clinalign_monitor_reward_ks",
    "Two-sample Kolmogorov-Smirnov statistic of recent reward scores against the baseline.",
    ["model_version"],
)
COST_MEAN = Gauge(
    "clinalign_monitor_cost_mean",
    "Mean cost (the cost model's probability of harm) of recent outputs, per model version.",
    ["model_version"],
)
BASELINE_COST_MEAN = Gauge(
    "clinalign_monitor_baseline_cost_mean",
    "Mean cost of the version's baseline outputs.",
    ["model_version"],
)
COST_MODEL_AUROC = Gauge(
    "clinalign_monitor_cost_model_auroc",
    "AUROC of a cost model's costs on recent production outputs clinicians judged: "
    "confirmed flags (moderate or worse) against accepted outputs, verdicts after it "
    "first scored (held out).",
    ["cost_model_version"],
)
COST_MODEL_VERDICTS = Gauge(
    "clinalign_monitor_cost_model_verdicts",
    "Recent production outputs a cost model scored that clinicians judged, per verdict "
    "(harmful, clean): the AUROC gauge's sample.",
    ["cost_model_version", "verdict"],
)
FLAG_RATE = Gauge(
    "clinalign_monitor_flag_rate",
    "Flags per output over the recent window, per model version.",
    ["model_version"],
)
BASELINE_FLAG_RATE = Gauge(
    "clinalign_monitor_baseline_flag_rate",
    "Flags per output of the version's baseline outputs.",
    ["model_version"],
)
FEEDBACK = Counter(
    "clinalign_monitor_flag_feedback",
    "Delivery attempts of confirmed flags to the preference store, per outcome "
    "(delivered, failed).",
    ["outcome"],
)
RETRAINING_RUNS = Counter(
    "clinalign_monitor_retraining_runs",
    "Retraining runs that reached a state (running when started; promoted, refused or "
    "failed when ended).",
    ["state"],
)
RETRAINING_EVALUATIONS = Counter(
    "clinalign_monitor_retraining_evaluations",
    "Evaluations of the retraining policy, per result (triggered, quiet, dry_run).",
    ["result"],
)
