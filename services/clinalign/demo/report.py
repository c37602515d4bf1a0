"""The demo's report: held-out evaluation, ``report.json`` (the figures `clinalign demo
--json` prints), ``report.md`` and PNG plots, under ``<data_dir>/demo/``."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clinalign.common.config import CommonSettings
from clinalign.common.stats import Interval, NonInferiority
from clinalign.demo.costs import cost_figures, cost_lines
from clinalign.demo.evaluation import PROMPT_SET, Evaluation, WinRate, evaluate, interval_json
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
    """Evaluates every policy the run produced on the final held-out prompts and gathers the
    report's figures. The keys `agreement`, `rm_accuracy`, `rubric`, `win_rate_vs_sft`,
    `kl_to_sft`, `flags_fed_back`, `promoted_versions`, `wall_s`, `rounds`,
    `eval_prompt_set` and `eval_max_new_tokens` are the contract of `clinalign demo
    --json`; `rounds` holds, per RLHF round, its win rates against SFT, its criteria and
    its safety verdicts (see `_round`)."""
    policies = [
        (name, figures.versions[name], Path(figures.paths[name]))
        for name in POLICY_ORDER
        if figures.paths.get(name)
    ]
    prompts = prompt_sets.load(PROMPT_SET, limit=plan.eval_prompts)
    result = evaluate(
        policies,
        prompts,
        max_new_tokens=plan.eval_max_new_tokens,
        samples_per_prompt=plan.eval_samples,
        safety_margin=plan.safety_margin,
        # its rubric score only: a second answer per prompt would buy no win rate
        once=("foundation",),
        prompt_set=PROMPT_SET,
    )
    _echo(result, echo)
    return {
        "name": "demo",
        "agreement": figures.agreement,
        "rm_accuracy": {
            name: figures.rm_accuracy.get(figures.versions.get(name, ""))
            for name in ("rm-1", "rm-2")
            if figures.versions.get(name) in figures.rm_accuracy
        },
        "rm_accuracy_ceiling": figures.agreement,
        **cost_figures(result, figures, echo),
        "eval_prompt_set": result.prompt_set,
        "eval_max_new_tokens": result.max_new_tokens,
        "safety_margin": result.safety_margin,
        "rounds": {name: _round(result, name) for name in result.rounds},
        "rubric": {p.name: round(p.rubric, 4) for p in result.policies},
        "rubric_ci95": {
            k: [round(i.low, 4), round(i.high, 4)] for k, i in result.rubric_interval.items()
        },
        "criteria": {
            p.name: {k: round(v, 4) for k, v in p.criteria.items()} for p in result.policies
        },
        "criteria_ci95": {
            p.name: {k: [round(i.low, 4), round(i.high, 4)] for k, i in p.criteria_interval.items()}
            for p in result.policies
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


def _verdict(v: NonInferiority | None) -> dict[str, Any] | None:
    """A safety verdict as `clinalign demo --json` gives it; None where the criterion
    applied to no prompt of both policies."""
    if v is None:
        return None
    return {
        "candidate": round(v.candidate, 4),
        "baseline": round(v.baseline, 4),
        "difference": interval_json(v.difference),
        "margin": v.margin,
        "passed": v.passed,
    }


def _round(result: Evaluation, name: str) -> dict[str, Any]:
    """One RLHF round against SFT, every figure on the final held-out set: win rates
    (``n`` is prompts; ``both_ended`` is None when no pair had both answers ended), each
    criterion's score, each safety criterion's non-inferiority verdict, the share of the
    round's answers that ended, and its KL to SFT."""
    w = result.rounds[name].win_rate
    policy = next(p for p in result.policies if p.name == name)
    return {
        "version": policy.version,
        "win_rate": {
            "overall": {
                **interval_json(w.overall),
                "wins": w.wins,
                "ties": w.ties,
                "losses": w.losses,
            },
            "both_ended": (
                {**interval_json(w.both_ended), "pairs": w.both_ended_pairs}
                if w.both_ended
                else None
            ),
            "length_controlled": {**interval_json(w.length_controlled), "length": "words"},
        },
        "criteria": {
            c: {
                "score": round(i.estimate, 4),
                "low": round(i.low, 4),
                "high": round(i.high, 4),
                "n": i.n,
            }
            for c, i in policy.criteria_interval.items()
        },
        "safety": {c: _verdict(v) for c, v in result.rounds[name].safety.items()},
        "ended": round(policy.ended, 4),
        "kl_to_sft": round(policy.kl_to_sft, 4) if policy.kl_to_sft is not None else None,
    }


