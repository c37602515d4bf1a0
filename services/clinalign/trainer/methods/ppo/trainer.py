"""The PPO loop for language models (Ziegler et al. 2019; Ouyang et al. 2022), on torch,
transformers, peft and accelerate. ``train_ppo`` builds the models (``models``) and runs
the phases of each iteration in order, each a function of its own module. The maths is in
``core``; every choice is listed, with its default and source, in
``IMPLEMENTATION_DETAILS.md``.

One iteration:

1. **Rollout** (``rollout``). Each process takes its slice of the next
   ``rollout_batch_size`` prompts and samples a response to each with the current policy
   (temperature T, no top-k or top-p). Everything after the first EOS becomes padding.
2. **Score** (``scoring``). One forward pass of policy, critic and reference over query +
   response gives the old log-probabilities, the values and the reference
   log-probabilities; the responses that ended with some text are scored by ``score`` (in
   a job, ``RewardService.Score`` over gRPC), the others (never ended, or blank) get
   ``missing_eos_penalty`` without being scored (``core.penalise_unfinished``). Under a
   cost constraint (``cost_source``) the finished ones are also costed, and score
   (R - λ·C)/(1 + λ) (``constraint``).
3. **Advantages** (``scoring``). Per-token rewards are -β·KL plus the score at the last
   token; GAE gives advantages and returns (or, with the ``rloo`` estimator and no critic,
   each response's return against the mean of the other responses to its prompt);
   advantages are whitened over the process's batch.
4. **Optimise** (``optimise``). ``ppo_epochs`` passes over the batch in ``minibatches``
   shuffled minibatches (each in ``gradient_accumulation_steps`` micro-batches): clipped
   policy loss plus ``vf_coef`` times the clipped value loss, gradients clipped by global
   norm.
5. **Log** (``figures``), adapt β with the KL controller and λ by dual ascent, and
   **checkpoint**
   (``checkpoint``) every ``checkpoint_every`` iterations (``accelerate``'s
   ``save_state``: weights, optimiser, every process's RNG, and the loop state, which holds
   the data position and β).

Models: the policy (optionally through a LoRA adapter), a critic (a separate value model,
initialised from the reward model when one is given, its head normalised as the reward
service normalises scores, or a value head on the policy's trunk), and the frozen
reference, the KL anchor (``anchor``): the SFT policy a chain of PPO rounds started from,
which a PPO output passes on to the next round through its manifest. When the anchor is
the initial policy, with LoRA it is the same weights with the adapter switched off, so no
second copy is held; without LoRA a frozen copy of the initial policy.

Distributed: the same code runs under ``torchrun``/``accelerate launch``; the policy and
critic are one module wrapped by DDP, each process samples with its own seed
(``seed + rank·100003``), and logged figures are averaged over processes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed

from clinalign.common.artefacts import ProgressFn
from clinalign.common.errors import InvalidArgument
from clinalign.common.prompts import render_user_prompt
from clinalign.trainer.methods.ppo.anchor import Anchor, kl_anchor
from clinalign.trainer.methods.ppo.checkpoint import (
    CHECKPOINT_PREFIX,
    CRITIC_DIR,
    FORMAT_VERSION,
    LoopState,
    build_manifest,
    checkpoint_due,
    last_checkpoint,
    save_checkpoint,
    save_output,
    start_state,
)
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.methods.ppo.figures import (
    iteration_figures,
    mean_over_processes,
    record_iteration,
)
from clinalign.trainer.methods.ppo.models import (
    PolicyAndCritic,
    anneal_learning_rate,
    build_models,
    build_optimizer,
    disable_dropout,
    kl_controller,
    load_tokenizer,
    reference_fn,
)
from clinalign.trainer.methods.ppo.optimise import Batch, micro_batch_rows, optimise
from clinalign.trainer.methods.ppo.rollout import (
    first_eos_mask,
    generate_responses,
    local_prompts,
)
from clinalign.trainer.methods.ppo.scoring import (
    CostFn,
    ScoreFn,
    compute_advantages,
    evaluate_rollout,
    score_rollout,
)

if TYPE_CHECKING:  # the reward trainer's module loads TRL's trainers and datasets
    from clinalign.common.artefacts import LoraSettings

SEED_STRIDE = 100_003  # seed + rank·stride per process (N details)


def train_ppo(
    prompts: Sequence[str],
    policy_dir: Path,
    out_dir: Path,
    hyper: PPOHyperparameters,
    score: ScoreFn,
    *,
    critic_dir: Path | None = None,
    lora: LoraSettings | None = None,
    checkpoint_dir: Path | None = None,
    resume_from: Path | None = None,
    progress: ProgressFn | None = None,
    lineage: Mapping[str, Any] | None = None,
    anchor: Anchor | None = None,
    cost: CostFn | None = None,
) -> dict[str, Any]:
    """Runs PPO on ``prompts`` from the causal LM at ``policy_dir`` and writes the trained
    policy (LoRA merged) with its critic and manifest to ``out_dir``; returns the manifest.
    ``resume_from`` is a checkpoint directory an earlier run wrote under its
    ``checkpoint_dir``; the run then continues from it, data position and RNG included.
    ``anchor``, the KL reference, is by default ``anchor.kl_anchor`` of the policy;
    ``cost``, the constraint's cost, that of ``hyper.cost_source`` (``_cost_function``)."""
    started = time.monotonic()
    accelerator = _accelerator(hyper)
    world, rank = accelerator.num_processes, accelerator.process_index
    policy_dir, out_dir = _check_inputs(prompts, policy_dir, out_dir, hyper, accelerator)

    # -- models: policy, critic, reference (the KL anchor), optimiser; the loop state and β
    anchor = anchor or kl_anchor(policy_dir, str((lineage or {}).get("parent_version", "")))
    tokenizer, model, reference = _models(policy_dir, hyper, accelerator, critic_dir, lora, anchor)
    model, optimizer = accelerator.prepare(model, build_optimizer(model, hyper))
    unwrapped: PolicyAndCritic = accelerator.unwrap_model(model)
    ref_logprobs = reference_fn(reference, unwrapped.policy, hyper.temperature)
    state = start_state(accelerator, hyper, resume_from, hyper.seed + rank * SEED_STRIDE)
    kl_ctl = kl_controller(hyper, state.kl_coef)
    rendered = [render_user_prompt(tokenizer, p) for p in prompts]
    cost = _cost_function(hyper, cost)
    micro = micro_batch_rows(hyper, world)

    while state.iteration < hyper.iterations:
        iteration_started = time.monotonic()
        anneal_learning_rate(optimizer, state.iteration, hyper)
        local = local_prompts(state, len(prompts), hyper, world, rank)
        # 1. rollout
        model.eval()
        rollout = generate_responses(
            unwrapped.policy, tokenizer, [rendered[i] for i in local], hyper, accelerator
        )
        # 2. score: old log-probs, values and reference log-probs; the sequence scores
        rollout, evaluation = evaluate_rollout(
            model, ref_logprobs, rollout, micro, hyper.temperature, accelerator
        )
        scored = score_rollout(
            score, tokenizer, [prompts[i] for i in local], rollout, hyper, state.multiplier, cost
        )
        # 3. advantages
        advantages = compute_advantages(
            scored.objective, evaluation, rollout.response_mask, kl_ctl.value, hyper
        )
        # 4. optimise
        batch = Batch.of(rollout, evaluation, advantages)
        stats = optimise(accelerator, model, optimizer, batch, hyper, unwrapped.has_values)
        # 5. log (figures averaged over processes), adapt β, checkpoint
        scores, finished = scored.scores, scored.finished
        local_figures = iteration_figures(
            scores, finished, rollout, evaluation, advantages, stats, unwrapped.has_values
        )
        figures = mean_over_processes(accelerator, {**local_figures, **scored.figures})
        lr, iteration_s = optimizer.param_groups[0]["lr"], time.monotonic() - iteration_started
        record_iteration(state, kl_ctl, figures, hyper, lr, iteration_s)
        if progress is not None and accelerator.is_main_process:
            progress(state.iteration, hyper.iterations, figures)
        if checkpoint_dir is not None and checkpoint_due(hyper, state.iteration):
            save_checkpoint(accelerator, Path(checkpoint_dir), state.iteration)

    manifest = build_manifest(
        hyper, lora, state, lineage or {}, started, critic_dir, world, anchor, policy_dir
    )
    _save(accelerator, unwrapped, tokenizer, manifest, out_dir)
    return manifest


