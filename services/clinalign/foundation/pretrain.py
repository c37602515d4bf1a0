"""Pretraining a small LlamaForCausalLM from scratch with a plain torch loop.

Documents are tokenized, concatenated (each ends with EOS) and cut into fixed-length
blocks, as in the GPT-2 / HF `run_clm.py` recipe, so no compute goes to padding. The
optimiser is AdamW with linear warm-up and cosine decay. A wall-clock budget guards the
whole build: every few steps the loop measures its recent speed and, if the planned
steps would overrun, shortens the schedule so the learning rate still anneals (and lets
it grow back, never past the plan, if the machine speeds up again); it also stops
outright once the budget is spent. Both are recorded in the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from .presets import FoundationPreset

ProgressFn = Callable[[int, int, float], None]

REPLAN_EVERY = 20  # steps between speed measurements against the budget
SAVE_RESERVE_S = 5.0  # budget kept back for saving the model and manifest


@dataclass
class TrainResult:
    model: LlamaForCausalLM
    planned_steps: int
    steps: int
    tokens_seen: int
    loss_curve: list[list[float]]  # [step, mean loss over the preceding log interval]
    first_loss: float
    final_loss: float  # mean loss over the last log interval
    budget_limited: bool  # the schedule was shortened or training stopped for time
    bf16: bool
    train_seconds: float
    num_blocks: int
    notes: list[str] = field(default_factory=list)


def lr_at(step: int, total: int, warmup: int, peak: float, min_ratio: float) -> float:
    """Learning rate for 0-based `step`: linear warm-up, then cosine to min_ratio * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def replan(step: int, planned: int, seconds_per_step: float, seconds_left: float) -> int:
    """Total steps that fit the remaining time at the measured speed, capped at the plan.

    Keeps a 5% margin for timing noise; below the plan, always allows one more step. An
    unlimited time (``math.inf``: a step budget only, so that a seed reproduces on any
    machine) keeps the plan.
    """
    if math.isinf(seconds_left):
        return planned
    affordable = step + int(0.95 * max(0.0, seconds_left) / max(seconds_per_step, 1e-9))
    return min(planned, max(step + 1, affordable))


def pack_blocks(documents: Sequence[list[int]], block: int) -> torch.Tensor:
    """Concatenate token lists and cut them into rows of `block` tokens.

    Returns a (num_blocks, block) int64 tensor; the ragged tail is dropped.
    """
    flat = torch.tensor([t for doc in documents for t in doc], dtype=torch.long)
    num_blocks = flat.numel() // block
    if num_blocks == 0:
        raise ValueError(f"corpus has {flat.numel()} tokens, fewer than one {block}-token block")
    return flat[: num_blocks * block].view(num_blocks, block)


