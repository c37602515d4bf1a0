"""The embedded foundation model that `clinalign bootstrap` builds offline.

A synthetic clinical corpus (`corpus`), a byte-level BPE tokenizer (`tokenizer`) and a
small LlamaForCausalLM pretrained from scratch (`pretrain`), written as a Hugging Face
model directory with a lineage manifest (`build`). Every later stage (SFT, reward
model, PPO, generation) starts from this directory and speaks its prompt format
(`clinalign.common.prompts`).
"""

import importlib
from typing import TYPE_CHECKING, Any

from clinalign.common.prompts import (
    ASSISTANT_TOKEN,
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    UNK_TOKEN,
    USER_TOKEN,
    format_document,
    format_prompt,
    render_user_prompt,
)

from .corpus import generate_corpus, is_heldout_phrasing, iter_qa_examples, iter_qa_pairs
from .presets import FOUNDATION, TINY, FoundationPreset

__all__ = [
    "ASSISTANT_TOKEN",
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "FOUNDATION",
    "MANIFEST_NAME",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "TINY",
    "UNK_TOKEN",
    "USER_TOKEN",
    "FoundationPreset",
    "bootstrap",
    "build_tiny_model",
    "format_document",
    "format_prompt",
    "generate_corpus",
    "is_heldout_phrasing",
    "iter_qa_examples",
    "iter_qa_pairs",
    "read_manifest",
    "render_user_prompt",
]

# The build functions pull in torch and transformers (seconds to import); they load on
# first use so that `from clinalign.foundation import format_prompt` stays cheap.
_LAZY = {"MANIFEST_NAME", "bootstrap", "build_tiny_model", "read_manifest"}

if TYPE_CHECKING:
    from .build import MANIFEST_NAME, bootstrap, build_tiny_model, read_manifest


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        # The module is named `build`, not `bootstrap`: a submodule named like the function
        # would replace the function as a package attribute once imported.
        return getattr(importlib.import_module(".build", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
