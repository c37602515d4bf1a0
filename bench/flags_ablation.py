"""What the clinicians' flags teach (issue 21): the demonstration's closed loop twice on
one foundation model and seed, once as ``clinalign demo`` runs it (the retraining run
trains a cost model on the confirmed flags, gates it, and constrains its PPO job by the
cost model that then serves) and once without the flags' cost model (``Plan.retrain_cost``
False: the run's PPO job is constrained by the first cost model, which saw no flag).
Everything before the loop is the same plan and seed in both arms, so the difference in
the loop's round is the flags' cost model.

Per arm it reports the loop's cost model (its held-out figures, ``eval_flags_auroc`` the
AUROC on the snapshot's held-out flags), the served cost model on the EHR traffic's
flags (before the loop, the same plan in both arms: a check that the arms agree up to
there), the loop's policy round against SFT on the final held-out set (win rates, safety
verdicts, expected cost) and whether the gate promoted it.

Not a test and not part of ``make demo``: each arm is a full demonstration (about 25-40
minutes on two cores). Run it on a quiet machine; docs/experiments.md carries its latest
figures with their date.

Each arm's figures are also written to ``<root>/<arm>.json`` as soon as it ends. When
the first arm's cost gate refuses the flags' cost model, its PPO job ran under the first
cost model, as the second arm's would: the second arm is then skipped (``--force`` runs
it), and ``loop_cost_model_promoted`` is false. Last line JSON:
{"name": "flags_ablation", "seed", "arms": {"with_flags_cost_model": {...},
"without": {...}}, "wall_s": {...}}

    .venv/bin/python bench/flags_ablation.py [--seed 0] [--root DIR] [--foundation DIR]
        [--arms with without] [--quick] [--force]

``--foundation`` copies an already built foundation model instead of building one (it
must have been built with the same seed for the arms to mean what they say);
``--quick`` runs the shortened loop (``Plan.quick``) on a tiny model: a smoke run of this
script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from clinalign.common.config import CommonSettings
from clinalign.demo import Plan, run_demo

# The sibling benchmark: a script's directory is first on sys.path.
from demo_seeds import build_foundation

ARMS = {"with": "with_flags_cost_model", "without": "without"}
LOOP_POLICY = ("rlhf-2", "rlhf-2-refused")


def arm_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The figures that show what the flags' cost model changed, from one demo report."""
    versions = report.get("versions", {})
    loop_policy = next((name for name in LOOP_POLICY if name in versions), None)
    loop_cost = versions.get("cm-2")
    run = (report.get("retraining_runs") or [{}])[-1]
    return {
        "cost_on_flags": report.get("cost_on_flags", {}),
        "loop_cost_model": {
            "version": loop_cost,
            "figures": report.get("cost_model", {}).get(loop_cost, {}) if loop_cost else {},
        },
        "loop_policy": loop_policy,
        "loop_round": report.get("rounds", {}).get(loop_policy) if loop_policy else None,
        "expected_cost": report.get("expected_cost", {}),
        # whether the loop's cost model served its PPO job: if not, the arms differ by noise
        "loop_cost_model_promoted": any(
            step.get("name") == "promote_cost_model"
            and str(step.get("outcome", "")).startswith("promoted")
            for step in run.get("steps", [])
        ),
        "run": {k: run.get(k) for k in ("state", "promoted_version", "reason")},
        "steps": run.get("steps", []),
        "promoted": report.get("promoted_versions", []),
        "flags": report.get("flags", {}),
        "wall_s": report.get("wall_s"),
    }


def run_arm(root: Path, arm: str, seed: int, foundation: Path, quick: bool) -> dict[str, Any]:
    data_dir = root / arm
    shutil.copytree(foundation, data_dir / "models" / "foundation")
    plan = (Plan.quick() if quick else Plan.full()).seeded(seed)
    plan = replace(plan, retrain_cost=arm == "with")
    return run_demo(
        CommonSettings(data_dir=data_dir),
        echo=lambda line: print(f"[{arm}] {line}", file=sys.stderr, flush=True),
        plan=plan,
        bootstrap_model=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, default=None, help="data directories go here")
    parser.add_argument("--foundation", type=Path, default=None, help="a built foundation model")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["with", "without"])
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny model")
    parser.add_argument(
        "--force",
        action="store_true",
        help="run the second arm even when the first arm's gate refused the flags' cost model",
    )
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="clinalign-flags-ablation-"))
    started = time.monotonic()
    taken = [str(root / arm) for arm in args.arms if (root / arm).exists()]
    if taken:  # checked before an hour's work, not after the first arm
        parser.error(f"{', '.join(taken)} exist: choose another --root")
    foundation = args.foundation
    if foundation is None:
        foundation = root / "foundation"
        build_foundation(foundation, args.seed, args.quick, "foundation")
    arms: dict[str, Any] = {}
    for arm in args.arms:
        arms[ARMS[arm]] = arm_figures(run_arm(root, arm, args.seed, foundation, args.quick))
        # each arm's figures as soon as it ends: a later arm's failure keeps them
        (root / f"{arm}.json").write_text(json.dumps(arms[ARMS[arm]], default=str))
        print(f"[{arm}] figures: {root / f'{arm}.json'}", file=sys.stderr, flush=True)
        if arm == "with" and not arms[ARMS[arm]]["loop_cost_model_promoted"] and not args.force:
            # the loop's PPO ran under the first cost model, as the other arm's would
            print("[with] the gate refused the flags' cost model: no ablation", file=sys.stderr)
            break
    print(
        json.dumps(
            {
                "name": "flags_ablation",
                "plan": "quick" if args.quick else "full",
                "seed": args.seed,
                "root": str(root),
                "arms": arms,
                "total_wall_s": round(time.monotonic() - started, 1),
            },
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
