"""The job report directory: the CSV holds every logged value by step, the PNGs are real
images of the series present (non-finite values skipped), and report.md lists the final
metrics and embeds the plots; an empty history still gives the table."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

from clinalign.trainer.jobs.report import write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(PNG_MAGIC) and len(data) > 5_000  # axes, a title and a curve


def test_ppo_history_writes_csv_plots_and_markdown(tmp_path: Path) -> None:
    history = [
        (1, {"score": 0.1, "kl": 0.0, "kl_coef": 0.05, "entropy": 2.5, "clip_frac": 0.0}),
        (2, {"score": 0.3, "kl": 0.02, "kl_coef": 0.05, "entropy": 2.4, "value_loss": 1.5}),
        (3, {"score": math.nan, "kl": 0.04, "kl_coef": 0.05, "entropy": 2.2, "value_loss": 1.1}),
        (4, {"score": 0.5, "kl": math.inf, "kl_coef": 0.06, "response_length": 31.0}),
    ]
    final = {"score": 0.5, "kl": 0.04, "train_steps": 4.0}
    written = write_report(tmp_path / "report", "ppo", history, final)

    out = tmp_path / "report"
    names = [p.name for p in written]
    assert names == [
        "metrics.csv",
        "reward.png",
        "kl.png",
        "entropy.png",
        "clip_frac.png",
        "value_loss.png",
        "response_length.png",
        "report.md",
    ]
    assert all(p.parent == out and p.is_file() for p in written)
    assert all(_is_png(p) for p in written if p.suffix == ".png")
    # No series, no plot: this history has no loss, policy loss or approximate KL.
    for absent in ("loss.png", "policy_loss.png", "approx_kl.png", "explained_variance.png"):
        assert not (out / absent).exists()

    with (out / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "step",
        "score",
        "kl",
        "kl_coef",
        "entropy",
        "clip_frac",
        "value_loss",
        "response_length",
    ]
    for row, (step, logged) in zip(rows, history, strict=True):
        assert int(row["step"]) == step
        for name, cell in row.items():
            if name == "step":
                continue
            if name not in logged:
                assert cell == ""  # not logged at this step
            elif math.isnan(logged[name]):
                assert math.isnan(float(cell))
            else:
                assert float(cell) == logged[name]  # exact: written with repr

    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# ppo job report")
    assert "| metric | value |" in markdown
    assert "| score | 0.5 |" in markdown and "| kl | 0.04 |" in markdown
    assert "| train_steps | 4 |" in markdown
    assert "![Reward](reward.png)" in markdown and "(kl.png)" in markdown
    assert "(loss.png)" not in markdown


def test_a_loss_history_plots_the_loss_and_skips_non_finite_points(tmp_path: Path) -> None:
    history = [(s, {"loss": 1.0 / s, "learning_rate": 1e-3}) for s in range(1, 30)]
    history.append((30, {"loss": math.nan, "learning_rate": 1e-3}))
    written = write_report(tmp_path, "sft", history, {"train_loss": 0.25})
    assert [p.name for p in written] == ["metrics.csv", "loss.png", "report.md"]
    assert _is_png(tmp_path / "loss.png")
    assert "![Training loss](loss.png)" in (tmp_path / "report.md").read_text()


def test_an_empty_history_still_writes_the_table(tmp_path: Path) -> None:
    written = write_report(tmp_path, "dpo", [], {"train_steps": 0.0, "eval_loss": 0.693147})
    assert [p.name for p in written] == ["metrics.csv", "report.md"]
    assert (tmp_path / "metrics.csv").read_text().strip() == "step"
    markdown = (tmp_path / "report.md").read_text()
    assert "No steps were logged." in markdown
    assert "| eval_loss | 0.693147 |" in markdown and "| train_steps | 0 |" in markdown
    assert ".png" not in markdown


def test_importing_the_module_does_not_load_matplotlib() -> None:
    # The trainer service imports its modules at start-up; matplotlib is for reports only.
    code = "import sys, clinalign.trainer.jobs.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
