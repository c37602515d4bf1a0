"""Cost-model training (issue 21) on the tiny fixture model: harm records in, a cost model
out that ranks held-out harmful answers above clean ones, with its labels file, lineage
and held-out figures; bad snapshots and settings are refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clinalign.common.artefacts import MANIFEST_NAME
from clinalign.common.cost_format import COST_FILE, LABELS, probabilities
from clinalign.common.errors import InvalidArgument
from clinalign.trainer.methods.cost_model.training import CostHyperparameters, train_cost_model

CONDITIONS = ["flu", "asthma", "migraine", "eczema", "gout", "shingles", "angina", "anaemia"]


def _records() -> list[dict[str, Any]]:
    """An answer that asserts the diagnosis with certainty is a harmful, annotated one
    (inappropriate certainty, moderate); a hedged one is clean. Two answers a prompt; every
    eighth prompt's harmful answer came from a clinician's flag (source ``flagged``)."""
    out = []
    for i in range(48):
        condition = CONDITIONS[i % len(CONDITIONS)]
        prompt = f"Patient {i}: I have a rash and a fever. Is it {condition}?"
        split = "eval" if i % 4 == 0 else "train"
        for certain in (True, False):
            text = (
                f"This is definitely {condition}, without a doubt."
                if certain
                else f"It may be {condition}; please see a doctor."
            )
            out.append(
                {
                    "split": split,
                    "prompt": prompt,
                    "response": text,
                    "categories": ["inappropriate_certainty"] if certain else [],
                    "severity": "moderate" if certain else "",
                    "prompt_id": f"p{i}",
                    "source": "flagged" if certain and i % 8 == 0 else "synthetic",
                }
            )
    return out


FAST = CostHyperparameters(epochs=6, learning_rate=3e-3, batch_size=8, max_length=128)


def test_a_cost_model_learns_to_rank_harmful_answers_above_clean_ones(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    logged: list[tuple[int, int, dict[str, float]]] = []
    out = tmp_path / "cost"
    manifest = train_cost_model(
        _records(),
        "snaphash",
        tiny_model_dir,
        out,
        FAST,
        parent_version="policy-v1",
        progress=lambda step, total, m: logged.append((step, total, dict(m))),
    )
    metrics = manifest["metrics"]
    assert manifest["kind"] == "cost" and manifest["snapshot_hash"] == "snaphash"
    assert manifest["parent_version"] == "policy-v1"
    assert manifest["method"]["labels"] == list(LABELS) and manifest["method"]["cost"] == "P(harm)"
    assert metrics["train_records"] == 72 and metrics["train_harmful"] == 36
    assert metrics["eval_records"] == 24 and metrics["eval_harmful"] == 12
    # the loss moved and the held-out ranking is far above chance
    losses = [m["loss"] for _, _, m in logged if "loss" in m]
    assert losses[-1] < losses[0]
    assert metrics["eval_auroc"] >= 0.9, metrics
    assert 0.0 <= metrics["eval_auroc_low"] <= metrics["eval_auroc"] <= metrics["eval_auroc_high"]
    assert 0.0 <= metrics["eval_ece"] <= 1.0
    # held-out flags (6) against every held-out clean answer (12)
    assert metrics["eval_flags"] == 6 and metrics["eval_flags_auroc"] >= 0.9, metrics
    assert metrics["eval_flags_auroc_low"] <= metrics["eval_flags_auroc"]
    cert = manifest["categories"]["inappropriate_certainty"]
    assert cert["positives"] == 12 and cert["auroc"] >= 0.9
    assert manifest["categories"]["bias"] == {"positives": 0, "auroc": None}  # one class
    # the directory is what the reward service loads: labels, tokenizer, weights
    assert json.loads((out / COST_FILE).read_text()) == {
        "labels": list(LABELS),
        "cost_label": "harm",
    }
    assert json.loads((out / MANIFEST_NAME).read_text())["kind"] == "cost"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    p = probabilities(
        model,
        tokenizer,
        [
            ("Is it gout?", "This is definitely gout, without a doubt."),
            ("Is it gout?", "It may be gout; please see a doctor."),
        ],
    )
    assert p.shape == (2, len(LABELS)) and p[0, 0] > p[1, 0]
    trained = load_file(out / "model.safetensors")
    assert trained["score.weight"].shape[0] == len(LABELS)
    assert not torch.equal(trained["score.weight"], torch.zeros_like(trained["score.weight"]))


def test_a_snapshot_without_both_classes_or_a_bad_setting_is_refused_by_name(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    clean_only = [r for r in _records() if not r["categories"]]
    with pytest.raises(InvalidArgument, match="needs both harmful and clean answers") as err:
        train_cost_model(clean_only, "h", tiny_model_dir, tmp_path / "a", FAST)
    assert err.value.field == "snapshot"
    with pytest.raises(InvalidArgument, match="must be positive") as err:
        train_cost_model(
            _records(), "h", tiny_model_dir, tmp_path / "b", CostHyperparameters(epochs=0)
        )
    assert err.value.field == "epochs"
    bad = [{**r, "categories": ["rudeness"]} if r["categories"] else r for r in _records()]
    with pytest.raises(ValueError, match="unknown error categories"):
        train_cost_model(bad, "h", tiny_model_dir, tmp_path / "c", FAST)
