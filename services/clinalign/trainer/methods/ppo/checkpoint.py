"""PPO's loop state, checkpoints and output: ``accelerate``'s ``save_state`` (weights,
optimiser, every process's RNG, and the ``LoopState`` registered with it) written beside
and renamed into place; at the end the trained policy (LoRA merged), its critic and the
manifest.

The manifest says what ran (issue 20): ``method.algorithm`` is "ppo" (GAE over a critic's
values) or "rloo" (the leave-one-out baseline, no critic; both optimise PPO's clipped
surrogate, ``method.policy_loss``), with ``advantage_estimator``, ``uses_critic``, how the
critic started (``critic_init``) and how advantages were whitened; and the KL anchor the
run's reference was, ``kl_anchor_version`` and ``kl_anchor_path``, which the next round
that starts from this policy keeps (``anchor``)."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import peft
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from clinalign.common.artefacts import MANIFEST_NAME, POLICY
from clinalign.common.training import code_version, library_versions, write_model_dir
from clinalign.trainer.methods.ppo import anchor as kl_anchor
from clinalign.trainer.methods.ppo.config import PPOHyperparameters

if TYPE_CHECKING:  # the reward trainer's module loads TRL's trainers and datasets
    from clinalign.common.artefacts import LoraSettings
    from clinalign.trainer.methods.ppo.models import PolicyAndCritic

FORMAT_VERSION = 1
CRITIC_DIR = "critic"  # in the saved model directory: the trained critic or value head
# in CRITIC_DIR beside a critic whose head has a bias its model class does not declare (the
# folded normalisation): the head's weights, which ``from_pretrained`` would drop
SCORE_HEAD_FILE = "score_head.pt"
CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class LoopState:
    """What ``accelerate`` cannot see: iteration, data position, β, the cost constraint's λ
    and the logged history.
    Registered for checkpointing, so ``save_state``/``load_state`` carry it."""

    iteration: int = 0
    data_epoch: int = 0
    data_index: int = 0
    kl_coef: float = 0.0
    multiplier: float = 0.0  # λ of the cost constraint, for the next iteration
    history: list[list[Any]] = field(default_factory=list)  # [iteration, {metric: value}]

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def start_state(
    accelerator: Accelerator, hyper: PPOHyperparameters, resume_from: Path | None, seed: int
) -> LoopState:
    """The loop state, registered for checkpointing: a fresh one with the global RNG seeded
    by ``seed`` (each process its own: N details "different seeds"), or the checkpoint
    ``resume_from``'s, with every process's RNG, weights and optimiser restored."""
    state = LoopState(kl_coef=hyper.kl_coef, multiplier=hyper.lagrangian_init)
    accelerator.register_for_checkpointing(state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
    else:
        set_seed(seed)
    return state


def checkpoint_due(hyper: PPOHyperparameters, iteration: int) -> bool:
    """Whether to checkpoint after ``iteration``: every ``checkpoint_every`` iterations
    (0: never)."""
    every = hyper.checkpoint_every
    return bool(every) and iteration % every == 0


# -- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(accelerator: Accelerator, root: Path, iteration: int) -> Path:
    """``accelerate``'s state (weights, optimiser, each process's RNG, the loop state) in
    ``root/checkpoint-<iteration>``, written beside and renamed into place so a kill never
    leaves a half-written checkpoint as the latest; older ones are removed."""
    final = root / f"{CHECKPOINT_PREFIX}{iteration}"
    staging = root / f".writing-{CHECKPOINT_PREFIX}{iteration}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging.rename(final)
        for old in root.glob(f"{CHECKPOINT_PREFIX}*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def last_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = [
        (int(p.name.removeprefix(CHECKPOINT_PREFIX)), p)
        for p in root.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
    ]
    return max(found)[1] if found else None


# -- output ------------------------------------------------------------------------------------


def save_output(
    model: PolicyAndCritic, tokenizer: Any, manifest: dict[str, Any], out_dir: Path
) -> None:
    """The trained policy (LoRA merged into full weights, as SFT and DPO save) with its
    critic or value head in ``critic/`` and the manifest, written atomically. A critic's
    score head goes to ``SCORE_HEAD_FILE`` too when it has a bias (``from_pretrained`` of
    a Llama-like classifier would drop it)."""
    policy: Any = model.policy
    if isinstance(policy, peft.PeftModel):
        policy = policy.merge_and_unload()  # an ordinary full model, as SFT and DPO save

    def save_critic(staging: Path) -> None:
        target = staging / CRITIC_DIR
        if model.critic is not None:
            model.critic.save_pretrained(target)
            if model.critic.score.bias is not None:
                torch.save(model.critic.score.state_dict(), target / SCORE_HEAD_FILE)
        else:
            target.mkdir()
            torch.save(model.value_head.state_dict(), target / "value_head.pt")

    write_model_dir(
        policy,
        tokenizer,
        out_dir,
        {MANIFEST_NAME: manifest},
        extra=save_critic if model.has_values else None,
    )


def build_manifest(
    hyper: PPOHyperparameters,
    lora: LoraSettings | None,
    state: LoopState,
    lineage: Mapping[str, Any],
    started: float,
    critic_dir: Path | None,
    world: int,
    anchor: kl_anchor.Anchor,
    policy_dir: Path,
) -> dict[str, Any]:
    """The trained policy's manifest: lineage, the KL anchor, settings, method, the last
    iteration's figures and the per-iteration history (non-finite figures as null)."""
    history = state.history
    last = dict(history[-1][1]) if history else {}
    first = dict(history[0][1]) if history else {}
    metrics = {k: float(v) for k, v in last.items() if isinstance(v, int | float)}
    metrics.update(
        {
            "iterations": float(state.iteration),
            "score_first": float(first.get("score", math.nan)),
            "score_last": float(last.get("score", math.nan)),
        }
    )
    return {
        "kind": POLICY,
        "format_version": FORMAT_VERSION,
        **dict(lineage),
        kl_anchor.VERSION_KEY: anchor.version,
        kl_anchor.PATH_KEY: str(anchor.path),
        "seed": hyper.seed,
        "config": {"hyperparameters": asdict(hyper), "lora": asdict(lora) if lora else None},
        "method": method(hyper, lora, critic_dir, world, anchor, policy_dir),
        "metrics": metrics,
        "history": [[i, {k: _finite(v) for k, v in f.items()}] for i, f in history],
        "code_version": code_version(),
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started, 2),
    }


