"""The one prompt format every ClinAlign model speaks.

A patient question and its answer are rendered as::

    <|user|>
    {question}
    <|assistant|>
    {answer}</s>

`format_prompt` gives the part up to and including the assistant tag, which is what
generation, SFT and PPO feed a model; `CHAT_TEMPLATE` is the same format as a jinja
template stored on the tokenizer, so `tokenizer.apply_chat_template(...,
add_generation_prompt=True, tokenize=False)` returns exactly `format_prompt(question)`.
No BOS token is added (the tokenizer does not insert one either), so the text is the
whole model input.
"""

from __future__ import annotations

from typing import Any

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"

# Order fixes the token ids: <pad>=0, <s>=1, </s>=2, <unk>=3, <|user|>=4, <|assistant|>=5.
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    UNK_TOKEN,
    USER_TOKEN,
    ASSISTANT_TOKEN,
)

# HF renders chat templates with trim_blocks/lstrip_blocks, so the template is one line and
# every newline is an explicit '\n' inside a string literal.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|user|>\\n' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\\n' + message['content'] + '</s>' }}"
    "{% else %}"
    "{{ raise_exception('ClinAlign chat format supports only user and assistant roles') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def format_prompt(question: str) -> str:
    """Return the model input for one patient question, ending where the answer starts."""
    return f"{USER_TOKEN}\n{question}\n{ASSISTANT_TOKEN}\n"


def render_user_prompt(tokenizer: Any, prompt: str) -> str:
    """A user message as a model's tokenizer renders it for generation: its chat template
    with the assistant turn opened, or the text itself when it has no template."""
    if not getattr(tokenizer, "chat_template", None):
        return prompt
    return str(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
    )


def format_document(question: str, answer: str) -> str:
    """Return a full question-and-answer training document, terminated by EOS."""
    return f"{format_prompt(question)}{answer}{EOS_TOKEN}"
