"""Next-token selection for a batch whose rows each carry their own sampling parameters.

The order of the transforms follows transformers' logits warpers (temperature, then
top-k, then top-p, as ``GenerationMixin._get_logits_processor`` builds them), so a row
sampled here sees the same distribution as ``model.generate`` would give it alone.
"""

from __future__ import annotations

import torch


def next_tokens(
    logits: torch.Tensor,  # [B, V] scores of the last position
    temperature: torch.Tensor,  # [B] float; 0 = greedy
    top_k: torch.Tensor,  # [B] long; 0 = off
    top_p: torch.Tensor,  # [B] float in (0, 1]; 1 = off
    generators: list[torch.Generator | None],  # [B] a seeded generator, or None
) -> torch.Tensor:  # [B] long
    greedy = logits.argmax(dim=-1)
    sampled_rows = temperature > 0
    if not bool(sampled_rows.any()):
        return greedy
    probs = filtered_probs(logits, temperature, top_k, top_p)
    picks = greedy.clone()
    shared = [i for i, g in enumerate(generators) if g is None and bool(sampled_rows[i])]
    if shared:
        picks[shared] = torch.multinomial(probs[shared], 1).squeeze(-1)
    seeded = [i for i, g in enumerate(generators) if g is not None and bool(sampled_rows[i])]
    if seeded:
        # Seeded rows draw on their generators' device (the CPU), whatever the model's:
        # torch.multinomial refuses a generator on another device, and the same seed and
        # distribution then give the same token on a CPU or a GPU. One copy for all of them.
        rows = probs[seeded].to(device="cpu", dtype=torch.float32)
        drawn = [
            int(torch.multinomial(row, 1, generator=generators[i])[0])
            for row, i in zip(rows, seeded, strict=True)
        ]
        picks[seeded] = torch.tensor(drawn, dtype=picks.dtype, device=picks.device)
    return picks


def filtered_probs(
    logits: torch.Tensor,  # [B, V]
    temperature: torch.Tensor,  # [B]
    top_k: torch.Tensor,  # [B]
    top_p: torch.Tensor,  # [B]
) -> torch.Tensor:  # [B, V] probabilities, zero outside each row's top-k / nucleus
    vocab = logits.shape[-1]
    scaled = logits / temperature.clamp(min=1e-5).unsqueeze(-1)
    b_sorted, b_order = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)  # [1, V]
    # top-k: keep the k best of each row (k = 0 keeps all).
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).unsqueeze(-1)
    b_sorted = b_sorted.masked_fill(rank >= k, float("-inf"))
    # top-p: keep the smallest prefix whose mass reaches p; the best token always stays
    # (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", §3.1).
    b_probs = b_sorted.softmax(dim=-1)
    mass_before = b_probs.cumsum(dim=-1) - b_probs
    b_sorted = b_sorted.masked_fill(mass_before >= top_p.unsqueeze(-1), float("-inf"))
    probs = torch.zeros_like(scaled)
    probs.scatter_(-1, b_order, b_sorted.softmax(dim=-1))
    return probs
