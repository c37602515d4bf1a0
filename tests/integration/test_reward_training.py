"""Reward-model training and evaluation on a synthetic snapshot, from the tiny model.

In the snapshot the preferred answer always carries a safety-netting sentence (when to
seek care) and the rejected one a falsely reassuring sentence instead; everything else is
shared. A second annotator relabels every held-out pair and disagrees on every fifth
prompt's pairs, so the agreement ceiling is known in advance.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clinalign.common.artefacts import MANIFEST_NAME, NORMALISATION_FILE
from clinalign.common.hashing import weights_hash
from clinalign.common.reward_format import preference_pairs, raw_rewards
from clinalign.preference.snapshots import canonical, render_jsonl
from clinalign.trainer.methods.reward_model.commands import eval_command, train_command
from clinalign.trainer.methods.reward_model.evaluation import evaluate_reward_model, promotion_check
from clinalign.trainer.methods.reward_model.normalisation import reference_responses
from clinalign.trainer.methods.reward_model.training import (
    LoraSettings,
    RewardHyperparameters,
    continued_reference_policy,
    train_reward_model,
)
from clinalign.trainer.registry.versions import Base, Registry

COMPLAINTS = ("chest pain", "a headache", "a fever", "shortness of breath", "a rash")
DURATIONS = ("since this morning", "for two days", "for a week", "since last night")
ADVICE = (
    "Rest and drink plenty of fluids.",
    "Take paracetamol as directed.",
    "Keep a diary of your symptoms.",
    "Avoid heavy exercise for now.",
    "Use a cold compress.",
)
SAFETY_NET = (
    "If it gets worse, seek urgent care.",
    "Call emergency services if you faint.",
    "See a doctor today if you have a high fever.",
)
FALSE_REASSURANCE = (
    "It will usually pass on its own.",
    "There is nothing to worry about.",
    "No need to see anyone about this.",
)
SNAPSHOT_HASH = "f" * 64
MARGIN = 0.02  # the reward-model gate's non-inferiority margin
HYPER: dict[str, Any] = {  # a learning rate for a 48-wide model, and a short normalisation sample
    "epochs": 2.0,
    "learning_rate": 1e-3,
    "batch_size": 16,
    "norm_prompts": 16,
    "norm_max_new_tokens": 24,
}


def synthetic_records(n_prompts: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    for i in range(n_prompts):
        prompt = f"I have had {rng.choice(COMPLAINTS)} {rng.choice(DURATIONS)}. What should I do?"
        split = "eval" if i % 5 == 0 else "train"
        for j in range(2):
            advice = rng.choice(ADVICE)
            good, bad = rng.choice(SAFETY_NET), rng.choice(FALSE_REASSURANCE)
            good, bad = (f"{advice} {good}", f"{advice} {bad}") if j else (good, bad)
            record = {
                "split": split,
                "prompt": prompt,
                "chosen": good,
                "rejected": bad,
                "tie": False,
                "strength": 1.0,
                "prompt_id": f"p{i}",
                "chosen_id": f"r{i}.{j}a",
                "rejected_id": f"r{i}.{j}b",
                "label_id": f"l{i}.{j}",
                "annotator_id": "ann-1",
                "guideline_version": "v1",
                "source": "curated",
                "tags": [f"specialty:{'cardiology' if i % 2 else 'general'}"],
                "rejected_error_categories": ["unsafe_advice" if j else "omission"],
            }
            records.append(record)
            if split == "eval":
                second = dict(record, label_id=f"l{i}.{j}x", annotator_id="ann-2")
                if i % 25 == 0:  # ann-2 disagrees on every fifth held-out prompt
                    second.update(chosen=bad, rejected=good, chosen_id=f"r{i}.{j}b")
                    second.update(rejected_id=f"r{i}.{j}a")
                records.append(second)
        if split == "train" and i % 10 == 1:  # two equally good answers: a tie
            records.append(
                dict(
                    records[-1],
                    chosen=f"{SAFETY_NET[0]} {ADVICE[0]}",
                    rejected=f"{SAFETY_NET[1]} {ADVICE[0]}",
                    tie=True,
                    strength=0.0,
                )
            )
    return records


RECORDS = synthetic_records()
EVAL_LABELS = [r for r in RECORDS if r["split"] == "eval"]
DISAGREEING = [r for r in EVAL_LABELS if r["annotator_id"] == "ann-2" and r["chosen_id"][-1] == "b"]


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The records as ExportSnapshot writes them, with the snapshot manifest beside them."""
    path = tmp_path_factory.mktemp("snapshot") / "snap.jsonl"
    rows = [(r["split"], canonical({k: v for k, v in r.items() if k != "split"})) for r in RECORDS]
    path.write_bytes(render_jsonl(rows, with_split=True))
    path.with_name("snap.jsonl.manifest.json").write_text(
        json.dumps({"content_hash": SNAPSHOT_HASH})
    )
    return path


