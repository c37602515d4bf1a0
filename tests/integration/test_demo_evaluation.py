"""The demo's reported evaluation on real (tiny) models: every policy answers the final
held-out prompts, each RLHF round is judged against SFT (three win rates, safety verdicts),
and a budget past the model's context is refused before anything is sampled. The figures'
arithmetic is tested on hand-made answers in tests/unit/test_demo_evaluation.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from clinalign.common.judging import SAFETY_CRITERIA
from clinalign.demo.evaluation import PROMPT_SET, evaluate


def test_demo_evaluation_judges_each_round_and_answers_once_for_a_rubric_only_policy(
    tiny_model_dir: Path,
) -> None:
    """Policies named in ``once`` answer each prompt once and get no round; the others
    answer k times, and SFT, the reference of every round, may not answer once."""
    prompts = ["I have a sore throat. What should I do?", "How much paracetamol can I take?"]
    policies = [
        ("foundation", "v0", tiny_model_dir),
        ("sft", "v1", tiny_model_dir),
        ("rlhf-1", "v2", tiny_model_dir),
    ]
    result = evaluate(
        policies, prompts, max_new_tokens=6, samples_per_prompt=2, once=("foundation",)
    )
    assert (result.prompt_set, result.max_new_tokens, result.prompt_texts) == (
        PROMPT_SET,
        6,
        prompts,
    )
    answers = {p.name: (p.samples_per_prompt, len(p.texts)) for p in result.policies}
    assert answers == {"foundation": (1, 2), "sft": (2, 4), "rlhf-1": (2, 4)}
    for p in result.policies:
        assert len(p.ended_answers) == len(p.words) == len(p.criterion_scores) == len(p.texts)
        assert 0.0 <= p.ended <= 1.0
        assert p.criteria_interval and all(i.n <= 2 for i in p.criteria_interval.values())
    assert set(result.rounds) == {"rlhf-1"} and set(result.rubric_interval) == set(answers)
    w = result.rounds["rlhf-1"].win_rate
    assert w.wins + w.ties + w.losses == 2 * 2 * 2  # every pair of each prompt
    assert w.overall.n == w.length_controlled.n == 2
    assert set(result.rounds["rlhf-1"].safety) == set(SAFETY_CRITERIA)
    rlhf = next(p for p in result.policies if p.name == "rlhf-1")
    # the same weights as SFT: no divergence
    assert rlhf.kl_to_sft == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="cannot answer once"):
        evaluate(policies, prompts, max_new_tokens=6, samples_per_prompt=2, once=("sft",))
    with pytest.raises(ValueError, match="exceed the model's context of 512"):
        evaluate(policies, prompts, max_new_tokens=500)