def build_model(preset: FoundationPreset, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised model whose special-token ids match `tokenizer`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        max_position_embeddings=preset.max_position_embeddings,
        # Tied input/output embeddings: at this size the embedding matrix is a large share
        # of the parameters, and tying it halves that cost with no loss in quality.
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def use_bf16(setting: str) -> bool:
    """Resolve the preset's bf16 setting for this CPU."""
    if setting == "auto":
        return bool(torch.backends.mkldnn.is_available() and _cpu_has_native_bf16())
    if setting in ("on", "off"):
        return setting == "on"
    raise ValueError(f"bf16 must be 'auto', 'on' or 'off', got {setting!r}")


def _cpu_has_native_bf16() -> bool:
    # oneDNN's own check (AVX512-BF16, AMX or equivalent); private, so guarded.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pretrain(
    preset: FoundationPreset,
    tokenizer: PreTrainedTokenizerBase,
    token_docs: Sequence[list[int]],
    *,
    seed: int,
    deadline: float,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train from scratch on `token_docs`; stop by `deadline` (a `time.monotonic()` value)."""
    # -- data ---------------------------------------------------------------------------
    blocks = pack_blocks(token_docs, preset.context_length)  # (n_blocks, T)
    batches = _Batches(blocks, preset.batch_size, seed)

    # -- model and optimiser ------------------------------------------------------------
    torch.manual_seed(seed)
    model = build_model(preset, tokenizer)
    model.train()
    optimizer = _optimizer(model, preset)
    bf16 = use_bf16(preset.bf16)

    # -- loop ---------------------------------------------------------------------------
    budget = _Budget(planned=preset.steps, deadline=deadline)
    curve = _LossCurve(preset.log_every)
    step = 0
    while step < budget.total:
        # At least one step always runs, so the loss curve and the saved model are defined.
        if step > 0 and budget.spent(step):
            break
        b_input_ids = batches.next()  # (B, T)
        lr = lr_at(
            step, budget.total, preset.warmup_steps, preset.learning_rate, preset.min_lr_ratio
        )
        value = _train_step(model, optimizer, b_input_ids, lr, bf16, preset.grad_clip)
        step += 1
        curve.add(step, value, budget.total)
        if progress is not None:
            progress(step, budget.total, value)
        budget.measure(step)
    curve.close(step)
    model.eval()
    return TrainResult(
        model=model,
        planned_steps=preset.steps,
        steps=step,
        tokens_seen=step * preset.tokens_per_step,
        loss_curve=curve.points,
        first_loss=curve.first,
        final_loss=curve.points[-1][1] if curve.points else math.nan,
        budget_limited=budget.limited,
        bf16=bf16,
        train_seconds=time.monotonic() - budget.started,
        num_blocks=len(blocks),
        notes=budget.notes(),
    )


class _Batches:
    """Batches of blocks in a seeded random order, reshuffled when an epoch runs out."""

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int) -> None:
        self.blocks = blocks  # (n_blocks, T)
        self.batch_size = batch_size
        self.shuffle = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(blocks), generator=self.shuffle)
        self.cursor = 0

    def next(self) -> torch.Tensor:
        """The next (B, T) batch of input ids."""
        if self.cursor + self.batch_size > len(self.order):  # next epoch, new order
            self.order = torch.randperm(len(self.blocks), generator=self.shuffle)
            self.cursor = 0
        b_input_ids = self.blocks[self.order[self.cursor : self.cursor + self.batch_size]]
        self.cursor += self.batch_size
        return b_input_ids


def _optimizer(model: LlamaForCausalLM, preset: FoundationPreset) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices only (not on the norms)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": preset.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=preset.learning_rate,
        betas=(0.9, 0.95),
    )


def _train_step(
    model: LlamaForCausalLM,
    optimizer: torch.optim.Optimizer,
    b_input_ids: torch.Tensor,  # (B, T)
    lr: float,
    bf16: bool,
    grad_clip: float,
) -> float:
    """One optimiser step at learning rate `lr`; returns the batch's loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        # HF shifts labels inside the model: position t predicts token t+1.
        loss = model(input_ids=b_input_ids, labels=b_input_ids).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())


class _LossCurve:
    """The first loss, and the mean loss over each `log_every` steps (and the last ones)."""

    def __init__(self, log_every: int) -> None:
        self.log_every = log_every
        self.points: list[list[float]] = []  # [step, mean loss over the preceding interval]
        self.first = math.nan
        self.window: list[float] = []

    def add(self, step: int, value: float, total: int) -> None:
        """Record the loss of 1-based `step` of (currently) `total`."""
        if step == 1:
            self.first = value
        self.window.append(value)
        if step % self.log_every == 0 or step == total:
            self.points.append([step, sum(self.window) / len(self.window)])
            self.window = []

    def close(self, step: int) -> None:
        """The interval cut short when training stopped early."""
        if self.window:
            self.points.append([step, sum(self.window) / len(self.window)])


class _Budget:
    """The wall-clock guard: measures the speed every REPLAN_EVERY steps and fits the
    schedule (`total`) to the time left, and says when the time is spent."""

    def __init__(self, planned: int, deadline: float) -> None:
        self.planned = planned
        self.deadline = deadline
        self.total = planned
        self.stopped_at: int | None = None
        self.started = time.monotonic()
        self.window_started = self.started
        self.per_step = math.nan

    def spent(self, step: int) -> bool:
        """Whether the budget (less the reserve for saving) is spent before `step`."""
        if time.monotonic() >= self.deadline - SAVE_RESERVE_S:
            self.stopped_at = step
            return True
        return False

    def measure(self, step: int) -> None:
        """After 1-based `step`: every REPLAN_EVERY steps, re-plan at the measured speed."""
        if step % REPLAN_EVERY:
            return
        now = time.monotonic()
        # The first window includes one-off start-up costs; later ones are steady.
        self.per_step = (now - self.window_started) / REPLAN_EVERY
        self.window_started = now
        if step > REPLAN_EVERY:
            seconds_left = self.deadline - SAVE_RESERVE_S - now
            self.total = replan(step, self.planned, self.per_step, seconds_left)

    @property
    def limited(self) -> bool:
        """The schedule was shortened or training stopped for time."""
        return self.stopped_at is not None or self.total < self.planned

    def notes(self) -> list[str]:
        if self.stopped_at is not None:
            return [f"stopped at step {self.stopped_at} of {self.total}: time budget spent"]
        if self.total < self.planned:
            return [
                f"schedule shortened from {self.planned} to {self.total} steps to fit the "
                f"time budget ({self.per_step:.2f} s/step when last measured)"
            ]
        return []