def method(
    hyper: PPOHyperparameters,
    lora: LoraSettings | None,
    critic_dir: Path | None,
    world: int,
    anchor: kl_anchor.Anchor,
    policy_dir: Path,
) -> dict[str, Any]:
    """The manifest's ``method``: what actually ran, as ``models.build_models`` and
    ``scoring.compute_advantages`` decide it from the same settings."""
    gae = hyper.advantage_estimator == "gae"
    separate = gae and hyper.critic == "separate"
    from_reward_model = separate and critic_dir is not None
    critic_init = None  # rloo: no critic
    if from_reward_model:
        critic_init = "reward model, normalisation folded into its head"
    elif separate:
        critic_init = "policy weights, zero head"
    elif gae:
        critic_init = "zero value head on the policy's trunk"
    whitening = None
    if hyper.whiten_advantages:
        whitening = "per token, mean and scale" if gae else "per response, scale only"
    own_base = Path(anchor.path).resolve() == Path(policy_dir).resolve()
    if not own_base:
        reference = f"frozen copy of the KL anchor {anchor.version or anchor.path}"
    elif lora:
        reference = "base weights with the adapter disabled"
    else:
        reference = "frozen copy of the initial policy"
    constraint = None
    if hyper.cost_source != "none":
        constraint = (
            f"E[{hyper.cost_source} cost] <= {hyper.cost_budget}: score (R - λC)/(1 + λ), λ by "
            f"dual ascent from {hyper.lagrangian_init} (step {hyper.lagrangian_lr}, at most "
            f"{hyper.lagrangian_max})"
        )
    return {
        "algorithm": ("ppo" if gae else "rloo") + ("-lagrangian" if constraint else ""),
        "advantage_estimator": hyper.advantage_estimator,
        "policy_loss": "ppo_clip",
        "uses_critic": gae,
        "critic": hyper.critic if gae else None,
        "critic_init": critic_init,
        "critic_init_path": str(critic_dir) if from_reward_model else None,
        "advantage_whitening": whitening,
        "reference": reference,
        "lora": "merged into full weights" if lora else None,
        "cost_constraint": constraint,
        "processes": world,
    }


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None
