"""Messages to prompt tokens with the model's own chat template: shared by the llama.cpp engines.

A template that lists tools itself (Qwen's, Llama 3's) gets OpenAI's tools and messages as
they are. One that has no place for tools (SmolLM2's, Gemma's, Phi's) gets a system message
that lists them in the model family's tool format, and the conversation's earlier calls and
results written in that format as plain text, so the model sees the calls it is asked to make.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from presets.registry import ToolFormat
from worker.engine import PromptRejected, UnsupportedParameter
from worker.protocol import Message, Tool
from worker.tool_formats import (
    THINK_OPEN,
    ChatFormat,
    call_text,
    chat_format_for,
    result_text,
    tool_schema,
    tools_system_text,
)

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
# A template that reads this variable renders the tools itself.
_TOOLS_VARIABLE = re.compile(r"\btools\b")


def fallback_template(metadata: Mapping[str, str]) -> str | None:
    return _FALLBACK_TEMPLATES.get(metadata.get("general.architecture", ""))


@dataclass(frozen=True, kw_only=True)
class Rendered:
    tokens: list[int]
    # Stop strings the template adds (its end-of-turn marker).
    stop: list[str]
    # The template ends the prompt inside an open reasoning block (`<think>`): the generation continues it.
    in_reasoning: bool = False


class ChatPrompter:
    """Renders the template and tokenizes the result; safe to call from several threads."""

    def __init__(
        self,
        *,
        metadata: Mapping[str, str],
        bos_text: str,
        eos_text: str,
        tokenize: Tokenize,
        source: str,
        chat_format: ChatFormat | None = None,
    ) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = metadata.get("tokenizer.chat_template") or fallback_template(metadata)
        if not template:
            raise ValueError(f"{source} carries no chat template and its architecture has no known one")
        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos_text, bos_token=bos_text)
        self._tokenize = tokenize
        # The registry's format for the model in this file, else what the template reveals.
        self.chat_format = chat_format or chat_format_for(file_name=source, template=template)
        self._native_tools = takes_tools(template)

    def render(self, messages: Sequence[Message], *, tools: Sequence[Tool] = ()) -> Rendered:
        """The prompt's tokens, the stop strings the template adds, and whether it ends inside `<think>`."""
        chat, listed = template_chat(
            messages, tools=tools, native_tools=self._native_tools, tool_format=self.chat_format.tool_format
        )
        try:
            rendered = self._formatter(messages=chat, tools=listed)  # type: ignore[arg-type]
        except Exception as exc:
            # The template comes with the model file and runs on the client's messages: its own
            # raise_exception() (a ValueError here), a jinja2 TemplateError, or a conversation it
            # cannot index all mean this conversation does not fit it, a 400 for the client.
            reason = str(exc) or type(exc).__name__
            if listed is not None and self._renders(chat):
                raise UnsupportedParameter(
                    f"The model's chat template cannot render these tools: {reason}", param="tools"
                ) from None
            raise PromptRejected(reason) from None
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        tokens = self._tokenize(rendered.prompt.encode("utf-8"), not rendered.added_special)
        return Rendered(
            tokens=tokens, stop=[s for s in stop if s], in_reasoning=rendered.prompt.rstrip().endswith(THINK_OPEN)
        )

    def _renders(self, chat: list[dict[str, Any]]) -> bool:
        try:
            self._formatter(messages=chat)  # type: ignore[arg-type]
        except Exception:
            return False
        return True


def takes_tools(template: str) -> bool:
    """Whether a chat template has a place for the tools (its `tools` variable)."""
    return _TOOLS_VARIABLE.search(template) is not None


def template_chat(
    messages: Sequence[Message], *, tools: Sequence[Tool], native_tools: bool, tool_format: ToolFormat
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The conversation and the tools to give a chat template.

    OpenAI's shapes where the template takes tools; else calls, results and the tools as text
    in the model's tool format (text_messages).
    """
    if native_tools:
        return [openai_message(m) for m in messages], [tool_schema(t) for t in tools] or None
    return text_messages(messages, tools=tools, tool_format=tool_format), None


def _arguments(text: str) -> Any:
    """A call's arguments as templates index them (a mapping), or the text where it is not a JSON object."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict) else text


def openai_message(message: Message) -> dict[str, Any]:
    """A message as OpenAI's API (and templates written for it) shapes it."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def text_messages(
    messages: Sequence[Message], *, tools: Sequence[Tool], tool_format: ToolFormat
) -> list[dict[str, Any]]:
    """The conversation for a template without tools: calls and results as text, the tools in the system message.

    A tool's result becomes a user turn, joined with the user turns next to it, so that a
    template that insists on alternating turns accepts it.
    """
    out: list[dict[str, Any]] = []
    from_tool = False
    for message in messages:
        role, content = message.role, message.content
        if role == "tool":
            content = result_text(tool_format, content)
        elif message.tool_calls:
            calls = "\n".join(
                call_text(tool_format, name=c.name, arguments=_arguments(c.arguments)) for c in message.tool_calls
            )
            content = f"{content}\n{calls}" if content else calls
        is_tool = role == "tool"
        role = "user" if is_tool else role
        if out and role == "user" and out[-1]["role"] == "user" and (is_tool or from_tool):
            out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{content}"}
        else:
            out.append({"role": role, "content": content})
        from_tool = is_tool or (from_tool and role == "user")
    if tools:
        listed = tools_system_text(tool_format, tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listed}"}
        else:
            out.insert(0, {"role": "system", "content": listed})
    return out