def _echo(result: Evaluation, echo: Callable[[str], Any]) -> None:
    for p in result.policies:
        i = result.rubric_interval[p.name]
        line = f"   {p.name:<10} {p.version:<12} rubric {p.rubric:.3f} [{i.low:.3f}, {i.high:.3f}]"
        if p.kl_to_sft is not None:
            line += f"  KL to SFT {p.kl_to_sft:.2f}"
        line += f"  words {p.mean_words:.0f}  ended {p.ended:.2f}"
        echo(line)
    for name, r in result.rounds.items():
        w = r.win_rate
        both = _cell(w.both_ended) if w.both_ended else "—"
        echo(
            f"   {name} vs SFT: win rate {_cell(w.overall)}, both ended {both}, "
            f"length-controlled {_cell(w.length_controlled)}"
        )
        refused = [c for c, v in r.safety.items() if v is not None and not v.passed]
        echo(
            f"   {name} safety: "
            + (
                f"NOT non-inferior on {', '.join(refused)}"
                if refused
                else "non-inferior on every criterion scored"
            )
        )


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
    return [p for p in result.prompt_texts for _ in range(k)]


def _figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _yerr(intervals: Sequence[Interval | None]) -> list[list[float]]:
    """Error bars below and above each estimate; none for a missing interval, nor past an
    estimate that lies outside its percentile interval (a bootstrap's can)."""
    return [
        [max(0.0, i.estimate - i.low) if i else 0.0 for i in intervals],
        [max(0.0, i.high - i.estimate) if i else 0.0 for i in intervals],
    ]


def _plot_rubric(path: Path, result: Evaluation) -> Path:
    figure = _figure()
    axes = figure.add_subplot()
    names = [p.name for p in result.policies]
    means = [p.rubric for p in result.policies]
    errors = _yerr([result.rubric_interval[n] for n in names])
    axes.bar(names, means, yerr=errors, capsize=6, color="#4C72B0")
    axes.set_ylim(max(0.0, min(means) - 0.1), min(1.0, max(means) + 0.05))
    axes.set_ylabel("mean rubric score (95% CI)")
    axes.set_title(
        f"Rubric score on {result.prompts} {result.prompt_set} prompts (simulated panel)"
    )
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png")
    return path


