"""End to end: `clinalign demo --quick` runs the shortened closed loop through the five
services as real processes on the tiny model: SFT job, simulated panel labels through the
labelling queue, reward model, gate, PPO, EHR traffic, simulated clinicians' flags, the
monitor's retraining run, lineage, report. The tiny model learns nothing worth measuring,
so this checks the loop's wiring and the report's contract, not the improvement (the real
figures come from `make demo`; see README)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from clinalign.cli.stack import FRONT_DOORS, SERVICES, env_name
from clinalign.common.judging import SAFETY_CRITERIA
from tests.conftest import free_ports

CONTRACT = (
    "agreement",
    "rm_accuracy",
    "rubric",
    "win_rate_vs_sft",
    "kl_to_sft",
    "flags_fed_back",
    "promoted_versions",
    "wall_s",
    "rounds",
    "eval_prompt_set",
    "eval_max_new_tokens",
)
# every RLHF round's figures, all on the final held-out set (issue 20)
ROUND = ("version", "win_rate", "criteria", "safety", "ended", "kl_to_sft")
WIN_RATES = ("overall", "both_ended", "length_controlled")


def test_quick_demo_runs_the_closed_loop(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_model_dir, data / "models" / "foundation")
    env = dict(os.environ)
    chosen = iter(free_ports(2 * (len(SERVICES) + len(FRONT_DOORS))))
    for name in [*SERVICES, *FRONT_DOORS]:
        env[f"CLINALIGN_{env_name(name)}_PORT"] = str(next(chosen))
        env[f"CLINALIGN_{env_name(name)}_METRICS_PORT"] = str(next(chosen))
    # The tiny model's policies are noise: let the policy gate pass on the figures it can
    # reach so that the run exercises promotion and activation, the gate's refusals being
    # tested in tests/integration/test_policy_promotion.py and test_monitor_loop.py.
    env.update(
        CLINALIGN_DATA_DIR=str(data),
        CLINALIGN_TRAINER_GATE_MIN_WIN_RATE="0",
        CLINALIGN_TRAINER_GATE_MAX_KL="1000",
        CLINALIGN_TRAINER_GATE_PROMPTS="8",
        CLINALIGN_TRAINER_GATE_SAFETY_PROMPTS="8",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "clinalign.cli", "demo", "--quick", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        logs = "".join(p.read_text()[-3000:] for p in (data / "logs").glob("*.log"))
        raise AssertionError(f"demo failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\n{logs}")
    figures = json.loads(proc.stdout.strip().splitlines()[-1])

    for key in CONTRACT:
        assert key in figures, key
    assert figures["eval_prompt_set"] == "clinical-test"
    assert set(figures["rounds"]) == set(figures["win_rate_vs_sft"]) >= {"rlhf-1"}
    for name, round_ in figures["rounds"].items():
        assert set(round_) == set(ROUND), name
        assert set(round_["win_rate"]) == set(WIN_RATES), name
        assert set(round_["safety"]) == set(SAFETY_CRITERIA), name
        overall = round_["win_rate"]["overall"]
        assert overall["low"] <= overall["estimate"] <= overall["high"], name
    assert 0.0 <= figures["agreement"] <= 1.0
    # the cost model (issue 21): trained on the panel's error annotations, or absent when
    # the tiny model's answers held no clean (or no harmful) one
    assert {"cost_model", "cost_budget", "expected_cost"} <= set(figures)
    for name, cost in figures["expected_cost"].items():
        assert 0.0 <= cost["cost"]["estimate"] <= 1.0, name
    assert set(figures["rubric"]) >= {"foundation", "sft", "rlhf-1"}, figures["gate"]
    assert all(0.0 <= v <= 1.0 for v in figures["rubric"].values())
    assert "rlhf-1" in figures["win_rate_vs_sft"] and "rlhf-1" in figures["kl_to_sft"]
    assert "rm-1" in figures["rm_accuracy"]

    # The loop: flags were raised, confirmed, fed back; the monitor ran one retraining run
    # to an end state, and only what the gate promoted was promoted.
    assert figures["flags"]["flagged"] > 0
    # The EHR's traffic went through the CDS Hooks gateway: every draft was a card the
    # simulated clinicians accepted or overrode, and every override became a flag.
    flags = figures["flags"]
    assert flags["accepted"] + flags["overridden"] == flags["outputs"] > 0
    assert flags["flagged"] == flags["overridden"] == flags["confirmed"] + flags["dismissed"]
    # Every confirmed flag is delivered, except one whose output is empty (nothing to
    # compare), which the monitor marks failed.
    fed, failed = figures["flags_fed_back"], figures["flags"]["feedback_failed"]
    assert fed > 0 and fed + failed == figures["flags"]["confirmed"]
    (run,) = figures["retraining_runs"]
    assert run["state"] in ("RUN_STATE_PROMOTED", "RUN_STATE_REFUSED")
    names = [s["name"] for s in run["steps"]]
    assert names[:2] == ["snapshot", "reward_model_job"]
    refused = {g["version"] for g in figures["gate"] if not g["promoted"]}
    assert not refused & set(figures["promoted_versions"])
    assert figures["versions"]["rm-1"] in figures["promoted_versions"]
    if run["state"] == "RUN_STATE_PROMOTED":
        assert run["promoted_version"] in figures["promoted_versions"]
        assert "activate_policy" in names

    # Lineage of an output of the served policy walks back to the foundation model and,
    # when the loop promoted it, through the run's snapshot to the flags it holds.
    kinds = [s["kind"] for s in figures["lineage_example"]]
    assert kinds[0] == "output" and "model_version" in kinds and "job" in kinds
    if run["state"] == "RUN_STATE_PROMOTED":
        assert "flag" in kinds, figures["lineage_example"]

    report = data / "demo"
    for name in ("report.md", "report.json", "rubric.png", "criteria.png", "win_rate.png"):
        assert (report / name).stat().st_size > 0, name
    assert "SIMULATED" in (report / "report.md").read_text()
