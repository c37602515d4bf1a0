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

    Keeps a 5% margin for timing noise; below the plan, always allows one more step.
    """
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
    shuffle = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(blocks), generator=shuffle)
    cursor = 0

    # -- model and optimiser ------------------------------------------------------------
    torch.manual_seed(seed)
    model = build_model(preset, tokenizer)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # norms
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": preset.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=preset.learning_rate,
        betas=(0.9, 0.95),
    )
    bf16 = use_bf16(preset.bf16)

    # -- loop ---------------------------------------------------------------------------
    total = preset.steps
    stopped = False
    notes: list[str] = []
    curve: list[list[float]] = []
    window: list[float] = []
    first_loss = math.nan
    started = time.monotonic()
    window_started = started
    per_step = math.nan
    step = 0
    while step < total:
        # At least one step always runs, so the loss curve and the saved model are defined.
        if step > 0 and time.monotonic() >= deadline - SAVE_RESERVE_S:
            stopped = True
            notes.append(f"stopped at step {step} of {total}: time budget spent")
            break
        if cursor + preset.batch_size > len(order):  # next epoch, new order
            order = torch.randperm(len(blocks), generator=shuffle)
            cursor = 0
        b_input_ids = blocks[order[cursor : cursor + preset.batch_size]]  # (B, T)
        cursor += preset.batch_size

        lr = lr_at(step, total, preset.warmup_steps, preset.learning_rate, preset.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            # HF shifts labels inside the model: position t predicts token t+1.
            loss = model(input_ids=b_input_ids, labels=b_input_ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        optimizer.step()

        step += 1
        value = float(loss.detach())
        if step == 1:
            first_loss = value
        window.append(value)
        if step % preset.log_every == 0 or step == total:
            curve.append([step, sum(window) / len(window)])
            window = []
        if progress is not None:
            progress(step, total, value)
        if step % REPLAN_EVERY == 0:
            now = time.monotonic()
            # The first window includes one-off start-up costs; later ones are steady.
            per_step = (now - window_started) / REPLAN_EVERY
            window_started = now
            if step > REPLAN_EVERY:
                total = replan(step, preset.steps, per_step, deadline - SAVE_RESERVE_S - now)
    if window:
        curve.append([step, sum(window) / len(window)])
    if total < preset.steps and not stopped:
        notes.append(
            f"schedule shortened from {preset.steps} to {total} steps to fit the time "
            f"budget ({per_step:.2f} s/step when last measured)"
        )
    model.eval()
    return TrainResult(
        model=model,
        planned_steps=preset.steps,
        steps=step,
        tokens_seen=step * preset.tokens_per_step,
        loss_curve=curve,
        first_loss=first_loss,
        final_loss=curve[-1][1] if curve else math.nan,
        budget_limited=stopped or total < preset.steps,
        bf16=bf16,
        train_seconds=time.monotonic() - started,
        num_blocks=len(blocks),
        notes=notes,
    )