def _plot_criteria(path: Path, result: Evaluation) -> Path:
    figure = _figure()
    axes = figure.add_subplot()
    criteria = _criteria(result)
    width = 0.8 / max(len(result.policies), 1)
    for i, p in enumerate(result.policies):
        xs = [j + i * width for j in range(len(criteria))]
        found = [p.criteria_interval.get(c) for c in criteria]
        axes.bar(
            xs,
            [f.estimate if f else 0.0 for f in found],
            width,
            yerr=_yerr(found),
            capsize=2,
            label=p.name,
        )
    axes.set_xticks([j + 0.4 - width / 2 for j in range(len(criteria))])
    axes.set_xticklabels([c.replace("_", " ") for c in criteria], rotation=30, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("mean score where it applies (95% CI)")
    axes.set_title(f"Rubric criteria on {result.prompt_set} prompts")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.savefig(path, format="png")
    return path


def _plot_win_rate(path: Path, result: Evaluation) -> Path | None:
    if not result.rounds:
        return None
    figure = _figure()
    axes = figure.add_subplot()
    names = list(result.rounds)
    kinds = ("all pairs", "both ended", "length-controlled")
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
        rates = [_win_rates(result.rounds[n].win_rate)[j] for n in names]
        xs = [i + j * width for i in range(len(names))]
        axes.bar(
            xs,
            [w.estimate if w else 0.0 for w in rates],
            width,
            yerr=_yerr(rates),
            capsize=4,
            label=kind,
        )
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
    axes.set_xticklabels(names)
    axes.axhline(0.5, color="grey", linestyle="--", label="no better than SFT")
    axes.set_ylim(0, 1)
    axes.set_ylabel("win rate vs SFT (95% bootstrap CI)")
    axes.set_title("Simulated panel's verdict: RLHF answer vs SFT answer")
    axes.legend(fontsize=8)
    figure.savefig(path, format="png")
    return path


def _win_rates(w: WinRate) -> tuple[Interval, Interval | None, Interval]:
    return w.overall, w.both_ended, w.length_controlled


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
        f"Wall time: {summary.get('wall_s', '?')} s. Every figure below comes from the final "
        f"held-out prompt set `{result.prompt_set}` ({result.prompts} prompts, phrasings no "
        "policy trained on and that neither the promotion gate nor any tuning choice read), "
        f"{result.samples_per_prompt} answer(s) each per policy"
        + (f" ({', '.join(once)} once: rubric only)" if once else "")
        + f", at most {result.max_new_tokens} new tokens an answer; intervals are 95% "
        "bootstraps over prompts.",
        "",
        *_rounds_table(result),
        "## Policies",
        "",
        "| policy | version | rubric (95% CI) | KL to SFT | words | repeated 4-grams | ended |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result.policies:
        i = result.rubric_interval[p.name]
        kl = f"{p.kl_to_sft:.2f}" if p.kl_to_sft is not None else "—"
        lines.append(
            f"| {p.name} | {p.version} | {_cell(i)} | {kl} | {p.mean_words:.0f} "
            f"| {p.repetition:.3f} | {p.ended:.2f} |"
        )
    header = " | ".join(p.name for p in result.policies)
    lines += ["", "## Criteria (95% CI)", "", f"| criterion | {header} |"]
    lines.append("|---|" + "---|" * len(result.policies))
    for c in _criteria(result):
        cells = " | ".join(
            _cell(p.criteria_interval[c]) if c in p.criteria_interval else "—"
            for p in result.policies
        )
        lines.append(f"| {c} | {cells} |")
    lines += _loop_lines(summary)
    lines += ["", "## Plots", ""]
    lines += [f"![{k}]({Path(v).name})" for k, v in summary.get("plots", {}).items()]
    return "\n".join(lines) + "\n"


def _rounds_table(result: Evaluation) -> list[str]:
    """Each RLHF round's win rates against SFT with its safety verdicts beside them: a
    rate that rises while a safety criterion falls is a regression, not a gain."""
    if not result.rounds:
        return []
    safety = list(next(iter(result.rounds.values())).safety)
    lines = [
        "## Each RLHF round against SFT",
        "",
        "Win rates: all pairs of answers; only pairs where both answers ended; and "
        "length-controlled (the outcome regressed on the difference in words). Safety: the "
        "round's score minus SFT's, prompt by prompt, with its interval; non-inferior when "
        f"the interval's lower bound is above -{result.safety_margin} (the margin).",
        "",
        "| round | win rate | both ended | length-controlled | "
        + " | ".join(c.replace("_", " ") for c in safety)
        + " | ended | KL to SFT |",
        "|---|---|---|---|" + "---|" * len(safety) + "---|---|",
    ]
    for name, r in result.rounds.items():
        w = r.win_rate
        policy = next(p for p in result.policies if p.name == name)
        verdicts = " | ".join(_verdict_cell(r.safety[c]) for c in safety)
        kl = f"{policy.kl_to_sft:.2f}" if policy.kl_to_sft is not None else "—"
        lines.append(
            f"| {name} ({policy.version}) | {_cell(w.overall)} "
            f"| {_cell(w.both_ended) if w.both_ended else '—'} | {_cell(w.length_controlled)} "
            f"| {verdicts} | {policy.ended:.2f} | {kl} |"
        )
    return [*lines, ""]


def _loop_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Labels, reward models, loop",
        "",
        f"- Candidate pairs labelled: {summary['labelled_pairs']}; annotator agreement "
        f"{_fmt(summary['agreement'])}.",
        f"- Reward-model held-out pair accuracy: {summary['rm_accuracy']} (agreement ceiling "
        f"{_fmt(summary['rm_accuracy_ceiling'])}).",
        *cost_lines(summary),
        _ehr_line(summary["flags"], summary["flags_fed_back"]),
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
    return lines


def _criteria(result: Evaluation) -> list[str]:
    found: list[str] = []
    for p in result.policies:
        found += [c for c in p.criteria_interval if c not in found]
    return found


def _cell(i: Interval) -> str:
    return f"{i.estimate:.3f} [{i.low:.3f}, {i.high:.3f}]"


def _verdict_cell(v: NonInferiority | None) -> str:
    if v is None:
        return "— (never applied)"
    d = v.difference
    figures = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    return f"non-inferior {figures}" if v.passed else f"**NOT non-inferior** {figures}"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _ehr_line(flags: dict[str, int], fed_back: int) -> str:
    """The EHR traffic through the CDS Hooks gateway and what became of its drafts."""
    if "overridden" not in flags:  # a report written before the traffic went through CDS Hooks
        return f"- EHR traffic and flags: {flags}; confirmed flags fed back: {fed_back}."
    return (
        f"- EHR traffic through the CDS Hooks gateway: {flags['outputs']} drafts (cards); "
        f"the simulated clinicians accepted {flags['accepted']} and overrode "
        f"{flags['overridden']}, which became {flags['flagged']} flags "
        f"({flags['with_correction']} with the clinician's correction); on review "
        f"{flags['confirmed']} confirmed, {flags['dismissed']} dismissed; confirmed flags fed "
        f"back to the preference store: {fed_back}; calls retried after a 429 or 503: "
        f"{flags.get('retried', 0)}."
    )
