"""PPO's models (phase "build models"): the policy, optionally through a LoRA adapter; the
critic (a separate value model or a value head on the policy's trunk) or none (rloo); the
frozen reference; and the one optimiser over policy and critic. IMPLEMENTATION_DETAILS.md,
"Models", lists the choices and their sources."""

from __future__ import annotations

import copy
import functools
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
) -> tuple[PolicyAndCritic, nn.Module | None]:
    """(policy and critic, reference): the policy from ``policy_dir`` (through a LoRA
    adapter when given), the critic ``hyper`` asks for, dropout off in all of them. The
    reference is a frozen copy of the policy on ``device``, or None with LoRA: the policy
    with its adapter disabled is the reference then (``reference_logprobs``). Draws from
    the global RNG (the value head), so the caller seeds first."""
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
