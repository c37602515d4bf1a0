"""Byte-level BPE tokenizer trained on the corpus, wrapped as a transformers tokenizer.

Choices, and why:

* Byte-level (GPT-2 style): any input, including text outside the corpus, encodes
  without `<unk>`; the vocabulary only has to cover what the corpus says often.
* No BOS is inserted on encode: prompts are exactly the `format_prompt` text, and
  `apply_chat_template(..., tokenize=True)` and `tokenizer(text)` agree.
* Padding side is left, so batched generation appends new tokens right after each
  prompt; `<pad>` is its own token (id 0), distinct from EOS.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from clinalign.common.prompts import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    UNK_TOKEN,
)

_SPECIAL_SPLIT = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


def _without_special_tokens(texts: Iterable[str]) -> Iterator[str]:
    # Special tokens are added whole; left in the training text, the BPE trainer would
    # also learn merges for their pieces ("<|", "user", ...), wasting vocabulary.
    for text in texts:
        yield from (piece for piece in _SPECIAL_SPLIT.split(text) if piece)


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it with ClinAlign's special tokens."""
    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must exceed the 256 byte symbols plus {len(SPECIAL_TOKENS)} special "
            f"tokens, got {vocab_size}"
        )
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    core.train_from_iterator(_without_special_tokens(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t.startswith("<|")],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