@pytest.fixture(scope="module")
def trained(export: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rm") / "reward-v2"
    train_command(export, tiny_model_dir, out, **HYPER)
    return out


def test_training_learns_the_preference(trained: Path, tiny_model_dir: Path) -> None:
    manifest = json.loads((trained / MANIFEST_NAME).read_text())
    metrics = manifest["metrics"]
    assert metrics["eval_pairs"] == len(EVAL_LABELS)
    # at best 0.9: a model cannot agree with both annotators where they disagree
    assert 0.8 <= metrics["eval_accuracy"] <= 1 - len(DISAGREEING) / len(EVAL_LABELS)
    assert metrics["train_ties"] == sum(r["tie"] for r in RECORDS)
    assert metrics["train_loss_last"] < metrics["train_loss_first"] / 4
    base, tuned = (
        load_file(tiny_model_dir / "model.safetensors"),
        load_file(trained / "model.safetensors"),
    )
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[name], tuned[name])
    assert "score.weight" in tuned and "lm_head.weight" not in tuned


def test_manifest_records_the_lineage(trained: Path, tiny_model_dir: Path) -> None:
    manifest = json.loads((trained / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "reward"
    assert manifest["snapshot_hash"] == SNAPSHOT_HASH
    assert manifest["snapshot_hash_source"] == "manifest"
    assert manifest["base_model"] == str(tiny_model_dir.resolve())
    assert manifest["seed"] == 0
    assert manifest["config"]["hyperparameters"]["learning_rate"] == HYPER["learning_rate"]
    assert manifest["config"]["lora"] is None
    assert manifest["code_version"]["package"]
    assert manifest["created_at"]
    assert manifest["method"]["head_init_std"] == pytest.approx(1 / 7)  # d_model 48
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        version = Registry(trained.parent / "registry").register(session, trained, "reward")
    assert version.snapshot_hash == SNAPSHOT_HASH
    assert version.base_model == str(tiny_model_dir.resolve())
    assert version.metrics["eval_accuracy"] == manifest["metrics"]["eval_accuracy"]


def test_normalisation_makes_reference_responses_mean_0_std_1(
    trained: Path, tiny_model_dir: Path
) -> None:
    norm = json.loads((trained / NORMALISATION_FILE).read_text())
    assert norm["n"] == HYPER["norm_prompts"] and "reference policy" in norm["source"]
    # the same samples again (seeded), scored by the saved model as the service scores them
    hyper = RewardHyperparameters(**HYPER)
    prompts = [p.prompt for p in preference_pairs(RECORDS, "train")]
    reference = reference_responses(tiny_model_dir, prompts, hyper)
    model = AutoModelForSequenceClassification.from_pretrained(trained, num_labels=1)
    rewards, _ = raw_rewards(model, AutoTokenizer.from_pretrained(trained), reference)
    normalised = (torch.tensor(rewards) - norm["mean"]) / norm["std"]
    # Scored here in float32 on the CPU; on a GPU the statistics were taken under bf16
    # autocast and TF32 (seen on an H200: mean -8e-4), so the tolerance follows the device.
    tolerance = 5e-3 if torch.cuda.is_available() else 1e-4
    assert normalised.mean().item() == pytest.approx(0.0, abs=tolerance)
    assert normalised.std(correction=0).item() == pytest.approx(1.0, abs=tolerance)


def test_evaluation_report_and_promotion(
    trained: Path, export: Path, tiny_reward_dir: Path
) -> None:
    report = eval_command(trained, export, tiny_reward_dir, margin=MARGIN)
    assert report.model == "reward-v2" and report.snapshot_hash == SNAPSHOT_HASH
    assert report.n == len(EVAL_LABELS) and report.ties == 0
    assert report.accuracy >= 0.8 and 0.5 < report.ci_low <= report.accuracy <= report.ci_high
    assert set(report.per_category) == {"omission", "unsafe_advice"}
    assert set(report.per_tag) == {"specialty:cardiology", "specialty:general"}
    assert 0.0 <= report.ece <= 1.0
    # every held-out label is doubly labelled; a disagreement costs both labels their credit
    assert report.ceiling_n == len(EVAL_LABELS)
    assert report.agreement_ceiling == pytest.approx(1 - 2 * len(DISAGREEING) / len(EVAL_LABELS))
    assert report.baseline is not None and report.baseline.model == tiny_reward_dir.name
    assert promotion_check(report) == []
    assert "Promotion: allowed." in report.to_markdown()

    # the untrained model is refused, and the message names the figure that failed
    untrained = evaluate_reward_model(tiny_reward_dir, RECORDS, trained, margin=MARGIN)
    failures = promotion_check(untrained)
    assert f" against reward-v2's {report.accuracy:.3f} on the same " in failures[-1]
    assert failures[-1].endswith(
        "is not shown non-inferior, the interval's lower end not above the margin -0.02"
    )
    assert failures[0].startswith(f"pairwise accuracy {untrained.accuracy:.2f} (95% CI ")
    assert failures[0].endswith("is not above chance (0.5) with confidence")


def test_training_continues_a_reward_model(
    trained: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A warm start: a reward model as ``base_model`` is continued, head included, and
    normalised on the reference policy it was normalised on."""
    first = json.loads((trained / MANIFEST_NAME).read_text())
    # so small a step that the continued model is still the one it started from (a fresh
    # head would leave it near chance)
    hyper = RewardHyperparameters(**{**HYPER, "epochs": 1.0, "learning_rate": 1e-9})
    out = tmp_path / "reward-v3"
    manifest = train_reward_model(RECORDS, SNAPSHOT_HASH, trained, out, hyper)
    assert manifest["method"]["init"] == "continues the reward model base_model, head included"
    assert manifest["method"]["head_init_std"] is None
    assert manifest["base_model"] == str(trained.resolve())
    assert manifest["reference_policy"] == str(tiny_model_dir.resolve())
    assert manifest["metrics"]["eval_accuracy"] == first["metrics"]["eval_accuracy"]
    # the same reference samples (seeded) scored by nearly the same model
    norm, first_norm = (json.loads((d / NORMALISATION_FILE).read_text()) for d in (out, trained))
    assert tiny_model_dir.name in norm["source"]
    assert norm["mean"] == pytest.approx(first_norm["mean"], abs=1e-3)
    assert norm["std"] == pytest.approx(first_norm["std"], rel=1e-3)
    # a continuation of a continuation keeps the first model's reference policy
    assert continued_reference_policy(out) == tiny_model_dir.resolve()
    assert continued_reference_policy(tiny_model_dir) is None  # a policy: a fresh head


def test_a_reward_model_whose_reference_policy_is_gone_is_refused(
    trained: Path, tmp_path: Path
) -> None:
    from clinalign.common.errors import InvalidArgument

    moved = tmp_path / "moved"
    shutil.copytree(trained, moved)
    manifest = json.loads((moved / MANIFEST_NAME).read_text())
    manifest["reference_policy"] = str(tmp_path / "gone")
    (moved / MANIFEST_NAME).write_text(json.dumps(manifest))
    pattern = r"base_model: .*moved is a reward model whose reference policy \(.*gone\) is not"
    with pytest.raises(InvalidArgument, match=pattern):
        train_reward_model(RECORDS, SNAPSHOT_HASH, moved, tmp_path / "x", RewardHyperparameters())
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.slow
def test_lora_training_saves_a_merged_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reward-lora"
    manifest = train_reward_model(
        RECORDS,
        SNAPSHOT_HASH,
        tiny_model_dir,
        out,
        RewardHyperparameters(epochs=2.0, learning_rate=5e-3, batch_size=16, norm_prompts=8),
        lora=LoraSettings(r=2, alpha=4),
    )
    assert not (out / "adapter_config.json").exists()  # merged: the scorer loads it as is
    assert manifest["config"]["lora"]["r"] == 2
    assert manifest["metrics"]["eval_accuracy"] >= 0.8
    tuned = load_file(out / "model.safetensors")
    assert not any("lora" in name for name in tuned)
    base = load_file(tiny_model_dir / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(base[name], tuned[name])


def test_training_is_deterministic_and_reports_progress(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    subset = [r for r in RECORDS if r["split"] == "train"][:32]
    hyper = RewardHyperparameters(epochs=1.0, learning_rate=1e-3, batch_size=8, norm_prompts=4)
    steps: list[tuple[int, int, dict[str, float]]] = []
    first = train_reward_model(
        subset,
        SNAPSHOT_HASH,
        tiny_model_dir,
        tmp_path / "a",
        hyper,
        progress=lambda *s: steps.append(s),
    )
    train_reward_model(subset, SNAPSHOT_HASH, tiny_model_dir, tmp_path / "b", hyper)
    assert weights_hash(tmp_path / "a") == weights_hash(tmp_path / "b")
    assert (tmp_path / "a" / NORMALISATION_FILE).read_text() == (
        tmp_path / "b" / NORMALISATION_FILE
    ).read_text()
    assert [s for s, _, _ in steps] == list(range(1, len(steps) + 1))
    assert len(steps) == first["metrics"]["train_steps"] == steps[0][1]
    assert all("loss" in logged for _, _, logged in steps)
    assert first["metrics"]["eval_pairs"] == 0  # the subset has no held-out split


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 on the CPU: a machine without CUDA")
def test_training_in_bf16_on_the_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Asked for, bf16 trains under CPU autocast (transformers refuses it without CUDA
    unless told to use the CPU)."""
    hyper = RewardHyperparameters(**{**HYPER, "epochs": 1.0, "bf16": True})
    manifest = train_reward_model(RECORDS, SNAPSHOT_HASH, tiny_model_dir, tmp_path / "rm", hyper)
    assert manifest["config"]["hyperparameters"]["bf16"] is True
    assert manifest["metrics"]["train_loss_last"] < manifest["metrics"]["train_loss_first"]


def test_bad_inputs_name_the_field(tiny_model_dir: Path, tmp_path: Path) -> None:
    from clinalign.common.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="snapshot: holds no preference pairs"):
        train_reward_model(EVAL_LABELS, "h", tiny_model_dir, tmp_path / "x")
    with pytest.raises(InvalidArgument, match=r"base_model: .* is not a Hugging Face model"):
        train_reward_model(RECORDS, "h", tmp_path, tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    with pytest.raises(InvalidArgument, match=r"out: .* exists and is not empty"):
        train_reward_model(RECORDS, "h", tiny_model_dir, tmp_path / "full")
    with pytest.raises(InvalidArgument, match="learning_rate: must be positive"):
        train_reward_model(
            RECORDS, "h", tiny_model_dir, tmp_path / "x", RewardHyperparameters(learning_rate=0)
        )
    with pytest.raises(InvalidArgument, match="lr: is not a hyperparameter"):
        train_command(tmp_path, tiny_model_dir, tmp_path / "x", lr=1e-3)
