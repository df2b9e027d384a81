from __future__ import annotations

import pytest

from worker.chat_prompt import ChatPrompter
from worker.engine import PromptRejected
from worker.protocol import Message

# The shape of the many published templates that insist on user/assistant turns.
ALTERNATING = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "<{{ message['role'] }}>{{ message['content'] }}"
    "{% endfor %}"
)


def prompter(template: str) -> ChatPrompter:
    return ChatPrompter(
        metadata={"tokenizer.chat_template": template},
        bos_text="",
        eos_text="",
        tokenize=lambda text, add_bos: list(text),
        source="test.gguf",
    )


def test_a_conversation_the_template_accepts_renders() -> None:
    tokens, _ = prompter(ALTERNATING).render([Message("user", "hi"), Message("assistant", "yo"), Message("user", "?")])
    assert bytes(tokens).startswith(b"<user>hi<assistant>yo<user>?")


def test_the_templates_own_refusal_becomes_prompt_rejected_with_its_reason() -> None:
    with pytest.raises(PromptRejected) as rejected:
        prompter(ALTERNATING).render([Message("user", "hi"), Message("user", "again")])
    assert "Conversation roles must alternate" in str(rejected.value)
    assert "chat template rejected" in str(rejected.value)


def test_a_template_that_fails_on_the_conversation_is_rejected_too() -> None:
    indexes_past_the_end = "{{ messages[3]['content'].upper() }}"
    with pytest.raises(PromptRejected):
        prompter(indexes_past_the_end).render([Message("user", "hi")])
