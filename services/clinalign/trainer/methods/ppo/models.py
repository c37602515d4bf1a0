"""PPO's models (phase "build models"): the policy, optionally through a LoRA adapter; the
critic (a separate value model or a value head on the policy's trunk) or none (rloo); the
frozen reference; and the one optimiser over policy and critic. IMPLEMENTATION_DETAILS.md,
"Models", lists the choices and their sources.

Two choices of issue 20:
- A critic initialised from the reward model starts on the scale of the returns: the reward
  service scores with the model's raw head normalised by the mean and std saved beside it
  (``NORMALISATION_FILE``; ``(raw - mean) / std``), and the returns are built from those
  scores, so the normalisation is folded into the critic's head (``fold_normalisation``:
  w' = w/std, b' = (b - mean)/std). Without it every initial value was off by the mean and
  the scale of the raw head.
- The reference (the KL anchor) may be another model than the one the policy starts from:
  a round that starts from an earlier PPO output keeps that output's anchor, the SFT policy
  (``anchor``), so drift from SFT does not compound over rounds. It is then a frozen copy
  of the anchor's weights, with LoRA too (the base with its adapter disabled is the anchor
  only when the base is the anchor)."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import peft
import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from clinalign.common.artefacts import NORMALISATION_FILE
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.methods.ppo import core
from clinalign.trainer.methods.ppo.config import PPOHyperparameters

if TYPE_CHECKING:  # the reward trainer's module loads TRL's trainers and datasets
    from clinalign.common.artefacts import LoraSettings


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere, training mode or not (Ziegler et al.; N details "Disable
    dropout"): dropout layers (LoRA's included) and attention dropout attributes."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0  # type: ignore[assignment]


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding (N details "Adjust position indices"). [B, L] →
    [B, L]."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


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


def load_tokenizer(policy_dir: Path) -> Any:
    """The policy's tokenizer, padding and truncating on the left (a long prompt loses its
    oldest text; batched generation continues every row at its end)."""
    tokenizer: Any = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise InvalidArgument("base_model", "the tokenizer needs a padding and an EOS token")
    return tokenizer


def build_models(
    policy_dir: Path,
    tokenizer: Any,
    hyper: PPOHyperparameters,
    device: torch.device,
    *,
    critic_dir: Path | None = None,
    lora: LoraSettings | None = None,
    reference_dir: Path | None = None,
) -> tuple[PolicyAndCritic, nn.Module | None]:
    """(policy and critic, reference): the policy from ``policy_dir`` (through a LoRA
    adapter when given), the critic ``hyper`` asks for, dropout off in all of them. The
    reference is frozen, on ``device``: the model at ``reference_dir`` when that is another
    directory than ``policy_dir`` (``load_reference``); else a copy of the policy, or None
    with LoRA: the policy with its adapter disabled is the reference then
    (``reference_logprobs``). Draws from the global RNG (the value head), so the caller
    seeds first."""
    dtype = torch.float32  # master weights; accelerate's autocast gives bf16 compute
    policy: Any = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=dtype)
    reference: Any = None
    if reference_dir is not None and Path(reference_dir).resolve() != Path(policy_dir).resolve():
        reference = load_reference(Path(reference_dir), tokenizer, dtype).to(device)
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
    elif reference is None:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
        reference.to(device)
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
    return model, reference


def load_reference(reference_dir: Path, tokenizer: Any, dtype: torch.dtype) -> nn.Module:
    """The frozen reference (KL anchor) at ``reference_dir``, in eval mode, without
    gradients; its tokenizer must be the policy's, token for token."""
    if not (reference_dir / "config.json").is_file():
        raise InvalidArgument("reference_dir", f"{reference_dir} is not a Hugging Face model")
    if AutoTokenizer.from_pretrained(reference_dir).get_vocab() != tokenizer.get_vocab():
        raise InvalidArgument(
            "reference_dir", f"the KL anchor {reference_dir}'s tokenizer differs from the policy's"
        )
    reference: Any = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=dtype)
    return reference.eval().requires_grad_(False)


def read_normalisation(reward_dir: Path) -> tuple[float, float]:
    """(mean, std) of the reward model at ``reward_dir`` as the reward service applies them
    (``clinalign.reward.scorer``): from ``NORMALISATION_FILE``, mean 0 and std 1 where the
    file or a figure is missing, and std 1 in place of 0."""
    path = reward_dir / NORMALISATION_FILE
    norm = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return float(norm.get("mean", 0.0)), float(norm.get("std", 1.0)) or 1.0


