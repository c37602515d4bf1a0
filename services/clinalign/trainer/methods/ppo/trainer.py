"""The PPO loop for language models (Ziegler et al. 2019; Ouyang et al. 2022), on torch,
transformers, peft and accelerate. The maths is in ``core``; every choice is listed, with
its default and source, in ``IMPLEMENTATION_DETAILS.md``.

One iteration:

1. **Rollout.** Each process takes its slice of the next ``rollout_batch_size`` prompts
   and samples a response to each with the current policy (temperature T, no top-k or
   top-p). Everything after the first EOS becomes padding.
2. **Score.** One forward pass of policy, critic and reference over query + response gives
   the old log-probabilities, the values and the reference log-probabilities; the
   responses that ended are scored by ``score`` (in a job, ``RewardService.Score`` over
   gRPC), those that never ended get ``missing_eos_penalty``. Per-token rewards are
   -β·KL plus the score at the last token; GAE gives advantages and returns (or, with the
   ``rloo`` estimator and no critic, each response's return against the mean of the other
   responses to its prompt); advantages are whitened over the process's batch.
3. **Optimise.** ``ppo_epochs`` passes over the batch in ``minibatches`` shuffled
   minibatches (each in ``gradient_accumulation_steps`` micro-batches): clipped policy
   loss plus ``vf_coef`` times the clipped value loss, gradients clipped by global norm.
4. **Adapt** β with the KL controller, log, and checkpoint every ``checkpoint_every``
   iterations (``accelerate``'s ``save_state``: weights, optimiser, every process's RNG,
   and the loop state, which holds the data position and β).

Models: the policy (optionally through a LoRA adapter), a critic (a separate value model,
initialised from the reward model when one is given, or a value head on the policy's
trunk), and the frozen reference: with LoRA it is the same weights with the adapter
switched off, so no second copy is held; without LoRA a frozen copy of the initial policy.

Distributed: the same code runs under ``torchrun``/``accelerate launch``; the policy and
critic are one module wrapped by DDP, each process samples with its own seed
(``seed + rank·100003``), and logged figures are averaged over processes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import peft
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
)

from clinalign.common.artefacts import MANIFEST_NAME, POLICY, ProgressFn
from clinalign.common.errors import InvalidArgument
from clinalign.common.prompts import render_user_prompt
from clinalign.common.training import code_version, library_versions, write_model_dir
from clinalign.trainer.methods.ppo import core
from clinalign.trainer.methods.ppo.config import PPOHyperparameters

if TYPE_CHECKING:  # the reward trainer's module loads TRL's trainers and datasets
    from clinalign.common.artefacts import LoraSettings

# (prompts, responses) → one score per pair, higher is better
ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]

FORMAT_VERSION = 1
CRITIC_DIR = "critic"  # in the saved model directory: the trained critic or value head
CHECKPOINT_PREFIX = "checkpoint-"
SEED_STRIDE = 100_003  # seed + rank·stride per process (N details)


@dataclass
class LoopState:
    """What ``accelerate`` cannot see: iteration, data position, β and the logged history.
    Registered for checkpointing, so ``save_state``/``load_state`` carry it."""

    iteration: int = 0
    data_epoch: int = 0
    data_index: int = 0
    kl_coef: float = 0.0
    history: list[list[Any]] = field(default_factory=list)  # [iteration, {metric: value}]

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# -- models --------------------------------------------------------------------------------


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere, training mode or not (Ziegler et al.; N details "Disable
    dropout"): dropout layers (LoRA's included) and attention dropout attributes."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0  # type: ignore[assignment]


class PolicyAndCritic(nn.Module):
    """The trained parts as one module, so one DDP wrapper and one optimiser hold both
    (TRL's ``PolicyAndValueWrapper`` does the same). ``forward`` returns, for the last
    ``n_response`` tokens of each sequence, the policy's logits predicting them and the
    critic's value of the state before each."""

    def __init__(self, policy: nn.Module, critic: nn.Module | None, value_head: nn.Module | None):
        super().__init__()
        self.policy: Any = policy
        self.critic: Any = critic  # a sequence-classification model: trunk + ``score`` head
        self.value_head: Any = value_head  # a linear head on the policy's last hidden state

    @property
    def has_values(self) -> bool:
        """False under the rloo estimator, which has no value function."""
        return self.critic is not None or self.value_head is not None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        n_response: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = n_response + 1  # positions L-T-1 .. L-2 predict the T response tokens
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=keep,
            output_hidden_states=self.value_head is not None,
            use_cache=False,
        )
        logits = out.logits[:, :-1]  # [B, T, V]
        if self.value_head is not None:
            hidden = out.hidden_states[-1][:, -keep:-1]  # [B, T, d]
            values = self.value_head(hidden).squeeze(-1)
        elif not self.has_values:
            values = torch.zeros(logits.shape[:2], device=logits.device)
        else:
            trunk = getattr(self.critic, self.critic.base_model_prefix)
            hidden = trunk(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
            ).last_hidden_state[:, -keep:-1]
            values = self.critic.score(hidden).squeeze(-1)  # [B, T]
        return logits, values.float()


