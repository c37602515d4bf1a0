"""The demo's report: held-out evaluation, ``report.json`` (the figures `clinalign demo
--json` prints), ``report.md`` and PNG plots, under ``<data_dir>/demo/``."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinalign.common.config import CommonSettings
from clinalign.demo.evaluation import Evaluation, evaluate
from clinalign.demo.pipeline import Figures, Plan
from clinalign.trainer import prompt_sets

POLICY_ORDER = ("foundation", "sft", "rlhf-1", "rlhf-2", "rlhf-2-refused")


def summarise(
    figures: Figures,
    plan: Plan,
    common: CommonSettings,
    foundation: Path,
    echo: Callable[[str], Any],
) -> dict[str, Any]:
    """Evaluates every policy the run produced on held-out prompts and gathers the
    report's figures. The keys `agreement`, `rm_accuracy`, `rubric`, `win_rate_vs_sft`,
    `kl_to_sft`, `flags_fed_back`, `promoted_versions` and `wall_s` are the contract of
    `clinalign demo --json`."""
    policies = [
        (name, figures.versions[name], Path(figures.paths[name]))
        for name in POLICY_ORDER
        if figures.paths.get(name)
    ]
    prompts = prompt_sets.load("clinical-heldout", limit=plan.eval_prompts)
    result = evaluate(
        policies,
        prompts,
        max_new_tokens=plan.max_new_tokens,
        samples_per_prompt=plan.eval_samples,
        # its rubric score only: a second answer per prompt would buy no win rate
        once=("foundation",),
    )
    for p in result.policies:
        low, high = result.rubric_interval[p.name]
        line = f"   {p.name:<10} {p.version:<12} rubric {p.rubric:.3f} [{low:.3f}, {high:.3f}]"
        if p.kl_to_sft is not None:
            line += f"  KL to SFT {p.kl_to_sft:.2f}"
        line += f"  words {p.mean_words:.0f}  repetition {p.repetition:.3f}"
        echo(line)
    for name, w in result.win_rate_vs_sft.items():
        echo(f"   {name} vs SFT: win rate {w.rate:.3f} [{w.low:.3f}, {w.high:.3f}]")
    return {
        "name": "demo",
        "agreement": figures.agreement,
        "rm_accuracy": {
            name: figures.rm_accuracy.get(figures.versions.get(name, ""))
            for name in ("rm-1", "rm-2")
            if figures.versions.get(name) in figures.rm_accuracy
        },
        "rm_accuracy_ceiling": figures.agreement,
        "rubric": {p.name: round(p.rubric, 4) for p in result.policies},
        "rubric_ci95": {
            k: [round(low, 4), round(high, 4)] for k, (low, high) in result.rubric_interval.items()
        },
        "criteria": {
            p.name: {k: round(v, 4) for k, v in p.criteria.items()} for p in result.policies
        },
        "win_rate_vs_sft": {k: round(w.rate, 4) for k, w in result.win_rate_vs_sft.items()},
        "win_rate_ci95": {
            k: [round(w.low, 4), round(w.high, 4)] for k, w in result.win_rate_vs_sft.items()
        },
        "kl_to_sft": {
            p.name: round(p.kl_to_sft, 4) for p in result.policies if p.kl_to_sft is not None
        },
        "mean_words": {p.name: round(p.mean_words, 1) for p in result.policies},
        "repetition": {p.name: round(p.repetition, 4) for p in result.policies},
        "ended": {p.name: round(p.ended, 4) for p in result.policies},
        "eval_prompts": result.prompts,
        "eval_samples_per_prompt": result.samples_per_prompt,
        "versions": dict(figures.versions),
        "labelled_pairs": figures.labelled_pairs,
        "flags": dict(figures.flags),
        "flags_fed_back": figures.flags_fed_back,
        "jobs": [dict(j) for j in figures.jobs],
        "gate": [dict(g) for g in figures.gate],
        "promoted_versions": list(figures.promoted_versions),
        "retraining_runs": list(figures.retraining_runs),
        "lineage_example": list(figures.lineage_example),
        "_evaluation": result,
    }


def write_report(summary: dict[str, Any], figures: Figures, out_dir: Path) -> None:
    """Writes report.json, report.md and the PNGs; pops the in-memory evaluation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    result: Evaluation = summary.pop("_evaluation")
    plots = {
        "rubric": _plot_rubric(out_dir / "rubric.png", result),
        "criteria": _plot_criteria(out_dir / "criteria.png", result),
        "win_rate": _plot_win_rate(out_dir / "win_rate.png", result),
        "ppo": _plot_ppo(out_dir / "ppo.png", figures),
    }
    summary["plots"] = {k: str(v) for k, v in plots.items() if v is not None}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(summary, result))
    samples = {
        p.name: [
            {"prompt": q, "answer": t}
            for q, t in zip(_prompts(result, p.samples_per_prompt), p.texts, strict=True)
        ][:5]
        for p in result.policies
    }
    (out_dir / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")


def _prompts(result: Evaluation, k: int) -> list[str]:
    """The prompt of each of a policy's answers: every held-out prompt k times in a row."""
    prompts = prompt_sets.load("clinical-heldout", limit=result.prompts)
    return [p for p in prompts for _ in range(k)]


def _figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _plot_rubric(path: Path, result: Evaluation) -> Path:
    figure = _figure()
    axes = figure.add_subplot()
    names = [p.name for p in result.policies]
    means = [p.rubric for p in result.policies]
    errors = [
        [m - result.rubric_interval[n][0] for n, m in zip(names, means, strict=True)],
        [result.rubric_interval[n][1] - m for n, m in zip(names, means, strict=True)],
    ]
    axes.bar(names, means, yerr=errors, capsize=6, color="#4C72B0")
    axes.set_ylim(max(0.0, min(means) - 0.1), min(1.0, max(means) + 0.05))
    axes.set_ylabel("mean rubric score (95% CI)")
    axes.set_title(f"Held-out rubric score, {result.prompts} prompts (simulated panel's rubric)")
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png")
    return path


def _plot_criteria(path: Path, result: Evaluation) -> Path:
    figure = _figure()
    axes = figure.add_subplot()
    criteria = list(result.policies[0].criteria) if result.policies else []
    for p in result.policies:
        criteria += [c for c in p.criteria if c not in criteria]
    width = 0.8 / max(len(result.policies), 1)
    for i, p in enumerate(result.policies):
        xs = [j + i * width for j in range(len(criteria))]
        axes.bar(xs, [p.criteria.get(c, 0.0) for c in criteria], width, label=p.name)
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(criteria))])
    axes.set_xticklabels([c.replace("_", " ") for c in criteria], rotation=30, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("mean score where the criterion applies")
    axes.set_title("Rubric criteria on held-out prompts")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png")
    return path


def _plot_win_rate(path: Path, result: Evaluation) -> Path | None:
    if not result.win_rate_vs_sft:
        return None
    figure = _figure()
    axes = figure.add_subplot()
    names = list(result.win_rate_vs_sft)
    rates = [result.win_rate_vs_sft[n] for n in names]
    axes.bar(
        names,
        [w.rate for w in rates],
        yerr=[[w.rate - w.low for w in rates], [w.high - w.rate for w in rates]],
        capsize=6,
        color="#55A868",
    )
    axes.axhline(0.5, color="grey", linestyle="--", label="no better than SFT")
    axes.set_ylim(0, 1)
    axes.set_ylabel("win rate vs SFT (95% bootstrap CI)")
    axes.set_title("Simulated panel's verdict: RLHF answer vs SFT answer")
    axes.legend()
    figure.savefig(path, format="png")
    return path


def _plot_ppo(path: Path, figures: Figures) -> Path | None:
    runs = []
    for job in figures.jobs:
        csv_path = Path(job.get("report") or "") / "metrics.csv"
        if job["kind"] == "JOB_KIND_PPO" and csv_path.is_file():
            runs.append((job["label"], _read_csv(csv_path)))
    if not runs:
        return None
    figure = _figure()
    score_axes, kl_axes = figure.subplots(1, 2)
    for label, rows in runs:
        for axes, column in ((score_axes, "score"), (kl_axes, "kl")):
            points = [(r["step"], r[column]) for r in rows if column in r]
            if points:
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, label=label)
    score_axes.set_title("PPO: reward-model score")
    kl_axes.set_title("PPO: KL to the reference (nats)")
    for axes in (score_axes, kl_axes):
        axes.set_xlabel("iteration")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.savefig(path, format="png")
    return path


