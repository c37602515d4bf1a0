"""Per-row sampling: exact values, and agreement with transformers' own logits warpers."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from clinalign.generation.sampling import filtered_probs, next_tokens


def _row(values: list[float]) -> torch.Tensor:
    return torch.tensor([values])


def test_top_k_keeps_the_k_best_renormalised() -> None:
    logits = torch.log(_row([0.1, 0.4, 0.3, 0.2]))
    probs = filtered_probs(logits, torch.tensor([1.0]), torch.tensor([2]), torch.tensor([1.0]))
    assert probs[0].tolist() == pytest.approx([0.0, 4 / 7, 3 / 7, 0.0])


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    logits = torch.log(_row([0.5, 0.3, 0.15, 0.05]))
    probs = filtered_probs(logits, torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0.8]))
    # 0.5 + 0.3 reaches 0.8, so the third token is cut: [0.5, 0.3] / 0.8.
    assert probs[0].tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0])
    tiny_p = filtered_probs(logits, torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0.01]))
    assert tiny_p[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])  # the best always stays


def test_temperature_divides_the_logits() -> None:
    logits = _row([0.0, math.log(4.0)])
    probs = filtered_probs(logits, torch.tensor([2.0]), torch.tensor([0]), torch.tensor([1.0]))
    # exp(log 4 / 2) = 2, so the odds are 1 : 2.
    assert probs[0].tolist() == pytest.approx([1 / 3, 2 / 3])


def test_each_row_matches_transformers_warpers() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    params = [(0.7, 5, 1.0), (1.3, 0, 0.9), (1.0, 10, 0.5), (0.5, 3, 0.7)]
    ours = filtered_probs(
        logits,
        torch.tensor([t for t, _, _ in params]),
        torch.tensor([k for _, k, _ in params]),
        torch.tensor([p for _, _, p in params]),
    )
    for i, (t, k, p) in enumerate(params):
        row = logits[i : i + 1]
        row = TemperatureLogitsWarper(t)(None, row)
        if k:
            row = TopKLogitsWarper(k)(None, row)
        if p < 1.0:
            row = TopPLogitsWarper(p)(None, row)
        assert torch.allclose(ours[i], row.softmax(-1)[0], atol=1e-6), f"row {i}"


def test_greedy_rows_take_the_argmax_and_seeded_rows_repeat() -> None:
    logits = torch.randn(3, 30, generator=torch.Generator().manual_seed(1))
    temperature = torch.tensor([0.0, 1.0, 1.0])
    k, p = torch.zeros(3, dtype=torch.long), torch.ones(3)

    def draw(seed: int) -> list[int]:
        gens = [None, torch.Generator().manual_seed(seed), None]
        return next_tokens(logits, temperature, k, p, gens).tolist()

    first, again, other = draw(7), draw(7), [draw(s)[1] for s in range(20)]
    assert first[0] == int(logits[0].argmax())
    assert first[1] == again[1]  # the seeded row is reproducible whatever its neighbours do
    assert len(set(other)) > 1  # and different seeds sample different tokens


def test_all_greedy_batch_is_argmax() -> None:
    logits = torch.randn(5, 12)
    picks = next_tokens(
        logits, torch.zeros(5), torch.zeros(5, dtype=torch.long), torch.ones(5), [None] * 5
    )
    assert picks.tolist() == logits.argmax(-1).tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seeded_rows_sample_on_a_gpu_as_on_the_cpu() -> None:
    # The generation service keeps a request's seeded generator on the CPU; its logits may
    # live on a GPU (torch.multinomial refuses a generator on another device).
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(3))
    temperature, k, p = torch.ones(2), torch.zeros(2, dtype=torch.long), torch.ones(2)

    def draw(device: str) -> list[int]:
        gens = [torch.Generator().manual_seed(11), None]
        picks = next_tokens(
            logits.to(device), temperature.to(device), k.to(device), p.to(device), gens
        )
        assert picks.device.type == device
        return picks.tolist()

    assert draw("cuda")[0] == draw("cpu")[0]