def _load_critic(
    critic_dir: Path | None, policy_dir: Path, tokenizer: Any, dtype: torch.dtype
) -> nn.Module:
    """A value model: the reward model (Stiennon et al.; Ouyang et al.) when given, else the
    policy's base weights with a zero-initialised head."""
    source = critic_dir or policy_dir
    critic: Any = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=1, dtype=dtype
    )
    if not hasattr(critic, "score"):
        raise InvalidArgument("critic_dir", f"{type(critic).__name__} has no `score` head")
    if critic_dir is not None:
        critic_vocab = AutoTokenizer.from_pretrained(critic_dir).get_vocab()
        if critic_vocab != tokenizer.get_vocab():
            raise InvalidArgument(
                "critic_dir", "the reward model's tokenizer differs from the policy's"
            )
    else:
        nn.init.zeros_(critic.score.weight)
    critic.config.pad_token_id = tokenizer.pad_token_id
    return critic


# -- data ------------------------------------------------------------------------------------


def _next_prompts(state: LoopState, n_prompts: int, count: int, seed: int) -> list[int]:
    """The next ``count`` prompt indices of a reshuffled-every-epoch order, the same on every
    process, advancing the loop state's data position."""
    taken: list[int] = []
    while len(taken) < count:
        order = torch.randperm(
            n_prompts, generator=torch.Generator().manual_seed(seed + state.data_epoch)
        ).tolist()
        room = min(count - len(taken), n_prompts - state.data_index)
        taken += order[state.data_index : state.data_index + room]
        state.data_index += room
        if state.data_index == n_prompts:
            state.data_epoch, state.data_index = state.data_epoch + 1, 0
    return taken


def first_eos_mask(responses: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, ended): 1 up to and including each row's first EOS (all ones where there is
    none), and whether the row has an EOS. [B, T] → ([B, T] long, [B] bool)."""
    is_eos = responses == eos_id
    ended = is_eos.any(dim=1)
    n_tokens = responses.shape[1]
    first = torch.where(
        ended, is_eos.int().argmax(dim=1), torch.full_like(ended, n_tokens - 1, dtype=torch.long)
    )
    steps = torch.arange(n_tokens, device=responses.device)
    return (steps[None, :] <= first[:, None]).long(), ended


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding (N details "Adjust position indices")."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def _trim(
    queries: torch.Tensor, q_mask: torch.Tensor, responses: torch.Tensor, r_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(input ids, attention mask, kept response width) for rows whose query columns all
    padding on the left, and response columns all padding on the right, are dropped."""
    start = int((q_mask.sum(dim=0) > 0).int().argmax())
    width = int(r_mask.sum(dim=1).max())
    ids = torch.cat([queries[:, start:], responses[:, :width]], dim=1)
    mask = torch.cat([q_mask[:, start:], r_mask[:, :width]], dim=1)
    return ids, mask, width