def _read_csv(path: Path) -> list[dict[str, float]]:
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
    return rows


def _markdown(summary: dict[str, Any], result: Evaluation) -> str:
    once = [p.name for p in result.policies if p.samples_per_prompt < result.samples_per_prompt]
    lines = [
        "# ClinAlign demonstration report",
        "",
        "Labels and flags come from a SIMULATED clinician panel: a simulation standing in for "
        "people, driven by the rubric in `clinalign/simulation/RUBRIC.md`. It never reads "
        "the reward model.",
        "",
        f"Wall time: {summary.get('wall_s', '?')} s. Held-out prompts: {result.prompts} "
        f"(`clinical-heldout`, phrasings no policy trained on), "
        f"{result.samples_per_prompt} answer(s) each per policy"
        + (f" ({', '.join(once)} once: rubric only)" if once else "")
        + "; intervals are bootstrapped over prompts.",
        "",
        "## Policies on held-out prompts",
        "",
        "| policy | version | rubric (95% CI) | win rate vs SFT (95% CI) | KL to SFT | words "
        "| repeated 4-grams | ended |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in result.policies:
        low, high = result.rubric_interval[p.name]
        w = result.win_rate_vs_sft.get(p.name)
        win = f"{w.rate:.3f} [{w.low:.3f}, {w.high:.3f}]" if w else "—"
        kl = f"{p.kl_to_sft:.2f}" if p.kl_to_sft is not None else "—"
        lines.append(
            f"| {p.name} | {p.version} | {p.rubric:.3f} [{low:.3f}, {high:.3f}] | {win} | {kl} "
            f"| {p.mean_words:.0f} | {p.repetition:.3f} | {p.ended:.2f} |"
        )
    header = " | ".join(p.name for p in result.policies)
    lines += ["", "## Criteria", "", f"| criterion | {header} |"]
    lines.append("|---|" + "---|" * len(result.policies))
    criteria: list[str] = []
    for p in result.policies:
        criteria += [c for c in p.criteria if c not in criteria]
    for c in criteria:
        cells = " | ".join(
            f"{p.criteria[c]:.3f}" if c in p.criteria else "—" for p in result.policies
        )
        lines.append(f"| {c} | {cells} |")
    lines += [
        "",
        "## Labels, reward models, loop",
        "",
        f"- Candidate pairs labelled: {summary['labelled_pairs']}; annotator agreement "
        f"{_fmt(summary['agreement'])}.",
        f"- Reward-model held-out pair accuracy: {summary['rm_accuracy']} (agreement ceiling "
        f"{_fmt(summary['rm_accuracy_ceiling'])}).",
        f"- EHR traffic and flags: {summary['flags']}; confirmed flags fed back: "
        f"{summary['flags_fed_back']}.",
        f"- Versions promoted: {', '.join(summary['promoted_versions']) or 'none'}.",
        "",
        "| job | kind | version | wall s |",
        "|---|---|---|---|",
    ]
    for job in summary["jobs"]:
        lines.append(
            f"| {job['label']} ({job['id']}) | {job['kind']} | {job['model_version']} "
            f"| {job['wall_s']:.0f} |"
        )
    for run in summary["retraining_runs"]:
        reason = f" — {run['reason']}" if run.get("reason") else ""
        lines += ["", f"Retraining run {run['id']} ({run['trigger']}): {run['state']}{reason}", ""]
        lines += [f"- {s['name']}: {s['ref']} — {s['outcome']}" for s in run["steps"]]
    if summary["lineage_example"]:
        lines += ["", "## Lineage of one served output", ""]
        lines += [f"- {s['kind']} {s['id']}: {s['summary']}" for s in summary["lineage_example"]]
    lines += ["", "## Plots", ""]
    lines += [f"![{k}]({Path(v).name})" for k, v in summary.get("plots", {}).items()]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
