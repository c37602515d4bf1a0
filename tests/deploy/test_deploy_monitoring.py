"""The Prometheus alert rules and the Grafana dashboard under deploy/: promtool accepts the
rules and their unit tests pass, and every metric the dashboard and rules read is one the
services export. promtool comes from Debian's `prometheus` package (`make install`); a
missing promtool fails these tests rather than skipping them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/clinalign-rules.yaml"
RULES_TEST = ROOT / "deploy/prometheus/clinalign-rules.test.yaml"
DASHBOARD = ROOT / "deploy/grafana/clinalign-dashboard.json"

_METRIC = re.compile(r"\b((?:clinalign|gen_ai|rpc_server)_[a-z0-9_]+)")
_SUFFIXES = ("_bucket", "_total", "_count", "_sum")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not on PATH: `make install` installs Debian's prometheus package"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)


def _exported_names() -> set[str]:
    """Metric names defined in the services' source (first argument of Counter, Gauge,
    Histogram or a GaugeMetricFamily)."""
    names: set[str] = set()
    for path in (ROOT / "services/clinalign").rglob("*.py"):
        names |= set(
            re.findall(r'"((?:clinalign|gen_ai|rpc_server)_[a-z0-9_]+)"', path.read_text())
        )
    return names


def _used_names(text: str) -> set[str]:
    used = set()
    for name in _METRIC.findall(text):
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        used.add(name)
    return used


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_read_only_exported_metrics() -> None:
    assert _used_names(RULES.read_text()) <= _exported_names()


def test_dashboard_is_valid_and_reads_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    used = set().union(*(_used_names(e) for e in exprs))
    assert used <= _exported_names()
    for wanted in (
        "gen_ai_server_request_duration_seconds",
        "gen_ai_server_time_to_first_token_seconds",
        "clinalign_generation_queue_depth",
        "clinalign_monitor_reward_psi",
        "clinalign_monitor_reward_ks",
        "clinalign_monitor_flag_rate",
        "clinalign_monitor_cost_mean",
        "clinalign_monitor_cost_model_auroc",
        "clinalign_monitor_outcomes",
        "clinalign_trainer_job_progress_ratio",
    ):
        assert wanted in used, wanted


@pytest.mark.parametrize("bad", ["clinalign_monitor_nope", "gen_ai_server_nope_seconds"])
def test_the_name_check_catches_unknown_metrics(bad: str) -> None:
    assert not _used_names(f"rate({bad}_total[5m])") <= _exported_names()
