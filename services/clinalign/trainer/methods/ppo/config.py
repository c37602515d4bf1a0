"""PPO's hyperparameters: the fields a ``ppo`` job's ``spec.hyperparameters`` may set.

Defaults and their sources are listed in ``IMPLEMENTATION_DETAILS.md``; this dataclass is
the one place the numbers live. It imports nothing heavy, so the trainer service can check
a submitted spec without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinalign.common.errors import InvalidArgument

ADVANTAGE_ESTIMATORS = ("gae", "rloo")
CRITICS = ("separate", "value_head")
KL_CONTROLLERS = ("adaptive", "fixed")
KL_ESTIMATORS = ("k1", "k3")
# where a response's cost comes from: "none" (no constraint); "rules", the clinical rule
# checks' shortfall 1 - clinical_rules.rule_reward; "model", the served cost model's
# probability of harm (issue 21), through the reward service
COST_SOURCES = ("none", "rules", "model")


@dataclass(frozen=True)
class PPOHyperparameters:
    # -- schedule
    iterations: int = 100  # PPO iterations: a rollout batch each, then the PPO epochs on it
    rollout_batch_size: int = 64  # responses per iteration, over all processes
    samples_per_prompt: int = 1  # responses to each prompt drawn (consecutive rows of a batch)
    minibatches: int = 1  # per PPO epoch; the rollout batch is split into this many
    gradient_accumulation_steps: int = 1  # micro-batches per minibatch
    ppo_epochs: int = 4
    # -- rollouts
    response_length: int = 256  # max new tokens
    temperature: float = 1.0
    max_prompt_length: int = 512  # longer prompts are cut from the left
    # -- reward
    missing_eos_penalty: float = -1.0  # score of a response that never ends
    # weight of the clinical rule term (a verifiable reward, issue 20): a finished
    # response scores  reward model - rule_penalty * (1 - clinical_rules.rule_reward), so a
    # critical dose, contraindication or allergy violation costs rule_penalty; 0: off
    rule_penalty: float = 0.0
    # -- the cost constraint (``constraint``; IMPLEMENTATION_DETAILS.md, "The cost
    # constraint"): maximise reward subject to E[cost] <= cost_budget, a finished response
    # scoring (reward - λ·cost) / (1 + λ), λ updated by dual ascent after every iteration
    cost_source: str = "none"
    cost_budget: float = 0.02  # d: the expected cost per finished response allowed
    lagrangian_init: float = 1.0  # λ₀
    lagrangian_lr: float = 1.0  # alpha: λ += alpha·(expected cost - d) per iteration; 0 holds λ₀
    lagrangian_max: float = 10.0  # λ is clipped to [0, lagrangian_max]
    kl_controller: str = "adaptive"  # "adaptive" (Ziegler et al. 2019 §2.2) or "fixed"
    kl_coef: float = 0.15  # β₀ (adaptive) or β (fixed)
    kl_target: float = 6.0  # nats per sequence (adaptive)
    kl_horizon: int = 10_000  # episodes (adaptive)
    kl_estimator: str = "k1"
    # -- advantages and losses
    # "gae": a critic's values and GAE (the PPO of Ziegler et al., Ouyang et al.); "rloo":
    # no critic, each response's return against the mean of the other responses to its
    # prompt (Ahmadian et al. 2024), which needs samples_per_prompt >= 2
    advantage_estimator: str = "gae"
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: float = 1.0
    # -- optimiser
    learning_rate: float = 3e-6
    critic_learning_rate: float | None = None  # None: the policy's
    anneal_lr: bool = True  # linear decay to 0 over the iterations
    adam_eps: float = 1e-5
    weight_decay: float = 0.0
    # -- models
    critic: str = "separate"  # "separate" (from the reward model) or "value_head"
    # -- run
    seed: int = 0
    checkpoint_every: int = 10  # iterations between checkpoints; 0 = only at the end
    bf16: bool | None = None  # None: bf16 on a CUDA device that supports it
    activation_checkpointing: bool = False

    def validate(self, world_size: int = 1) -> None:
        """Raises ``InvalidArgument`` naming the first field that is out of range, not one
        of its choices, or does not divide the batch over ``world_size`` processes."""
        self._check_ranges()
        self._check_choices()
        self._check_batches(world_size)

    def _check_ranges(self) -> None:
        positive = {
            "iterations": self.iterations,
            "rollout_batch_size": self.rollout_batch_size,
            "samples_per_prompt": self.samples_per_prompt,
            "minibatches": self.minibatches,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "ppo_epochs": self.ppo_epochs,
            "response_length": self.response_length,
            "temperature": self.temperature,
            "max_prompt_length": self.max_prompt_length,
            "kl_target": self.kl_target,
            "kl_horizon": self.kl_horizon,
            "clip_range": self.clip_range,
            "clip_range_value": self.clip_range_value,
            "learning_rate": self.learning_rate,
            "max_grad_norm": self.max_grad_norm,
            "adam_eps": self.adam_eps,
        }
        for name, value in positive.items():
            if not value > 0:
                raise InvalidArgument(name, f"must be positive, got {value}")
        non_negative = {
            "kl_coef": self.kl_coef,
            "vf_coef": self.vf_coef,
            "rule_penalty": self.rule_penalty,
            "lagrangian_init": self.lagrangian_init,
            "lagrangian_lr": self.lagrangian_lr,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise InvalidArgument(name, f"must not be negative, got {value}")
        if self.kl_controller == "adaptive" and self.kl_coef == 0:
            raise InvalidArgument("kl_coef", "must be positive for the adaptive controller")
        self._check_constraint()
        if self.critic_learning_rate is not None and not self.critic_learning_rate > 0:
            raise InvalidArgument("critic_learning_rate", "must be positive")
        for name, value in {"gamma": self.gamma, "lam": self.lam}.items():
            if not 0.0 <= value <= 1.0:
                raise InvalidArgument(name, f"must be in [0, 1], got {value}")

    def _check_constraint(self) -> None:
        if not 0.0 <= self.cost_budget <= 1.0:
            raise InvalidArgument(
                "cost_budget", f"must be in [0, 1] (costs are in [0, 1]), got {self.cost_budget}"
            )
        if not self.lagrangian_max > 0:
            raise InvalidArgument("lagrangian_max", f"must be positive, got {self.lagrangian_max}")
        if self.lagrangian_init > self.lagrangian_max:
            raise InvalidArgument(
                "lagrangian_init",
                f"must not exceed lagrangian_max ({self.lagrangian_max}), got "
                f"{self.lagrangian_init}",
            )
        if self.cost_source == "rules" and self.rule_penalty > 0:
            raise InvalidArgument(
                "rule_penalty",
                "must be 0 when cost_source is rules: the rule checks are already the "
                "constraint's cost, and counting them twice would weigh them past λ",
            )

    def _check_choices(self) -> None:
        choices: dict[str, tuple[str, tuple[str, ...]]] = {
            "advantage_estimator": (self.advantage_estimator, ADVANTAGE_ESTIMATORS),
            "cost_source": (self.cost_source, COST_SOURCES),
            "critic": (self.critic, CRITICS),
            "kl_controller": (self.kl_controller, KL_CONTROLLERS),
            "kl_estimator": (self.kl_estimator, KL_ESTIMATORS),
        }
        for name, (choice, allowed) in choices.items():
            if choice not in allowed:
                raise InvalidArgument(name, f"must be one of {', '.join(allowed)}, got {choice!r}")

    def _check_batches(self, world_size: int) -> None:
        if self.checkpoint_every < 0:
            raise InvalidArgument("checkpoint_every", "must not be negative")
        per_process, rest = divmod(self.rollout_batch_size, world_size)
        if rest or per_process == 0:
            raise InvalidArgument(
                "rollout_batch_size",
                f"must be a positive multiple of the number of processes ({world_size})",
            )
        if per_process % self.samples_per_prompt:
            raise InvalidArgument(
                "samples_per_prompt",
                f"must divide the per-process rollout batch ({per_process} responses), so that "
                "a prompt's responses stay in one process",
            )
        if self.advantage_estimator == "rloo" and self.samples_per_prompt < 2:
            raise InvalidArgument(
                "samples_per_prompt",
                "must be at least 2 for the rloo estimator: its baseline is the other "
                "responses to the same prompt",
            )
        per_minibatch, rest = divmod(per_process, self.minibatches)
        if rest or per_minibatch == 0:
            raise InvalidArgument(
                "minibatches",
                f"must divide the per-process rollout batch ({per_process} prompts)",
            )
        if per_minibatch % self.gradient_accumulation_steps:
            raise InvalidArgument(
                "gradient_accumulation_steps",
                f"must divide the per-process minibatch ({per_minibatch} prompts)",
            )
