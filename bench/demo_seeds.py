"""Run-to-run variance of the closed loop (issue 20): the whole demonstration, once per
seed, and the mean and spread of every figure it reports.

One run of ``clinalign demo`` is one draw: the foundation model, SFT, the simulated
panel's labels, the reward model and PPO all depend on a seed, and a win rate's interval
from one run says how sure that run is of its own policies, not how far another run's
policies would land. Each seed here seeds all of them (``Plan.seeded``); the foundation
model is built first with a step budget only (no time budget, which a slow machine can hit
and cut the build short), so a seed reproduces. The figures' judges and prompts stay
fixed across seeds: the final held-out ``clinical-test`` set and the evaluation's panel.

Not a test and not part of ``make demo``: three seeds take about an hour on two cores
(1242 s a run on 2026-12-07).
Run it on a quiet machine; the docs (docs/experiments.md) carry its latest figures with
their date.

Last line JSON:
{"name": "demo_seeds", "seeds": [...], "figures": {"<figure>": {"n", "mean", "sd", "min",
"max", "values"}}, "promoted": {...}, "gate": {...}, "wall_s": {...}}

    .venv/bin/python bench/demo_seeds.py [--seeds 0 1 2] [--root DIR] [--quick]
        [--rule-penalty 0]

``--rule-penalty 0`` trains every RLHF round without the clinical rule term: the ablation
beside the demo's figures, which train with it.

``--quick`` runs the shortened loop (``Plan.quick``) on a tiny model: a smoke run of this
script, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from statistics import fmean, stdev
from typing import Any

from clinalign.common.config import CommonSettings
from clinalign.demo import Plan, run_demo
from clinalign.foundation.build import bootstrap, build_tiny_model

# the report's keys whose numbers are compared across seeds (nested dicts are flattened)
FIGURES = ("rounds", "rubric", "criteria", "kl_to_sft", "ended", "win_rate_vs_sft")


def flatten(value: Any, prefix: str = "") -> dict[str, float]:
    """Every number under ``value``, keyed by its dotted path."""
    if isinstance(value, bool):
        return {prefix: float(value)}
    if isinstance(value, int | float):
        return {prefix: float(value)} if math.isfinite(value) else {}
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {}


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "mean": round(fmean(values), 4),
        "sd": round(stdev(values), 4) if len(values) > 1 else 0.0,
        "min": round(min(values), 4),
        "max": round(max(values), 4),
        "values": [round(v, 4) for v in values],
    }


def build_foundation(foundation: Path, seed: int, quick: bool, label: str) -> None:
    """The foundation model of ``seed`` (the tiny one with ``quick``), built with a step
    budget only, its progress every 100 steps on stderr."""
    if quick:
        build_tiny_model(foundation, seed=seed)
        return

    def progress(step: int, total: int, loss: float) -> None:
        if step % 100 == 0 or step == total:
            print(f"[{label}] foundation step {step}/{total}, loss {loss:.3f}", file=sys.stderr)

    bootstrap(foundation, seed=seed, time_budget_s=math.inf, progress=progress)


def run_seed(root: Path, seed: int, quick: bool, rule_penalty: str | None) -> dict[str, Any]:
    data_dir = root / f"seed-{seed}"
    foundation = data_dir / "models" / "foundation"
    build_foundation(foundation, seed, quick, f"seed {seed}")
    plan = (Plan.quick() if quick else Plan.full()).seeded(seed)
    if rule_penalty is not None:
        plan = replace(plan, ppo={**plan.ppo, "rule_penalty": rule_penalty})
    common = CommonSettings(data_dir=data_dir)
    return run_demo(
        common,
        echo=lambda line: print(f"[seed {seed}] {line}", file=sys.stderr, flush=True),
        plan=plan,
        bootstrap_model=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=None, help="data directories go here")
    parser.add_argument("--quick", action="store_true", help="a smoke run on a tiny model")
    parser.add_argument(
        "--rule-penalty",
        default=None,
        help="PPO's clinical rule term instead of the plan's (0: trained without it)",
    )
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="clinalign-demo-seeds-"))
    started = time.monotonic()
    reports = {seed: run_seed(root, seed, args.quick, args.rule_penalty) for seed in args.seeds}
    figures: dict[str, list[float]] = {}
    for report in reports.values():
        for key, value in flatten({k: report.get(k) for k in FIGURES}).items():
            figures.setdefault(key, []).append(value)
    result = {
        "name": "demo_seeds",
        "plan": "quick" if args.quick else "full",
        "rule_penalty": args.rule_penalty,
        "seeds": args.seeds,
        "root": str(root),
        # n < the seeds where a run did not report a figure (a round the gate refused)
        "figures": {k: spread(v) for k, v in sorted(figures.items())},
        "promoted": {seed: r.get("promoted_versions", []) for seed, r in reports.items()},
        "gate": {seed: r.get("gate", []) for seed, r in reports.items()},
        "wall_s": {seed: r.get("wall_s") for seed, r in reports.items()},
        "total_wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
