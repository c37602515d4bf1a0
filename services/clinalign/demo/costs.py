"""The demo's cost-model figures (issue 21): the cost model's held-out figures by version,
the served cost model on the EHR traffic's held-out flags (the monitor's GetStats),
the PPO constraint's budget (SFT's expected cost on its labelled answers), and each
policy's expected cost on the final held-out answers, RLHF rounds also paired against SFT
(``evaluation.expected_costs``), for ``clinalign demo --json`` and the report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinalign.demo.evaluation import Evaluation, expected_costs, interval_json
from clinalign.demo.plan import Figures


def cost_figures(
    result: Evaluation, figures: Figures, echo: Callable[[str], Any]
) -> dict[str, Any]:
    """The report's ``cost_model``, ``cost_budget`` and ``expected_cost`` (empty when the
    run trained no cost model)."""
    return {
        "cost_model": {v: dict(m) for v, m in figures.cost_model.items()},
        "cost_on_flags": {v: dict(m) for v, m in figures.cost_on_flags.items()},
        "cost_budget": figures.cost_budget,
        "expected_cost": _expected(result, figures, echo),
    }


def _expected(result: Evaluation, figures: Figures, echo: Callable[[str], Any]) -> dict[str, Any]:
    path = figures.paths.get("cm-1")
    if not path:
        return {}
    found = expected_costs(result, Path(path))
    for name, by in found.items():
        cost, paired = by["cost"], by.get("vs_sft")
        line = f"   expected cost of {name}: {cost.estimate:.3f} [{cost.low:.3f}, {cost.high:.3f}]"
        if paired is not None:
            line += f"; against SFT {paired.estimate:+.3f} [{paired.low:+.3f}, {paired.high:+.3f}]"
        echo(line)
    return {name: {k: interval_json(i) for k, i in by.items()} for name, by in found.items()}


def cost_lines(summary: dict[str, Any]) -> list[str]:
    """The report's lines on the cost model."""
    budget = summary.get("cost_budget")
    costs = "; ".join(
        f"{name} {c['cost']['estimate']:.3f} [{c['cost']['low']:.3f}, {c['cost']['high']:.3f}]"
        + (
            f" (against SFT {c['vs_sft']['estimate']:+.3f} [{c['vs_sft']['low']:+.3f}, "
            f"{c['vs_sft']['high']:+.3f}])"
            if "vs_sft" in c
            else ""
        )
        for name, c in summary.get("expected_cost", {}).items()
    )
    on_flags = "; ".join(
        f"{v} {m['auroc']:.3f} [{m['auroc_low']:.3f}, {m['auroc_high']:.3f}] ({m['harmful']} "
        f"flagged harmful, {m['clean']} accepted)"
        for v, m in summary.get("cost_on_flags", {}).items()
        if "auroc" in m
    )
    return [
        "- Cost model on held-out flags (the EHR traffic's confirmed flags against its "
        f"accepted drafts; AUROC, 95 % interval): {on_flags or 'not measured'}.",
        f"- Cost model, held-out figures: {summary.get('cost_model') or 'none trained'}; the "
        f"PPO constraint's budget (SFT's expected cost): "
        f"{'—' if budget is None else f'{budget:.3f}'}.",
        "- Expected cost on the final held-out answers (mean over prompts, 95 % interval): "
        + (costs or "none (no cost model)")
        + ".",
    ]
