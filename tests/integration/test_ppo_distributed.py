"""PPO data-parallel on two CPU processes: ``torchrun --nproc_per_node 2`` with accelerate on
the gloo backend, the launch a multi-GPU Kubernetes job uses (with NCCL there). Each
process samples its own responses (its own seed) and DDP keeps the replicas identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).parent.parent / "ppo_distributed_runner.py"


@pytest.mark.slow
def test_ppo_runs_data_parallel_under_torchrun(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(RUNNER.parent.parent)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            str(RUNNER),
            str(tiny_model_dir),
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert all(r["backends"] == ["gloo"] for r in ranks)
    assert all(r["processes"] == 2 and r["iterations"] == 8 for r in ranks)
    assert ranks[0]["params"] == ranks[1]["params"]  # replicas stayed in step
    assert ranks[0]["responses"] != ranks[1]["responses"]  # each sampled its own
    manifest = json.loads((tmp_path / "model" / "clinalign_manifest.json").read_text())
    assert manifest["method"]["processes"] == 2
    assert manifest["config"]["hyperparameters"]["rollout_batch_size"] == 8
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint-8"]
    assert sorted(
        p.name for p in (tmp_path / "checkpoints" / "checkpoint-8").glob("random_states_*")
    ) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
