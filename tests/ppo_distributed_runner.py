"""Run by ``test_ppo_distributed`` under ``torchrun --nproc_per_node 2``: ClinAlign's PPO
loop on the tiny model, each process writing a checksum of its trained parameters so the
test can check that data parallelism kept the replicas identical."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from clinalign.trainer.methods.ppo import trainer as ppo_trainer
from clinalign.trainer.methods.ppo.config import PPOHyperparameters


def main() -> None:
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    prompts = [f"I have had a sore throat for {n} days. What should I do?" for n in range(2, 34)]
    hyper = PPOHyperparameters(
        iterations=8,
        rollout_batch_size=8,  # 4 prompts a process
        minibatches=2,
        ppo_epochs=2,
        response_length=16,
        learning_rate=1e-3,
        critic="value_head",
        checkpoint_every=4,
        seed=11,
    )
    seen: list[str] = []
    backends: set[str] = set()

    def score(ps: list[str], rs: list[str]) -> list[float]:
        seen.extend(rs)
        backends.add(str(torch.distributed.get_backend()))
        return [min(len(r.split()), 8) / 8 for r in rs]

    captured: dict[str, torch.nn.Module] = {}
    original = ppo_trainer.PolicyAndCritic.__init__

    def keep(self: torch.nn.Module, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        captured["model"] = self

    ppo_trainer.PolicyAndCritic.__init__ = keep  # type: ignore[method-assign]
    manifest = ppo_trainer.train_ppo(
        prompts,
        model_dir,
        out_dir / "model",
        hyper,
        score,
        checkpoint_dir=out_dir / "checkpoints",
    )
    digest = hashlib.sha256()
    for name, param in sorted(captured["model"].named_parameters()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().numpy().tobytes())
    report = {
        "rank": rank,
        "world": int(os.environ["WORLD_SIZE"]),
        "backends": sorted(backends),
        "params": digest.hexdigest(),
        "responses": hashlib.sha256("\n".join(seen).encode()).hexdigest(),
        "processes": manifest["method"]["processes"],
        "iterations": len(manifest["history"]),
    }
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
