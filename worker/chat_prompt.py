"""Messages to prompt tokens with the model's own chat template: shared by the llama.cpp engines."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from worker.engine import PromptRejected
from worker.protocol import Message

# (UTF-8 text, whether to add BOS) -> token ids, special tokens parsed.
Tokenize = Callable[[bytes, bool], list[int]]

# Gemma 3's published chat format, for GGUF files converted without their template:
# no system role, so a system message is prepended to the first user turn.
_GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ (prefix if loop.first else '') + message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_FALLBACK_TEMPLATES = {"gemma": _GEMMA_TEMPLATE, "gemma2": _GEMMA_TEMPLATE, "gemma3": _GEMMA_TEMPLATE}


def fallback_template(metadata: Mapping[str, str]) -> str | None:
    return _FALLBACK_TEMPLATES.get(metadata.get("general.architecture", ""))


class ChatPrompter:
    """Renders the template and tokenizes the result; safe to call from several threads."""

    def __init__(
        self, *, metadata: Mapping[str, str], bos_text: str, eos_text: str, tokenize: Tokenize, source: str
    ) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = metadata.get("tokenizer.chat_template") or fallback_template(metadata)
        if not template:
            raise ValueError(f"{source} carries no chat template and its architecture has no known one")
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text)
        self._tokenize = tokenize

    def render(self, messages: Sequence[Message]) -> tuple[list[int], list[str]]:
        """The prompt's tokens, and the stop strings the template adds (its end-of-turn marker)."""
        try:
            rendered = self._formatter(messages=[{"role": m.role, "content": m.content} for m in messages])  # type: ignore[misc]
        except Exception as exc:
            # The template comes with the model file and runs on the client's messages: its own
            # raise_exception() (a ValueError here), a jinja2 TemplateError, or a conversation it
            # cannot index all mean this conversation does not fit it, a 400 for the client.
            raise PromptRejected(str(exc) or type(exc).__name__) from None
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        tokens = self._tokenize(rendered.prompt.encode("utf-8"), not rendered.added_special)
        return tokens, [s for s in stop if s]