# -- the loop ----------------------------------------------------------------------------------


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
) -> dict[str, Any]:
    """Runs PPO on ``prompts`` from the causal LM at ``policy_dir`` and writes the trained
    policy (LoRA merged) with its critic and manifest to ``out_dir``; returns the manifest.
    ``resume_from`` is a checkpoint directory an earlier run wrote under its
    ``checkpoint_dir``; the run then continues from it, data position and RNG included."""
    started = time.monotonic()
    cuda = torch.cuda.is_available()
    bf16 = hyper.bf16 if hyper.bf16 is not None else cuda and torch.cuda.is_bf16_supported()
    # accelerate keeps one AcceleratorState per process; a second run in the same process
    # (tests, notebooks) may want another precision. The distributed state stays.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if bf16 else "no")
    world, rank = accelerator.num_processes, accelerator.process_index
    hyper.validate(world)
    if len(prompts) == 0:
        raise InvalidArgument("prompts", "are empty: PPO needs prompts to sample responses to")
    policy_dir = Path(policy_dir).resolve()
    if not (policy_dir / "config.json").is_file():
        raise InvalidArgument("base_model", f"{policy_dir} is not a Hugging Face model directory")
    out_dir = Path(out_dir)
    if accelerator.is_main_process and out_dir.exists() and any(out_dir.iterdir()):
        raise InvalidArgument("out", f"{out_dir} exists and is not empty; choose a new directory")

    set_seed(hyper.seed)  # identical initialisation (value head) on every process
    tokenizer: Any = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # a long prompt loses its oldest text
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise InvalidArgument("base_model", "the tokenizer needs a padding and an EOS token")
    dtype = torch.float32  # master weights; accelerate's autocast gives bf16 compute
    policy: Any = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=dtype)
    reference: Any = None
    if lora is not None:
        policy = peft.get_peft_model(
            policy,
            peft.LoraConfig(
                task_type=peft.TaskType.CAUSAL_LM,
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules
                if isinstance(lora.target_modules, str)
                else list(lora.target_modules),
            ),
        )
    else:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        reference.to(accelerator.device)
    if hyper.activation_checkpointing:
        policy.gradient_checkpointing_enable()
    critic, value_head = None, None
    if hyper.advantage_estimator == "rloo":
        pass  # the other responses to a prompt are the baseline: no value function
    elif hyper.critic == "separate":
        critic = _load_critic(critic_dir, policy_dir, tokenizer, dtype)
    else:
        value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(value_head.weight)  # N details "Value head layer initialization"
        nn.init.zeros_(value_head.bias)
    model = PolicyAndCritic(policy, critic, value_head)
    disable_dropout(model)
    if reference is not None:
        disable_dropout(reference)

    critic_params = [p for n, p in model.named_parameters() if not n.startswith("policy.")]
    policy_params = [
        p for n, p in model.named_parameters() if n.startswith("policy.") and p.requires_grad
    ]
    critic_lr = hyper.critic_learning_rate or hyper.learning_rate
    optimizer = torch.optim.AdamW(
        [
            {"params": policy_params, "lr": hyper.learning_rate, "base_lr": hyper.learning_rate},
            {"params": critic_params, "lr": critic_lr, "base_lr": critic_lr},
        ],
        eps=hyper.adam_eps,
        weight_decay=hyper.weight_decay,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    state = LoopState(kl_coef=hyper.kl_coef)
    accelerator.register_for_checkpointing(state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
    kl_ctl: core.FixedKLController | core.AdaptiveKLController
    if hyper.kl_controller == "adaptive":
        kl_ctl = core.AdaptiveKLController(state.kl_coef, hyper.kl_target, hyper.kl_horizon)
    else:
        kl_ctl = core.FixedKLController(state.kl_coef)
    # Sampling differs per process (N details "different seeds"); on resume the restored
    # RNG state continues instead.
    if resume_from is None:
        set_seed(hyper.seed + rank * SEED_STRIDE)

    rendered = [render_user_prompt(tokenizer, p) for p in prompts]
    local_size = hyper.rollout_batch_size // world
    generation = GenerationConfig(
        do_sample=True,
        temperature=hyper.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=hyper.response_length,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    unwrapped: PolicyAndCritic = accelerator.unwrap_model(model)

    def reference_logprobs(ids: torch.Tensor, mask: torch.Tensor, width: int) -> torch.Tensor:
        kwargs = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": _positions(mask),
            "logits_to_keep": width + 1,
            "use_cache": False,
        }
        if reference is not None:
            logits = reference(**kwargs).logits[:, :-1]
        else:
            with unwrapped.policy.disable_adapter():
                logits = unwrapped.policy(**kwargs).logits[:, :-1]
        return core.logprobs_from_logits(logits.float(), ids[:, -width:], hyper.temperature)

    minibatch = local_size // hyper.minibatches
    has_values = unwrapped.has_values
    micro = minibatch // hyper.gradient_accumulation_steps  # rows a forward pass takes
    while state.iteration < hyper.iterations:
        iteration_started = time.monotonic()
        frac = 1.0 - state.iteration / hyper.iterations if hyper.anneal_lr else 1.0
        for group in optimizer.param_groups:
            group["lr"] = frac * group["base_lr"]
        k = hyper.samples_per_prompt
        drawn = _next_prompts(state, len(prompts), hyper.rollout_batch_size // k, hyper.seed)
        chosen = [i for i in drawn for _ in range(k)]  # a prompt's k responses are adjacent
        local = chosen[rank * local_size : (rank + 1) * local_size]
        encoded = tokenizer(
            [rendered[i] for i in local],
            add_special_tokens=False,
            padding=True,
            truncation=True,
            max_length=hyper.max_prompt_length,
            return_tensors="pt",
        )
        queries = encoded.input_ids.to(accelerator.device)
        q_mask = encoded.attention_mask.to(accelerator.device)

        # 1. rollout
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            generated = unwrapped.policy.generate(
                input_ids=queries, attention_mask=q_mask, generation_config=generation
            )
        responses = generated[:, queries.shape[1] :]
        r_mask, ended = first_eos_mask(responses, tokenizer.eos_token_id)
        responses = torch.where(r_mask.bool(), responses, tokenizer.pad_token_id)

        # 2. score: old log-probs, values and reference log-probs, a micro-batch at a time
        # so that no [B, T, V] logits tensor is larger than a training step's
        width = int(r_mask.sum(dim=1).max())
        old_logprobs = torch.zeros(len(local), width, device=queries.device)
        ref_logprobs = torch.zeros_like(old_logprobs)
        values = torch.zeros_like(old_logprobs)
        entropy_sum = 0.0
        with torch.no_grad(), accelerator.autocast():
            for start in range(0, len(local), micro):
                chunk = slice(start, start + micro)
                ids, mask, w = _trim(queries[chunk], q_mask[chunk], responses[chunk], r_mask[chunk])
                logits, values[chunk, :w] = model(ids, mask, _positions(mask), w)
                old_logprobs[chunk, :w] = core.logprobs_from_logits(
                    logits.float(), ids[:, -w:], hyper.temperature
                )
                tokens = r_mask[chunk, :w]
                entropy = core.entropy_from_logits(logits.float() / hyper.temperature, tokens)
                entropy_sum += float(entropy) * float(tokens.sum())
                del logits
                ref_logprobs[chunk, :w] = reference_logprobs(ids, mask, w)
        entropy_rollout = entropy_sum / float(r_mask.sum())
        responses, r_mask = responses[:, :width], r_mask[:, :width]
        texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
        scores = torch.full((len(local),), hyper.missing_eos_penalty, dtype=torch.float32)
        # An empty answer (EOS first) is as unusable as an endless one, and no reward model
        # can read it: it gets the same fixed score.
        finished = [i for i in range(len(local)) if bool(ended[i]) and texts[i].strip()]
        if finished:
            got = score([prompts[local[i]] for i in finished], [texts[i] for i in finished])
            if len(got) != len(finished):
                raise RuntimeError(f"the scorer returned {len(got)} scores for {len(finished)}")
            scores[finished] = torch.tensor([float(s) for s in got], dtype=torch.float32)
        scores = scores.to(accelerator.device)
        rm_scores = scores[finished]
        rewards, non_score, kl = core.token_rewards(
            scores,
            old_logprobs,
            ref_logprobs,
            r_mask,
            kl_ctl.value,
            cast(Literal["k1", "k3"], hyper.kl_estimator),
        )
        if hyper.advantage_estimator == "rloo":
            advantages, returns = core.rloo_advantages(rewards, r_mask, k), values
        else:
            advantages, returns = core.gae(rewards, values, r_mask, hyper.gamma, hyper.lam)
        if hyper.whiten_advantages and int(r_mask.sum()) > 1:
            advantages = core.masked_whiten(advantages, r_mask) * r_mask

        # 3. optimise
        model.train()
        stats: dict[str, list[float]] = {
            k: []
            for k in (
                "policy_loss",
                "value_loss",
                "clip_frac",
                "value_clip_frac",
                "approx_kl",
                "entropy",
            )
        }
        for _ in range(hyper.ppo_epochs):
            order = torch.randperm(local_size).tolist()
            for start in range(0, local_size, minibatch):
                rows = order[start : start + minibatch]
                for m, m_start in enumerate(range(0, minibatch, micro)):
                    idx = torch.tensor(rows[m_start : m_start + micro], device=queries.device)
                    last = m == hyper.gradient_accumulation_steps - 1
                    mb_ids, mb_mask, mb_width = _trim(
                        queries[idx], q_mask[idx], responses[idx], r_mask[idx]
                    )
                    mb_resp_mask = r_mask[idx][:, :mb_width]
                    sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
                    with sync, accelerator.autocast():
                        mb_logits, mb_values = model(mb_ids, mb_mask, _positions(mb_mask), mb_width)
                        mb_logprobs = core.logprobs_from_logits(
                            mb_logits.float(), mb_ids[:, -mb_width:], hyper.temperature
                        )
                        pg_loss, clip_frac, approx_kl = core.policy_loss(
                            mb_logprobs,
                            old_logprobs[idx][:, :mb_width],
                            advantages[idx][:, :mb_width],
                            mb_resp_mask,
                            hyper.clip_range,
                        )
                        if has_values:
                            vf_loss, vf_clip = core.value_loss(
                                mb_values,
                                values[idx][:, :mb_width],
                                returns[idx][:, :mb_width],
                                mb_resp_mask,
                                hyper.clip_range_value,
                            )
                        else:
                            vf_loss = vf_clip = torch.zeros((), device=mb_values.device)
                        loss = pg_loss + hyper.vf_coef * vf_loss
                        accelerator.backward(loss / hyper.gradient_accumulation_steps)
                    with torch.no_grad():
                        entropy = core.entropy_from_logits(
                            mb_logits.detach().float() / hyper.temperature, mb_resp_mask
                        )
                    for key, value in (
                        ("policy_loss", pg_loss),
                        ("value_loss", vf_loss),
                        ("clip_frac", clip_frac),
                        ("value_clip_frac", vf_clip),
                        ("approx_kl", approx_kl),
                        ("entropy", entropy),
                    ):
                        stats[key].append(float(value.detach()))
                    del mb_logits, mb_values, loss
                accelerator.clip_grad_norm_(model.parameters(), hyper.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        # 4. adapt, log, checkpoint
        seq_kl = kl.sum(dim=1)
        local_figures = {
            "score": float(scores.mean()),
            "rm_score": float(rm_scores.mean()) if rm_scores.numel() else math.nan,
            "non_score_reward": float(non_score.sum(dim=1).mean()),
            "reward": float((scores + non_score.sum(dim=1)).mean()),
            "kl": float(seq_kl.mean()),
            "entropy_rollout": float(entropy_rollout),
            "response_length": float(r_mask.sum(dim=1).float().mean()),
            "ended_frac": float(ended.float().mean()),
            "explained_variance": core.explained_variance(values, returns, r_mask)
            if has_values
            else math.nan,
            **{k: statistics.fmean(v) for k, v in stats.items()},
        }
        figures = _mean_over_processes(accelerator, local_figures)
        figures["kl_coef"] = kl_ctl.value
        kl_ctl.update(figures["kl"], hyper.rollout_batch_size)
        state.kl_coef = kl_ctl.value
        state.iteration += 1
        figures["learning_rate"] = optimizer.param_groups[0]["lr"]
        figures["episodes"] = float(state.iteration * hyper.rollout_batch_size)
        figures["iteration_s"] = time.monotonic() - iteration_started
        state.history.append([state.iteration, figures])
        if progress is not None and accelerator.is_main_process:
            progress(state.iteration, hyper.iterations, figures)
        every = hyper.checkpoint_every
        if checkpoint_dir is not None and every and state.iteration % every == 0:
            save_checkpoint(accelerator, Path(checkpoint_dir), state.iteration)

    accelerator.wait_for_everyone()
    manifest = _manifest(hyper, lora, state, lineage or {}, started, critic_dir, world)
    if accelerator.is_main_process:
        _save(unwrapped, tokenizer, manifest, out_dir, hyper)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return manifest


def _mean_over_processes(accelerator: Accelerator, figures: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1:
        return dict(figures)
    keys = sorted(figures)
    local = torch.tensor([figures[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    # nan-aware mean: a process with no finished response has no rm_score
    present = (~torch.isnan(local)).to(torch.float64)
    total = accelerator.reduce(torch.nan_to_num(local), reduction="sum")
    count = accelerator.reduce(present, reduction="sum")
    means = torch.where(count > 0, total / count.clamp(min=1), torch.nan)
    return {k: float(v) for k, v in zip(keys, means.tolist(), strict=True)}


# -- checkpoints and output ------------------------------------------------------------------


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


def _save(
    model: PolicyAndCritic,
    tokenizer: Any,
    manifest: dict[str, Any],
    out_dir: Path,
    hyper: PPOHyperparameters,
) -> None:
    policy: Any = model.policy
    if isinstance(policy, peft.PeftModel):
        policy = policy.merge_and_unload()  # an ordinary full model, as SFT and DPO save

    def save_critic(staging: Path) -> None:
        target = staging / CRITIC_DIR
        if model.critic is not None:
            model.critic.save_pretrained(target)
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


def _manifest(
    hyper: PPOHyperparameters,
    lora: LoraSettings | None,
    state: LoopState,
    lineage: Mapping[str, Any],
    started: float,
    critic_dir: Path | None,
    world: int,
) -> dict[str, Any]:
    gae = hyper.advantage_estimator == "gae"
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
        "seed": hyper.seed,
        "config": {"hyperparameters": asdict(hyper), "lora": asdict(lora) if lora else None},
        "method": {
            "algorithm": "ppo",
            "advantage_estimator": hyper.advantage_estimator,
            "critic": hyper.critic if gae else None,
            "critic_init": str(critic_dir)
            if critic_dir and gae and hyper.critic == "separate"
            else None,
            "reference": "base weights with the adapter disabled"
            if lora
            else "frozen copy of the initial policy",
            "lora": "merged into full weights" if lora else None,
            "processes": world,
        },
        "metrics": metrics,
        "history": [[i, {k: _finite(v) for k, v in f.items()}] for i, f in history],
        "code_version": code_version(),
        "versions": library_versions(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - started, 2),
    }


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


__all__ = [
    "LoopState",
    "LoraSettings",
    "PolicyAndCritic",
    "ScoreFn",
    "first_eos_mask",
    "last_checkpoint",
    "save_checkpoint",
    "train_ppo",
]
