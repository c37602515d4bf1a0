"""A finished job's report directory: ``metrics.csv`` (every logged metric by step),
PNG plots of the training curves and ``report.md``, which lists the final metrics and
embeds the plots.

Plots are drawn with matplotlib's object-oriented API on the Agg canvas (``Figure`` plus
``FigureCanvasAgg``, no ``pyplot``): no global figure state, so reports may be written
from several threads, and no display. matplotlib is imported only when a report is
written; the trainer service does not load it at start-up.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

CSV_FILE = "metrics.csv"
REPORT_FILE = "report.md"

# One plot per group, for the series of the group that the history holds: the loss of
# every kind, and the PPO statistics (names as ``clinalign.trainer.methods.ppo`` logs them).
PLOTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("loss", "Training loss", ("loss",)),
    ("reward", "Reward", ("score", "non_score_reward", "reward")),
    ("kl", "KL divergence to the reference policy", ("kl", "kl_coef")),
    ("entropy", "Policy entropy", ("entropy",)),
    ("clip_frac", "Clipped fraction", ("clip_frac", "value_clip_frac")),
    ("value_loss", "Value loss", ("value_loss",)),
    ("policy_loss", "Policy loss", ("policy_loss",)),
    ("approx_kl", "Approximate KL between PPO epochs", ("approx_kl",)),
    ("explained_variance", "Explained variance of the value head", ("explained_variance",)),
    ("response_length", "Response length", ("response_length",)),
    # the cost constraint (issue 21): expected cost against the budget, and λ
    ("cost", "Expected cost per finished response", ("cost", "harmful_frac")),
    ("lagrange_multiplier", "Lagrange multiplier of the cost constraint", ("lagrange_multiplier",)),
)

History = Sequence[tuple[int, Mapping[str, float]]]


def write_report(
    out_dir: Path,
    kind: str,
    history: History,
    final: Mapping[str, float],
) -> list[Path]:
    """Writes the report of a ``kind`` job into ``out_dir`` from its ``history`` ((step,
    metrics logged at that step), in order) and its ``final`` metrics; returns the files
    written: the CSV, one PNG per plot group with a series in the history, the Markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [_write_csv(out_dir / CSV_FILE, history)]
    plots = []
    for name, title, names in PLOTS:
        series = {n: _series(history, n) for n in names}
        series = {n: points for n, points in series.items() if points}
        if series:
            path = out_dir / f"{name}.png"
            _plot(path, title, kind, series)
            plots.append((title, path))
    written.extend(path for _, path in plots)
    written.append(_write_markdown(out_dir / REPORT_FILE, kind, history, final, plots))
    return written


def _columns(history: History) -> list[str]:
    """Every metric name in the history, in the order first seen."""
    seen: dict[str, None] = {}
    for _, metrics in history:
        seen.update(dict.fromkeys(metrics))
    return list(seen)


def _write_csv(path: Path, history: History) -> Path:
    columns = _columns(history)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *columns])
        for step, metrics in history:
            writer.writerow([step, *(_cell(metrics.get(c)) for c in columns)])
    return path


def _cell(value: float | None) -> str:
    # repr round-trips a float exactly; a metric not logged at this step stays blank.
    return "" if value is None else repr(float(value))


def _series(history: History, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric, non-finite values (and a manifest's nulls) left out."""
    return [
        (step, float(value))
        for step, metrics in history
        if (value := metrics.get(name)) is not None and math.isfinite(value)
    ]


def _plot(path: Path, title: str, kind: str, series: Mapping[str, list[tuple[int, float]]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, points in series.items():
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, label=name, marker="." if len(points) < 50 else None)
    axes.set_title(f"{title} ({kind})")
    axes.set_xlabel("step")
    axes.set_ylabel(title if len(series) == 1 else "value")
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend()
    figure.savefig(path, format="png")


def _write_markdown(
    path: Path,
    kind: str,
    history: History,
    final: Mapping[str, float],
    plots: Sequence[tuple[str, Path]],
) -> Path:
    lines = [f"# {kind} job report", ""]
    steps = [step for step, _ in history]
    lines.append(
        f"{len(history)} logged steps (last {max(steps)})." if steps else "No steps were logged."
    )
    lines += ["", "## Final metrics", ""]
    if final:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_number(final[name])} |" for name in sorted(final)]
    else:
        lines.append("No final metrics were recorded.")
    if plots:
        lines += ["", "## Training curves", ""]
        for title, plot in plots:
            lines += [f"![{title}]({plot.name})", ""]
    lines.append(f"All logged metrics by step: [{CSV_FILE}]({CSV_FILE}).")
    path.write_text("\n".join(lines) + "\n")
    return path


def _number(value: float) -> str:
    value = float(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"