def fold_normalisation(critic: Any, mean: float, std: float) -> None:
    """Folds the reward service's normalisation (raw - mean) / std into ``critic``'s linear
    ``score`` head, so that the critic's value of a text is the service's normalised score of
    it: w' = w / std, b' = (b - mean) / std (b = 0 for a head without a bias; the head is
    replaced by one with a bias then)."""
    head = critic.score
    if not isinstance(head, nn.Linear):
        raise InvalidArgument(
            "critic_dir", f"the reward model's head is a {type(head).__name__}, not a linear layer"
        )
    folded = nn.Linear(head.in_features, head.out_features, bias=True)
    folded.to(device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        bias = head.bias if head.bias is not None else torch.zeros_like(folded.bias)
        folded.bias.copy_((bias - mean) / std)
    critic.score = folded


def _load_critic(
    critic_dir: Path | None, policy_dir: Path, tokenizer: Any, dtype: torch.dtype
) -> nn.Module:
    """A value model: the reward model (Stiennon et al.; Ouyang et al.) when given, its head
    normalised as the reward service normalises its scores (``fold_normalisation``), else
    the policy's base weights with a zero-initialised head."""
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
        fold_normalisation(critic, *read_normalisation(critic_dir))
    else:
        nn.init.zeros_(critic.score.weight)
    critic.config.pad_token_id = tokenizer.pad_token_id
    return critic


def build_optimizer(model: PolicyAndCritic, hyper: PPOHyperparameters) -> torch.optim.AdamW:
    """One AdamW over the policy's trainable parameters and the critic's, as two groups
    (``critic_learning_rate`` optional); ``base_lr`` is what annealing scales."""
    critic_params = [p for n, p in model.named_parameters() if not n.startswith("policy.")]
    policy_params = [
        p for n, p in model.named_parameters() if n.startswith("policy.") and p.requires_grad
    ]
    critic_lr = hyper.critic_learning_rate or hyper.learning_rate
    return torch.optim.AdamW(
        [
            {"params": policy_params, "lr": hyper.learning_rate, "base_lr": hyper.learning_rate},
            {"params": critic_params, "lr": critic_lr, "base_lr": critic_lr},
        ],
        eps=hyper.adam_eps,
        weight_decay=hyper.weight_decay,
    )


def anneal_learning_rate(
    optimizer: torch.optim.Optimizer, iteration: int, hyper: PPOHyperparameters
) -> None:
    """Each group's rate at ``iteration``: linear decay from ``base_lr`` to 0 over the run
    (N details "Learning rate annealing"), or ``base_lr`` throughout."""
    frac = 1.0 - iteration / hyper.iterations if hyper.anneal_lr else 1.0
    for group in optimizer.param_groups:
        group["lr"] = frac * group["base_lr"]


def kl_controller(
    hyper: PPOHyperparameters, kl_coef: float
) -> core.FixedKLController | core.AdaptiveKLController:
    """β's controller, starting from ``kl_coef`` (the loop state's, so a resume continues)."""
    if hyper.kl_controller == "adaptive":
        return core.AdaptiveKLController(kl_coef, hyper.kl_target, hyper.kl_horizon)
    return core.FixedKLController(kl_coef)


def reference_fn(
    reference: nn.Module | None, policy: Any, temperature: float
) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    """``reference_logprobs`` with the models and temperature bound: (ids, mask, width) →
    log π_ref [B, width]."""
    return functools.partial(reference_logprobs, reference, policy, temperature=temperature)


def reference_logprobs(
    reference: nn.Module | None,
    policy: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    width: int,
    *,
    temperature: float,
) -> torch.Tensor:
    """log π_ref of the last ``width`` tokens of ``ids`` [B, L] → [B, width]: from the
    frozen ``reference``, or, when it is None (LoRA), from ``policy`` with its adapter
    disabled (TRL's ``null_ref_context``)."""
    kwargs = {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions(mask),
        "logits_to_keep": width + 1,
        "use_cache": False,
    }
    if reference is not None:
        logits = reference(**kwargs).logits[:, :-1]
    else:
        with policy.disable_adapter():
            logits = policy(**kwargs).logits[:, :-1]
    return core.logprobs_from_logits(logits.float(), ids[:, -width:], temperature)
