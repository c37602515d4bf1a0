"""Size and training presets for the foundation model.

`FOUNDATION` is what `clinalign bootstrap` builds: sized so the whole build (corpus,
tokenizer, pretraining, save) takes about three minutes on two CPU cores. `TINY` runs
the same code path in seconds and is what test fixtures use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FoundationPreset:
    """Everything that determines a built model, apart from the seed.

    Changing any field changes `settings_key`, which makes `bootstrap` rebuild.
    """

    name: str
    # Corpus and tokenizer
    corpus_bytes: int  # generate documents until the corpus reaches this UTF-8 size
    vocab_size: int  # BPE vocabulary including the 256 byte symbols and special tokens
    # LlamaForCausalLM shape
    hidden_size: int
    intermediate_size: int  # SwiGLU width
    num_layers: int
    num_heads: int
    num_kv_heads: int
    context_length: int  # training block length; packed, no padding
    max_position_embeddings: int  # > context_length so prompt + answer fits at inference
    # Optimisation (AdamW, linear warm-up then cosine decay to min_lr_ratio * lr)
    batch_size: int  # blocks per step
    steps: int
    learning_rate: float
    min_lr_ratio: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    log_every: int  # loss-curve resolution in steps
    # bf16 autocast on CPU: faster matmuls where the CPU has native bf16 (AVX512-BF16 /
    # AMX), slower elsewhere, so "auto" uses it only there (see docs/experiments.md,
    # 2026-11-25).
    bf16: str  # "auto", "on" or "off"

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.context_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Sized by a sweep scored on held-out prompts (answer loss, and how often a greedy answer
# names the right condition) at a fixed CPU time: small batches with many steps beat bigger
# models or batches (see docs/experiments.md, 2026-11-25). The step count is fixed rather
# than timed, so the same seed builds the same model on a quiet or a busy machine; the
# build's time on two cores is in docs/experiments.md (2026-11-26). See IMPLEMENTATION.md.
FOUNDATION = FoundationPreset(
    name="foundation",
    corpus_bytes=4_000_000,
    vocab_size=4096,
    hidden_size=192,
    intermediate_size=512,
    num_layers=4,
    num_heads=4,
    num_kv_heads=4,
    context_length=256,
    max_position_embeddings=512,
    batch_size=4,
    steps=1600,
    learning_rate=2e-3,
    min_lr_ratio=0.1,
    warmup_steps=100,
    weight_decay=0.1,
    grad_clip=1.0,
    log_every=20,
    bf16="auto",
)

TINY = FoundationPreset(
    name="tiny",
    corpus_bytes=150_000,
    vocab_size=512,
    hidden_size=48,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    context_length=128,
    max_position_embeddings=512,
    batch_size=8,
    steps=40,
    learning_rate=5e-3,
    min_lr_ratio=0.1,
    warmup_steps=4,
    weight_decay=0.0,
    grad_clip=1.0,
    log_every=1,
    # Test fixtures must be identical on every machine, so no hardware-dependent precision.
    bf16="off",
)
