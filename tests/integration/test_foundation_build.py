"""The embedded foundation model built for real: the tiny preset's directory, its lineage
and reproducibility, and the bootstrap's reuse and rebuild rules. The full preset's build
(eight minutes) is bench/foundation.py's to measure."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from clinalign.foundation import (
    CHAT_TEMPLATE,
    MANIFEST_NAME,
    SPECIAL_TOKENS,
    TINY,
    build_tiny_model,
    format_document,
    format_prompt,
    generate_corpus,
    read_manifest,
)
from clinalign.foundation.build import build_foundation, settings_key

QUESTION = "I have had a fever and a cough for three days. What should I do?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("foundation") / "tiny"
    return out, build_tiny_model(out)


def test_tiny_model_directory_is_a_loadable_causal_lm(tiny: tuple[Path, dict[str, Any]]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = tiny
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer)
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "</s>",
        "<pad>",
        "<s>",
    )
    assert tokenizer.padding_side == "left"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    for token in SPECIAL_TOKENS:
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id or token == "<unk>"


def test_tiny_model_generates_new_tokens_in_a_left_padded_batch(
    tiny: tuple[Path, dict[str, Any]],
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = tiny
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    prompts = [format_prompt(QUESTION), format_prompt("What is ibuprofen used for?")]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert output.shape == (2, batch["input_ids"].shape[1] + 8)
    assert tokenizer.decode(output[0, -8:], skip_special_tokens=True) != ""


def test_chat_template_matches_format_prompt(tiny: tuple[Path, dict[str, Any]]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny[0])
    messages = [{"role": "user", "content": QUESTION}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == format_prompt(QUESTION)
    full = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": "Rest."}], tokenize=False
    )
    assert full == format_document(QUESTION, "Rest.")
    assert tokenizer.chat_template == CHAT_TEMPLATE
    # The special tokens encode as single ids and no BOS is inserted.
    ids = tokenizer(format_prompt("Hi"))["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|user|>")
    assert tokenizer.decode(ids) == format_prompt("Hi")


def test_tiny_manifest_records_lineage_and_loss_went_down(
    tiny: tuple[Path, dict[str, Any]],
) -> None:
    out, manifest = tiny
    assert manifest == json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "foundation"
    assert manifest["preset"] == "tiny" and manifest["seed"] == 0
    assert manifest["corpus"]["sha256"] == generate_corpus(0, TINY.corpus_bytes).sha256
    assert manifest["corpus"]["bytes"] >= TINY.corpus_bytes
    assert manifest["tokenizer"]["vocab_size"] == TINY.vocab_size
    assert manifest["model"]["config"]["hidden_size"] == TINY.hidden_size
    assert manifest["parameters"] > 0
    assert manifest["steps"] == TINY.steps
    assert manifest["tokens_seen"] == TINY.steps * TINY.batch_size * TINY.context_length
    assert manifest["wall_s"] > 0
    assert {"torch", "transformers", "tokenizers"} <= set(manifest["versions"])
    curve = manifest["training"]["loss_curve"]
    assert [step for step, _ in curve] == sorted(step for step, _ in curve)
    assert all(math.isfinite(loss) for _, loss in curve)
    assert curve[-1][1] < curve[0][1] - 0.5, "training did not reduce the loss"
    assert manifest["training"]["budget_limited"] is False
    # Readable by other users and containers (mkdtemp alone would leave it 0700).
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())


@pytest.mark.slow
def test_tiny_build_is_reproducible(tiny: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    out, manifest = tiny
    again = build_tiny_model(tmp_path / "again")
    assert again["training"]["loss_curve"] == manifest["training"]["loss_curve"]
    first = load_file(out / "model.safetensors")
    second = load_file(tmp_path / "again" / "model.safetensors")
    assert all(torch.equal(first[name], second[name]) for name in first)


# -- bootstrap behaviour ------------------------------------------------------------------


@pytest.mark.slow
def test_existing_model_is_reused_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "model"
    first = build_tiny_model(out)
    assert build_tiny_model(out) == first  # same settings: nothing rebuilt
    rebuilt = build_tiny_model(out, force=True)
    assert rebuilt["created_at"] >= first["created_at"]
    assert rebuilt["settings_key"] == first["settings_key"]
    assert (out / "model.safetensors").stat().st_mtime_ns >= 0
    other_seed = build_tiny_model(out, seed=1)  # different settings: rebuilt in place
    assert other_seed["seed"] == 1 and read_manifest(out) == other_seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "staging dirs left behind"


@pytest.mark.slow
def test_force_rebuild_replaces_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "model"
    build_tiny_model(out)
    (out / "stale.txt").write_text("left from an earlier build")
    build_tiny_model(out, force=True)
    assert not (out / "stale.txt").exists()


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="refusing to replace it"):
        build_tiny_model(tmp_path)
    assert (tmp_path / "notes.txt").exists()


def test_failed_build_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import clinalign.foundation.build as build_module

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(build_module, "pretrain", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        build_tiny_model(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_time_budget_stops_training_and_is_recorded(tmp_path: Path) -> None:
    manifest = build_foundation(tmp_path / "m", TINY, time_budget_s=0.0)
    training = manifest["training"]
    assert training["budget_limited"] is True
    assert training["steps"] < TINY.steps
    assert any("time budget" in note for note in training["notes"])


def test_settings_key_changes_with_seed_and_preset() -> None:
    from dataclasses import replace

    assert settings_key(TINY, 0) == settings_key(TINY, 0)
    assert settings_key(TINY, 0) != settings_key(TINY, 1)
    assert settings_key(TINY, 0) != settings_key(replace(TINY, steps=TINY.steps + 1), 0)