def _save(
    accelerator: Accelerator,
    model: PolicyAndCritic,
    tokenizer: Any,
    manifest: dict[str, Any],
    out_dir: Path,
) -> None:
    """The main process writes the output once every process has finished training."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_output(model, tokenizer, manifest, out_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _cost_function(hyper: PPOHyperparameters, cost: CostFn | None) -> CostFn | None:
    """The constraint's cost function: none without a ``cost_source``; ``cost`` if given,
    else the built-in one of the source (``rules``: the clinical rule checks)."""
    if hyper.cost_source == "none":
        return None
    if cost is not None:
        return cost
    if hyper.cost_source == "model":
        raise InvalidArgument(
            "cost_source",
            "model needs the cost model's scores: pass a cost function (a ppo job gets the "
            "reward service's)",
        )
    from clinalign.common.clinical_rules import rule_cost

    def rules(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [rule_cost(p, r) for p, r in zip(prompts, responses, strict=True)]

    return rules


def _models(
    policy_dir: Path,
    hyper: PPOHyperparameters,
    accelerator: Accelerator,
    critic_dir: Path | None,
    lora: LoraSettings | None,
    anchor: Anchor,
) -> tuple[Any, PolicyAndCritic, torch.nn.Module | None]:
    """(tokenizer, policy and critic, reference) as ``build_models`` makes them, the
    reference from the KL ``anchor``, after seeding every process alike (the value head
    draws from the global RNG)."""
    set_seed(hyper.seed)
    tokenizer = load_tokenizer(policy_dir)
    model, reference = build_models(
        policy_dir,
        tokenizer,
        hyper,
        accelerator.device,
        critic_dir=critic_dir,
        lora=lora,
        reference_dir=anchor.path,
    )
    return tokenizer, model, reference


def _accelerator(hyper: PPOHyperparameters) -> Accelerator:
    """An ``Accelerator`` on the GPU when there is one, bf16 autocast where it is asked for
    or (unset) supported. accelerate keeps one ``AcceleratorState`` per process; a second
    run in the same process (tests, notebooks) may want another precision, so the state is
    reset first. The distributed state stays."""
    cuda = torch.cuda.is_available()
    bf16 = hyper.bf16 if hyper.bf16 is not None else cuda and torch.cuda.is_bf16_supported()
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 else "no")


def _check_inputs(
    prompts: Sequence[str],
    policy_dir: Path,
    out_dir: Path,
    hyper: PPOHyperparameters,
    accelerator: Accelerator,
) -> tuple[Path, Path]:
    """(policy_dir resolved, out_dir) once the settings, the prompts and both directories
    pass; refuses an ``out_dir`` that holds anything."""
    hyper.validate(accelerator.num_processes)
    if len(prompts) == 0:
        raise InvalidArgument("prompts", "are empty: PPO needs prompts to sample responses to")
    policy_dir = Path(policy_dir).resolve()
    if not (policy_dir / "config.json").is_file():
        raise InvalidArgument("base_model", f"{policy_dir} is not a Hugging Face model directory")
    out_dir = Path(out_dir)
    if accelerator.is_main_process and out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidArgument("out", f"{out_dir} exists and is not empty; choose a new directory")
    return policy_dir, out_dir


__all__ = [
    "CHECKPOINT_PREFIX",
    "CRITIC_DIR",
    "FORMAT_VERSION",
    "SEED_STRIDE",
    "Anchor",
    "LoopState",
    "LoraSettings",
    "PolicyAndCritic",
    "ScoreFn",
    "disable_dropout",
    "first_eos_mask",
    "last_checkpoint",
    "save_checkpoint",
    "train_ppo",
]
